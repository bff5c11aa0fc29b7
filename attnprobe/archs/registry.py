"""Variant table, ``build_from_config`` and registration of every variant into timm under the official names.

After ``import attnprobe.archs``, ``timm.create_model("tap_fan_base_16_p4_hybrid")`` builds our implementation.
TAP variants default to ``num_scales=4`` (the released TAP checkpoints use K = 4); pass ``num_scales=K`` to change.
``pretrained=True`` is refused: nothing is downloaded; load a checkpoint file through ``attnprobe.create_model``.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch
from torch import nn

from attnprobe.archs.fan import FAN, fan_config_kwargs
from attnprobe.archs.rvt import RVT, rvt_config_kwargs
from attnprobe.errors import UserError

__all__ = ["VARIANTS", "FAMILIES", "build_from_config", "build_variant", "register_timm_models", "default_cfgs"]

TAP_DEFAULT_SCALES = 4

_HYBRID = {"dims": [128, 256, 512, 1024]}
_FAN_HYBRID = {
    "fan_tiny_8_p4_hybrid": dict(embed_dim=192, depth=8, num_heads=8, backbone=dict(depths=[3, 3], **_HYBRID)),
    "fan_small_12_p4_hybrid": dict(embed_dim=384, depth=10, num_heads=8, backbone=dict(depths=[3, 3], **_HYBRID)),
    "fan_base_16_p4_hybrid": dict(embed_dim=448, depth=16, num_heads=8, backbone=dict(depths=[3, 3], **_HYBRID)),
    "fan_large_16_p4_hybrid": dict(embed_dim=480, depth=22, num_heads=10, head_init_scale=0.001,
                                   backbone=dict(depths=[3, 5], **_HYBRID)),
}
_FAN_VIT = {
    "fan_tiny_12_p16_224": dict(embed_dim=192, depth=12, num_heads=4),
    "fan_small_12_p16_224": dict(embed_dim=384, depth=12, num_heads=8),
    "fan_base_18_p16_224": dict(embed_dim=448, depth=18, num_heads=8),
    "fan_large_24_p16_224": dict(embed_dim=480, depth=24, num_heads=10),
}
_RVT = {
    "rvt_tiny": dict(base_dims=[32, 32], depth=[10, 2], heads=[6, 12]),
    "rvt_tiny_plus": dict(base_dims=[32, 32], depth=[10, 2], heads=[6, 12], use_mask=True, masked_block=10),
    "rvt_small": dict(base_dims=[64], depth=[12], heads=[6]),
    "rvt_small_plus": dict(base_dims=[64], depth=[12], heads=[6], use_mask=True, masked_block=5),
    "rvt_base": dict(base_dims=[64], depth=[12], heads=[12]),
    "rvt_base_plus": dict(base_dims=[64], depth=[12], heads=[12], use_mask=True, masked_block=5),
}

# name -> (family, constructor kwargs); families: fan_vit, tap_fan_vit, fan_hybrid, tap_fan_hybrid, rvt, tap_rvt
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {}
for _name, _kw in _FAN_HYBRID.items():
    VARIANTS[_name] = ("fan_hybrid", dict(patch_size=16, **_kw))
    VARIANTS["tap_" + _name] = ("tap_fan_hybrid", dict(patch_size=16, num_scales=TAP_DEFAULT_SCALES, **_kw))
for _name, _kw in _FAN_VIT.items():
    VARIANTS[_name] = ("fan_vit", dict(patch_size=16, **_kw))
    VARIANTS["tap_" + _name] = ("tap_fan_vit", dict(patch_size=16, num_scales=TAP_DEFAULT_SCALES, **_kw))
for _name, _kw in _RVT.items():
    _rvt = dict(image_size=224, patch_size=16, stride=16, mlp_ratio=4, **_kw)
    VARIANTS[_name] = ("rvt", _rvt)
    VARIANTS["tap_" + _name] = ("tap_rvt", dict(_rvt, num_scales=TAP_DEFAULT_SCALES))

FAMILIES = ("fan_vit", "tap_fan_vit", "fan_hybrid", "tap_fan_hybrid", "rvt", "tap_rvt")


def build_from_config(config: dict[str, Any]) -> nn.Module:
    """Build a randomly initialised model from an official-style config dict (as stored in the fixtures).

    Args:
        config: ``{"family": one of FAMILIES, **constructor arguments}``; FAN keys follow the official FAN
            constructor (``embed_dim``, ``depth``, ``num_heads``, ``backbone={"depths", "dims"}``, ``num_scales``,
            ...), RVT keys the official ``PoolingTransformer`` (``base_dims``, ``depth``, ``heads``, ``use_mask``,
            ``masked_block``, ``num_scales``, ...). Options the official code accepts but ignores (``sr_ratio``,
            ``sharpen_attn``, ``use_head``) are accepted and ignored.

    Returns:
        The model (train mode, like any freshly built nn.Module).

    Raises:
        UserError: unknown family or invalid arguments.
    """
    config = copy.deepcopy(dict(config))
    family = config.get("family")
    if family not in FAMILIES:
        raise UserError(f"unknown architecture family {family!r}; choose one of: {', '.join(FAMILIES)}")
    tap = family.startswith("tap_")
    try:
        if "rvt" in family:
            kwargs = rvt_config_kwargs(config)
            kwargs["num_scales"] = int(kwargs.get("num_scales", 1)) if tap else 0
            return RVT(**kwargs)
        kwargs = fan_config_kwargs(config)
        kwargs["num_scales"] = int(kwargs.get("num_scales", 1)) if tap else 0
        if family.endswith("hybrid"):
            if not kwargs.get("backbone"):
                kwargs["backbone"] = {"depths": [3, 3], **_HYBRID}
        else:
            kwargs["backbone"] = None
        return FAN(**kwargs)
    except (TypeError, ValueError) as exc:
        raise UserError(f"invalid {family} config: {exc}; check the constructor arguments") from exc


def build_variant(name: str, **overrides: Any) -> nn.Module:
    """Build a registered variant by official name, with constructor overrides (e.g. ``num_classes=10``)."""
    if name not in VARIANTS:
        raise UserError(f"unknown architecture {name!r}; choose one of: {', '.join(sorted(VARIANTS))}")
    family, kwargs = VARIANTS[name]
    return build_from_config({"family": family, **copy.deepcopy(kwargs), **overrides})


def _pretrained_cfg(name: str) -> dict[str, Any]:
    family = VARIANTS[name][0]
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": None,
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "fixed_input_size": "rvt" in family,  # RVT's att_mask covers at most 14x14 tokens
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "first_conv": {"rvt": "patch_embed.proj.0", "fan_vit": "patch_embed.proj.0.0"}.get(
            family.removeprefix("tap_"), "patch_embed.backbone.stem.0"),
        "classifier": "head",
    }


# timm reads `default_cfgs` from the module that defines the entrypoints (old-style dicts are accepted).
default_cfgs: dict[str, dict[str, Any]] = {name: _pretrained_cfg(name) for name in VARIANTS}


def _make_entrypoint(name: str) -> Callable[..., nn.Module]:
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        if pretrained:
            raise UserError(f"{name}: no download is possible; pass a checkpoint file to attnprobe.create_model")
        for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(key, None)
        model = build_variant(name, **kwargs)
        model.pretrained_cfg = model.default_cfg = dict(default_cfgs[name], architecture=name)
        return model

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"{name}: our implementation with the official state-dict layout ({VARIANTS[name][0]})."
    return entrypoint


def register_timm_models() -> list[str]:
    """Register every variant into timm (idempotent; a name timm already maps to us is left alone).

    Returns:
        The names registered by this call.
    """
    import timm.models

    done = []
    for name in VARIANTS:
        if timm.models.is_model(name) and timm.models.model_entrypoint(name).__module__ == __name__:
            continue
        fn = _make_entrypoint(name)
        globals()[name] = fn
        timm.models.register_model(fn)
        done.append(name)
    return done


def count_params(model: nn.Module) -> int:
    """Number of parameters (buffers excluded), as reported in the official manifests."""
    return sum(p.numel() for p in model.parameters())


def state_dict_shapes(model: nn.Module) -> dict[str, list[int]]:
    """{key: shape} of a model's state dict (works on the ``meta`` device)."""
    return {k: list(v.shape) for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
