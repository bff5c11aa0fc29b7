"""Our FAN / TAP-FAN / RVT / TAP-RVT implementations, TAP as a reusable module, and the ADL loss.

Importing this package registers every variant into timm under the official names (``tap_fan_base_16_p4_hybrid``,
``fan_base_16_p4_hybrid``, ``tap_rvt_base_plus``, ...), so ``timm.create_model(name, num_classes=...)`` builds ours.
State-dict keys and shapes match the authors' checkpoints, which therefore load with ``strict=True``.

    from attnprobe.archs import TokenAwarePooling, adl_loss, build_from_config
    tap = TokenAwarePooling(dim=192, num_scales=4)        # y = tap(tokens, (H, W))
    loss = adl_loss(attention_maps, tau=2.0)              # list of (B, H, N, N)

Attention contract: token-attention modules have ``attention_kind = "token"``, class attention ``"class"``; set
``fused_attn = False`` and hook ``attn_drop`` to observe the post-softmax maps (see attention.py).
"""

from __future__ import annotations

from torch import nn

from attnprobe.archs.adl import adl_layer, adl_loss
from attnprobe.archs.attention import ClassAttention, FanTokenAttention, MaskedTokenAttention
from attnprobe.archs.fan import FAN
from attnprobe.archs.registry import FAMILIES, VARIANTS, build_from_config, build_variant, register_timm_models
from attnprobe.archs.rvt import RVT
from attnprobe.archs.tap import TokenAwarePooling

__all__ = [
    "FAN",
    "RVT",
    "TokenAwarePooling",
    "FanTokenAttention",
    "MaskedTokenAttention",
    "ClassAttention",
    "adl_loss",
    "adl_layer",
    "build_from_config",
    "build_variant",
    "register_timm_models",
    "VARIANTS",
    "FAMILIES",
    "set_fused_attn",
]


def set_fused_attn(model: nn.Module, fused: bool) -> int:
    """Set ``fused_attn`` on every attention module of ``model`` that has one; returns how many were set."""
    count = 0
    for module in model.modules():
        if hasattr(module, "fused_attn") and hasattr(module, "attention_kind"):
            module.fused_attn = fused
            count += 1
    return count


register_timm_models()

# NOTE: imported for its side effect: registers the tiny demo architectures into timm
from attnprobe.archs import demo_vit  # noqa: E402,F401
