"""A batched, seeded torch engine for the 19 ImageNet-C corruptions, on the CPU or a GPU.

    from attnprobe.corruptions import corrupt
    out = corrupt(images_u8, "glass_blur", 3, seed=0)                 # (B, 3, H, W) uint8, same device
    out = corrupt(images_u8, "frost", 2, seed=seeds, recipe="imagecorruptions")

Two recipes: ``"imagenet-c"`` (the code that generated the released ImageNet-C) and ``"imagecorruptions"`` (the
package behind Cityscapes-C); see `attnprobe.corruptions.params` for what differs and how sizes other than 224
are handled. Randomness is drawn per image (`attnprobe.corruptions.rng`), so an image's result never depends on
the batch it is in or on the device. The per-image reference path (the `imagecorruptions` package itself) stays
available in `attnprobe.data.corruptions`.

Modules: `api` (corrupt), `params` (recipes, severity tables), `rng` (seeding), `noise`, `blur`, `weather`,
`spatter`, `digital` (the corruptions), `filters`, `resample`, `cvops` (the building blocks, each matching the
library the reference calls: SciPy, PIL, OpenCV).
"""

from __future__ import annotations

from attnprobe.corruptions.api import ENGINE_VERSION, MIN_SIDE, corrupt, engine_id
from attnprobe.corruptions.digital import jpeg_roundtrip
from attnprobe.corruptions.params import RECIPES

__all__ = ["ENGINE_VERSION", "MIN_SIDE", "RECIPES", "corrupt", "engine_id", "jpeg_roundtrip"]
