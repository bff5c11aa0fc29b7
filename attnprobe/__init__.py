"""attnprobe: measure and benchmark the robustness of vision-transformer attention.

The public API is re-exported here lazily, so `import attnprobe` does not import torch or timm.

    model = attnprobe.create_model("fan_b_tapadl", checkpoint="tapadl_fan_base.pth.tar")
    with attnprobe.AttentionCapture(model) as cap:
        logits = model(x)
    maps = cap.maps  # list of (B, H, N, N), in depth order
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "create_model": "attnprobe.zoo",
    "build_from_config": "attnprobe.zoo",
    "list_models": "attnprobe.zoo",
    "load_card": "attnprobe.zoo",
    "load_checkpoint": "attnprobe.checkpoints",
    "adl_loss": "attnprobe.archs.adl",
    "TokenAwarePooling": "attnprobe.archs.tap",
    "AttentionCapture": "attnprobe.capture",
    "ResultsStore": "attnprobe.store",
    "UserError": "attnprobe.errors",
    "corrupt": "attnprobe.corruptions",
}
_SUBMODULES = {"metrics", "robustness", "data", "report", "archs", "store", "zoo", "capture", "engine",
               "benchmarks", "attacks", "diagnostics", "segmentation", "corruptions"}

__all__ = sorted(_EXPORTS) + sorted(_SUBMODULES)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"attnprobe.{name}")
    raise AttributeError(f"module 'attnprobe' has no attribute {name!r}")
