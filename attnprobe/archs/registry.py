"""Variant table, ``build_from_config`` and registration of every variant into timm under the official names.

After ``import attnprobe.archs``, ``timm.create_model("tap_fan_base_16_p4_hybrid")`` builds our implementation through
timm's ``build_model_with_cfg``, so everything timm offers for its own models works: ``features_only=True`` (with
``out_indices``; a ``FeatureGetterNet`` over ``forward_intermediates``), ``num_classes=0`` / ``global_pool=""``,
``pretrained_cfg`` (preprocessing as in our model cards and the official evaluation).
TAP variants default to ``num_scales=4`` (the released TAP checkpoints use K = 4); pass ``num_scales=K`` to change.
``pretrained=True`` is refused: nothing is downloaded; load a checkpoint file through ``attnprobe.create_model``.

Default ``features_only`` outputs are the features the official segmentation backbones feed to their heads:
FAN-Hybrid [stem stage 0, stem stage 1, block ``out_idx``, class-attention output] (strides 4, 8, 16, 16),
FAN-ViT [blocks 4, 7, 11, class-attention output]; RVT (no official dense-prediction use) the last block of each
stage, or the last three blocks of a single-stage model.
"""

from __future__ import annotations

import copy
from functools import partial
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

#: Block whose tokens the official FAN-Hybrid segmentation backbones output (``out_idx`` of the official classes).
HYBRID_SEG_OUT_IDX = {"fan_tiny_8_p4_hybrid": 7, "fan_small_12_p4_hybrid": 9, "fan_base_16_p4_hybrid": 15,
                      "fan_large_16_p4_hybrid": 18}
#: Blocks the official non-hybrid FAN segmentation backbone outputs (before the class-attention output).
VIT_SEG_OUT_INDEX = (4, 7, 11)


def build_from_config(config: dict[str, Any]) -> nn.Module:
    """Build a randomly initialised model from an official-style config dict (as stored in the fixtures).

    Args:
        config: ``{"family": one of FAMILIES, **constructor arguments}``, or a segmentation config (one with a
            ``decode_head``; see ``attnprobe.segmentation.model.build_segmentor_from_config``). FAN keys follow the
            official FAN constructor (``embed_dim``, ``depth``, ``num_heads``, ``backbone={"depths", "dims"}``,
            ``num_scales``, ...), RVT keys the official ``PoolingTransformer`` (``base_dims``, ``depth``, ``heads``,
            ``use_mask``, ``masked_block``, ``num_scales``, ...). Options the official code accepts but ignores
            (``sr_ratio``, ``sharpen_attn``, ``use_head``) are accepted and ignored.

    Returns:
        The model (train mode, like any freshly built nn.Module).

    Raises:
        UserError: unknown family or invalid arguments.
    """
    if "decode_head" in config:  # an official segmentation config (EncoderDecoder: backbone + decode head)
        from attnprobe.segmentation.model import build_segmentor_from_config

        return build_segmentor_from_config(config)
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
    """timm's pretrained config of a variant: the preprocessing of our model cards and the official evaluation.

    FAN / TAP-FAN: resize 224, centre crop 224 (``crop_pct`` 1.0, the official ``_cfg``), bicubic, ImageNet mean/std.
    RVT / TAP-RVT: resize 256, centre crop 224 (``crop_pct`` 0.875), bicubic, ImageNet mean/std: what the official
    evaluation transform (``datasets.build_transform``) does; the timm ViT ``_cfg`` the official RVT code attaches
    (crop 0.9, mean/std 0.5) is never used by its evaluation.
    """
    family, kwargs = VARIANTS[name]
    rvt = "rvt" in family
    grid = 224 // 16 // 2 ** (len(kwargs.get("depth", [0])) - 1) if rvt else 0
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (grid, grid) if rvt else None,  # FAN's forward_features returns tokens (B, 1 + N, C)
        "crop_pct": 0.875 if rvt else 1.0,
        "interpolation": "bicubic",
        # NOTE: only RVT's position-aware attention mask fixes the input size (at most 14x14 tokens); our FAN takes
        # any size, also non-square (the official FAN _cfg says fixed_input_size=True but its forward does not need it).
        "fixed_input_size": bool(kwargs.get("use_mask", False)),
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "first_conv": {"rvt": "patch_embed.proj.0", "fan_vit": "patch_embed.proj.0.0"}.get(
            family.removeprefix("tap_"), "patch_embed.backbone.stem.0"),
        "classifier": "head",
    }


def default_out_indices(name: str, overrides: dict[str, Any] | None = None) -> tuple[int, ...]:
    """``out_indices`` of ``features_only=True`` for a variant (see the module docstring)."""
    family, kwargs = VARIANTS[name]
    kwargs = {**kwargs, **(overrides or {})}
    if "rvt" in family:
        depths = list(kwargs["depth"])
        if len(depths) > 1:
            return tuple(sum(depths[: s + 1]) - 1 for s in range(len(depths)))
        return tuple(range(max(depths[0] - 3, 0), depths[0]))
    depth = int(kwargs["depth"])
    if family.endswith("hybrid"):
        n_stem = len(kwargs["backbone"]["depths"])
        out_idx = HYBRID_SEG_OUT_IDX.get(name.removeprefix("tap_"), depth - 1)
        out_idx = out_idx if out_idx < depth else depth - 1
        return (*range(n_stem), n_stem + out_idx, -1)
    if depth > max(VIT_SEG_OUT_INDEX):
        return (*VIT_SEG_OUT_INDEX, -1)
    return tuple(range(-min(4, depth + 1), 0))


# timm reads `default_cfgs` from the module that defines the entrypoints (old-style dicts are accepted).
default_cfgs: dict[str, dict[str, Any]] = {name: _pretrained_cfg(name) for name in VARIANTS}


def _make_entrypoint(name: str) -> Callable[..., nn.Module]:
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        from timm.models import build_model_with_cfg

        if pretrained:
            raise UserError(f"{name}: no download is possible; pass a checkpoint file to attnprobe.create_model")
        out_indices = default_out_indices(name, {k: kwargs[k] for k in ("depth", "backbone") if k in kwargs})
        return build_model_with_cfg(partial(build_variant, name), name, pretrained=False,
                                    feature_cfg=dict(out_indices=out_indices, feature_cls="getter"), **kwargs)

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
