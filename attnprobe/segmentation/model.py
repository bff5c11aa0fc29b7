"""Segmentation models: a FAN / TAP-FAN backbone + the SegFormer head, as the official mmseg ``EncoderDecoder``.

    model = attnprobe.build_from_config(fixture["config"])          # an official fixture's config
    model = attnprobe.create_model("fan_b_tapadl_seg", checkpoint="tapadl_fan_base_segmentation.pth")
    logits = model(x)                                              # whole-image logits (B, classes, H, W)
    logits = attnprobe.segmentation.infer(model, x, mode="slide")  # the official sliding-window inference

The backbone is our classification ``FAN`` itself, not a copy: its features come from ``FAN.forward_intermediates``
(ConvNeXt stem stage 0 and 1, the tokens after block ``out_idx``, the patch tokens after the class-attention blocks;
strides 4, 8, 16, 16), and ``FAN.prune_intermediate_layers`` drops the classifier and the final norm. State-dict keys
are the official ones (``backbone.*``, ``decode_head.*``, including the unused ``decode_head.conv_seg``), so the
released checkpoints load strictly. Attention capture works as on the classification models (``AttentionCapture``
hooks ``model.backbone``'s attention modules).

Unlike the official TAP-FAN backbone, ours runs on non-square token grids (e.g. whole-image inference on 2048x1024):
the official ``TAPFANBlock`` reshapes N tokens to ``int(sqrt(N))`` x ``int(sqrt(N))``, which raises on most
non-square grids and silently mis-shapes those whose N is a perfect square (4x16 tokens become 8x8).

The named architectures ``segformer_fan_base_16_p4_hybrid`` and ``segformer_tap_fan_base_16_p4_hybrid`` are registered
into timm (so the zoo builds them like every other model) with the official Cityscapes configuration.
"""

import copy
from collections.abc import Sequence
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from attnprobe.archs.fan import FAN
from attnprobe.archs.registry import HYBRID_SEG_OUT_IDX, VIT_SEG_OUT_INDEX, build_from_config, build_variant
from attnprobe.errors import UserError
from attnprobe.segmentation.segformer_head import SegFormerHead

__all__ = ["EncoderDecoder", "SEGMENTORS", "build_segmentor", "build_segmentor_from_config", "official_feature_indices",
           "segmentor_from_backbone", "register_segmentors", "CITYSCAPES_TEST_CFG", "CITYSCAPES_MEAN", "CITYSCAPES_STD"]

#: The official test configuration of the Cityscapes models (sliding 1024x1024 windows, stride 768).
CITYSCAPES_TEST_CFG = {"mode": "slide", "crop_size": (1024, 1024), "stride": (768, 768)}
#: The official normalisation (mmseg ``img_norm_cfg``, 0-255 RGB values).
CITYSCAPES_MEAN = (123.675, 116.28, 103.53)
CITYSCAPES_STD = (58.395, 57.12, 57.375)

#: Named segmentation architecture -> the FAN variant of its backbone. Head: the official Cityscapes SegFormer head.
SEGMENTORS = {
    "segformer_fan_base_16_p4_hybrid": "fan_base_16_p4_hybrid",
    "segformer_tap_fan_base_16_p4_hybrid": "tap_fan_base_16_p4_hybrid",
}
_OFFICIAL_HEAD = {"num_classes": 19, "embed_dim": 768, "channels": 256, "dropout_ratio": 0.1, "align_corners": False}


class EncoderDecoder(nn.Module):
    """Backbone features -> decode head -> bilinear upsampling to the input size (mmseg's ``EncoderDecoder``).

    Args:
        backbone: a FAN / TAP-FAN (pruned for dense prediction; see ``segmentor_from_backbone``).
        decode_head: the SegFormer head.
        feature_indices: ``backbone.forward_intermediates`` indices of the backbone outputs (in network order); the
            head picks its four inputs from them with its ``in_index``.
        test_cfg: default inference of ``attnprobe.segmentation.infer``: ``{"mode": "slide" | "whole",
            "crop_size": (h, w), "stride": (h, w)}``.
    """

    task = "segmentation"

    def __init__(self, backbone: FAN, decode_head: SegFormerHead, feature_indices: Sequence[int],
                 test_cfg: Optional[Dict[str, Any]] = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.decode_head = decode_head
        self.feature_indices = [int(i) for i in feature_indices]
        self.num_classes = decode_head.num_classes
        self.align_corners = decode_head.align_corners
        self.test_cfg = dict(test_cfg) if test_cfg else {"mode": "whole"}

    def extract_features(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The backbone outputs, as (B, C_i, H_i, W_i) maps (official: strides 4, 8, 16, 16)."""
        return self.backbone.forward_intermediates(x, indices=self.feature_indices, intermediates_only=True)

    def encode_decode(self, x: torch.Tensor) -> torch.Tensor:
        """Logits at the input resolution: the head's output (stride 4) upsampled bilinearly."""
        logits = self.decode_head(self.extract_features(x))  # (B, classes, H / 4, W / 4)
        return F.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=self.align_corners)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Whole-image inference (the official ``whole`` mode): logits (B, classes, H, W) before the softmax."""
        return self.encode_decode(x)


def official_feature_indices(backbone: FAN, out_idx: int) -> List[int]:
    """The features the official FAN segmentation backbone outputs, as ``forward_intermediates`` indices.

    Hybrid: every ConvNeXt stem stage, the tokens after block ``out_idx``, the class-attention output.
    ViT: the tokens after blocks 4, 7, 11 and the class-attention output (``out_idx`` is not used there).
    """
    last = len(backbone.feature_info) - 1
    n_stem = backbone.num_stem_features
    if len(backbone.cls_attn_blocks) == 0 or backbone.feature_info[last]["module"].startswith("blocks."):
        raise UserError("the FAN segmentation backbone needs class-attention blocks (cls_attn_layers > 0)")
    if n_stem == 0:
        return [i for i in VIT_SEG_OUT_INDEX if i < backbone.depth] + [last]
    if not 0 <= out_idx < backbone.depth:
        raise UserError(f"out_idx {out_idx} is not a block of this {backbone.depth}-block FAN; "
                        f"use 0..{backbone.depth - 1}")
    return [*range(n_stem), n_stem + out_idx, last]


def segmentor_from_backbone(backbone: FAN, out_idx: int, num_classes: int = 19, embed_dim: int = 768,
                            channels: int = 256, dropout_ratio: float = 0.1, align_corners: bool = False,
                            in_index: Sequence[int] = (0, 1, 2, 3), in_channels: Optional[Sequence[int]] = None,
                            test_cfg: Optional[Dict[str, Any]] = None) -> EncoderDecoder:
    """Turn a FAN (classifier) into the official segmentation model: prune its head and final norm, add the head.

    Args:
        backbone: a FAN / TAP-FAN; modified in place (its classifier and final LayerNorm are removed).
        out_idx: the block whose tokens are the third feature (official: depth - 1 for FAN-B-Hybrid).
        num_classes, embed_dim, channels, dropout_ratio, align_corners, in_index: the SegFormer head (see there).
        in_channels: the head's input channels when given by a config; checked against the backbone's.
        test_cfg: default inference (see ``EncoderDecoder``).
    """
    indices = official_feature_indices(backbone, out_idx)
    backbone.prune_intermediate_layers(indices, prune_norm=True, prune_head=True)
    channels_out = [backbone.feature_info[i]["num_chs"] for i in indices]
    head_channels = [channels_out[i] for i in in_index]
    if in_channels is not None and [int(c) for c in in_channels] != head_channels:
        raise UserError(f"decode_head in_channels {list(in_channels)} do not match the backbone features "
                        f"{head_channels}; fix the config")
    head = SegFormerHead(head_channels, num_classes=num_classes, embed_dim=embed_dim, channels=channels,
                         dropout_ratio=dropout_ratio, in_index=in_index, align_corners=align_corners)
    return EncoderDecoder(backbone, head, indices, test_cfg=test_cfg)


_IGNORED_BACKBONE_KEYS = {"num_classes", "act_layer", "norm_layer", "use_checkpoint", "load_ema", "img_size", "type",
                          "style", "pretrained", "init_cfg"}


def _backbone_config(family: str, backbone: Dict[str, Any]) -> tuple:
    """Official FAN backbone arguments -> (our FAN config for ``build_from_config``, out_idx)."""
    bb = dict(backbone)
    hybrid = bb.pop("hybrid", None)
    hybrid_embed = bb.pop("hybrid_embed", None)
    out_idx = bb.pop("out_idx", None)
    if bb.pop("feat_downsample", False):
        raise UserError("FAN segmentation backbones with feat_downsample=True are not implemented")
    if not bb.pop("use_pos_embed", True):
        raise UserError("FAN segmentation backbones without positional encoding are not implemented")
    fan = {k: v for k, v in bb.items() if k not in _IGNORED_BACKBONE_KEYS}
    fan.update(family=family, num_classes=0, pos_paired_frequencies=False)
    if family.endswith("hybrid"):
        hybrid = hybrid or {}
        fan["backbone"] = {"depths": hybrid.get("depths", [3, 3]), "dims": hybrid.get("dims", [128, 256, 512, 1024])}
        fan["hybrid_patch_size"] = int((hybrid_embed or {}).get("patch_size", 2))
    depth = int(fan.get("depth", 12))
    return fan, depth - 1 if out_idx is None else int(out_idx)


def build_segmentor_from_config(config: Dict[str, Any]) -> EncoderDecoder:
    """Build a randomly initialised segmentation model from an official-style config (as in the seg fixtures).

    Args:
        config: ``{"family": "fan_hybrid" | "tap_fan_hybrid" | "fan_vit" | "tap_fan_vit", "backbone": {official FAN
            arguments, "hybrid": {"depths", "dims"}, "out_idx"}, "decode_head": {official SegFormerHead arguments},
            "test_cfg": {...}}``.

    Raises:
        UserError: an unsupported family, head or option.
    """
    config = copy.deepcopy(dict(config))
    family = config.get("family")
    if family not in ("fan_hybrid", "tap_fan_hybrid", "fan_vit", "tap_fan_vit"):
        raise UserError(f"segmentation models are built on FAN / TAP-FAN backbones, not {family!r}; "
                        "use family fan_hybrid or tap_fan_hybrid")
    head = dict(config["decode_head"])
    if head.get("type", "SegFormerHead") != "SegFormerHead":
        raise UserError(f"decode head {head.get('type')!r} is not implemented; only SegFormerHead is")
    if head.get("norm_cfg", {}).get("type", "BN") not in ("BN", "SyncBN", "BN2d"):
        raise UserError(f"decode head norm {head['norm_cfg']['type']!r} is not implemented; use BN or SyncBN")
    fan_cfg, out_idx = _backbone_config(family, config.get("backbone", {}))
    backbone = build_from_config(fan_cfg)
    return segmentor_from_backbone(
        backbone, out_idx, num_classes=int(head.get("num_classes", 19)),
        embed_dim=int(head.get("decoder_params", {}).get("embed_dim", 768)), channels=int(head.get("channels", 256)),
        dropout_ratio=float(head.get("dropout_ratio", 0.1)), align_corners=bool(head.get("align_corners", False)),
        in_index=head.get("in_index", (0, 1, 2, 3)), in_channels=head.get("in_channels"),
        test_cfg=config.get("test_cfg"))


def build_segmentor(name: str, num_classes: int = 19, decoder_embed_dim: int = 768, head_channels: int = 256,
                    dropout_ratio: float = 0.1, out_idx: Optional[int] = None,
                    test_cfg: Optional[Dict[str, Any]] = None, **backbone_kwargs: Any) -> EncoderDecoder:
    """Build a named segmentation architecture (``SEGMENTORS``), randomly initialised, in train mode.

    Args:
        name: e.g. ``segformer_tap_fan_base_16_p4_hybrid``.
        num_classes, decoder_embed_dim, head_channels, dropout_ratio: the SegFormer head (official Cityscapes values).
        out_idx: block of the third feature (default: the official one of the backbone variant).
        test_cfg: default inference (default: the official Cityscapes slide inference).
        **backbone_kwargs: FAN constructor overrides (``num_scales``, ``embed_dim``, ``depth``, ...).
    """
    if name not in SEGMENTORS:
        raise UserError(f"unknown segmentation architecture {name!r}; choose one of: {', '.join(SEGMENTORS)}")
    variant = SEGMENTORS[name]
    backbone = build_variant(variant, **{**backbone_kwargs, "num_classes": 0, "pos_paired_frequencies": False})
    if out_idx is None:
        out_idx = min(HYBRID_SEG_OUT_IDX[variant.removeprefix("tap_")], backbone.depth - 1)
    model = segmentor_from_backbone(backbone, out_idx, num_classes=num_classes, embed_dim=decoder_embed_dim,
                                    channels=head_channels, dropout_ratio=dropout_ratio,
                                    test_cfg=test_cfg or CITYSCAPES_TEST_CFG)
    model.pretrained_cfg = {**_pretrained_cfg(name), "num_classes": num_classes,
                            "input_size": (3, *model.test_cfg.get("crop_size", (1024, 1024)))}
    return model


def _pretrained_cfg(name: str) -> Dict[str, Any]:
    """timm's pretrained config of a segmentation architecture (its classifier is the head's last 1x1 conv)."""
    return {"architecture": name, "num_classes": 19, "input_size": (3, *CITYSCAPES_TEST_CFG["crop_size"]),
            "interpolation": "bilinear", "crop_pct": 1.0, "mean": tuple(m / 255 for m in CITYSCAPES_MEAN),
            "std": tuple(s / 255 for s in CITYSCAPES_STD), "first_conv": "backbone.patch_embed.backbone.stem.0",
            "classifier": "decode_head.linear_pred"}


# NOTE: timm reads `default_cfgs` from the module that defines the entrypoints, so the zoo finds the classifier name
default_cfgs: Dict[str, Dict[str, Any]] = {name: _pretrained_cfg(name) for name in SEGMENTORS}


def _make_entrypoint(name: str) -> Callable[..., nn.Module]:
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        if pretrained:
            raise UserError(f"{name}: no download is possible here; pass a checkpoint file to attnprobe.create_model")
        for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(key, None)
        return build_segmentor(name, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"{name}: {SEGMENTORS[name]} + SegFormer head, the official Cityscapes configuration."
    return entrypoint


def register_segmentors() -> List[str]:
    """Register the named segmentation architectures into timm (idempotent); returns the names registered now."""
    import timm.models

    done = []
    for name in SEGMENTORS:
        if timm.models.is_model(name) and timm.models.model_entrypoint(name).__module__ == __name__:
            continue
        fn = _make_entrypoint(name)
        globals()[name] = fn
        timm.models.register_model(fn)
        done.append(name)
    return done


register_segmentors()
