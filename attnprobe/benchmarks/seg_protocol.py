"""How a segmentation model is evaluated: its test pipeline, its inference settings, and the engine scorers.

`SegProtocol` is everything that changes the numbers besides the model and the images: the test pipeline (keep-ratio
resize, normalisation), the inference mode (official: slide, 1024 x 1024 windows, stride 768), the number of classes
and the ignore label. Its `key()` is the results store's `preprocessing` field of every segmentation cell, so numbers
made with other settings are never mixed.

    proto = SegProtocol.for_model(loaded)                 # card [segmentation] > model.test_cfg > official
    pred = proto.predict(model, x_uint8, label_size)      # (B, H, W) trainIds at the label size
    scorer = miou_scorer(proto)                           # per-class integer areas as chunk sums
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from attnprobe.data.seg_transforms import MEAN, STD, SegTestPipeline, normalize_on_device
from attnprobe.engine import Scorer
from attnprobe.errors import UserError

__all__ = ["OFFICIAL_CROP", "OFFICIAL_STRIDE", "SegProtocol", "check_segmentation_model", "miou_scorer"]

OFFICIAL_CROP = (1024, 1024)
OFFICIAL_STRIDE = (768, 768)


def _pair(value: Any, what: str) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    if isinstance(value, Sequence) and len(value) == 2 and all(int(v) > 0 for v in value):
        return int(value[0]), int(value[1])
    raise UserError(f"segmentation {what} must be [height, width] in pixels, got {value!r}; fix the model card")


@dataclass(frozen=True)
class SegProtocol:
    """Test pipeline + inference settings of a segmentation evaluation.

    Attributes:
        pipeline: the official test pipeline (or a scaled one for tiny models, e.g. the synthetic set's).
        mode: "slide" (official) or "whole".
        crop: slide window (height, width).
        stride: slide step (height, width).
        num_classes: classes the model predicts (19 for Cityscapes trainIds).
        ignore_index: label value that is not scored.
    """

    pipeline: SegTestPipeline = field(default_factory=SegTestPipeline)
    mode: str = "slide"
    crop: tuple[int, int] | None = OFFICIAL_CROP
    stride: tuple[int, int] | None = OFFICIAL_STRIDE
    num_classes: int = 19
    ignore_index: int = 255

    def __post_init__(self) -> None:
        if self.mode not in ("slide", "whole"):
            raise UserError(f"unknown segmentation inference mode {self.mode!r}; use slide or whole")
        if self.mode == "slide" and (self.crop is None or self.stride is None):
            raise UserError("slide inference needs a crop and a stride; set crop_size and stride in the model card")

    def inference_key(self) -> str:
        """The inference part of `key()`, e.g. `slide:crop=1024x1024:stride=768x768`."""
        if self.mode == "whole":
            return "whole"
        (ch, cw), (sh, sw) = self.crop, self.stride  # type: ignore[misc]
        return f"slide:crop={ch}x{cw}:stride={sh}x{sw}"

    def key(self) -> str:
        """The store's preprocessing field: pipeline, inference, classes, ignore label; logits resized to the labels."""
        return (f"{self.pipeline.key()}|infer={self.inference_key()}:resize-logits-to-label:argmax"
                f"|classes={self.num_classes}:ignore={self.ignore_index}")

    def describe(self) -> str:
        """One line for tables and captions."""
        s = self.pipeline.scale
        inf = "whole image" if self.mode == "whole" else (f"slide {self.crop[0]}x{self.crop[1]} "  # type: ignore[index]
                                                          f"stride {self.stride[0]}x{self.stride[1]}")  # type: ignore
        return f"resize to fit {s[0]}x{s[1]}, {inf}, logits resized to the label size"

    @classmethod
    def for_model(cls, loaded: Any) -> SegProtocol:
        """The protocol of a loaded segmentation model: its card's `[segmentation]` table, else the model's
        `test_cfg`, else the official Cityscapes settings."""
        check_segmentation_model(loaded)
        seg: Mapping[str, Any] = (getattr(loaded, "card", None) or {}).get("segmentation") or {}
        cfg: Mapping[str, Any] = getattr(loaded.model, "test_cfg", None) or {}
        if seg.get("to_rgb", True) is not True or seg.get("keep_ratio", True) is not True:
            raise UserError(f"{loaded.name}: only the official test pipeline (keep_ratio = true, to_rgb = true) is "
                            f"supported; fix the model card's [segmentation] table")
        scale = _pair(seg.get("img_scale", (2048, 1024)), "img_scale")
        pipeline = SegTestPipeline(scale=scale, mean=tuple(float(v) for v in seg.get("mean", MEAN)),  # type: ignore
                                   std=tuple(float(v) for v in seg.get("std", STD)))  # type: ignore[arg-type]
        mode = str(seg.get("mode") or cfg.get("mode") or "slide")
        crop = seg.get("crop_size") or cfg.get("crop_size") or OFFICIAL_CROP
        stride = seg.get("stride") or cfg.get("stride") or OFFICIAL_STRIDE
        num_classes = int(seg.get("num_classes", getattr(loaded.model, "num_classes", 19)))
        model_classes = getattr(loaded.model, "num_classes", num_classes)
        if int(model_classes) != num_classes:
            raise UserError(f"{loaded.name} predicts {model_classes} classes but its card says {num_classes}")
        if num_classes != 19:
            raise UserError(f"{loaded.name} predicts {num_classes} classes; Cityscapes, Cityscapes-C and ACDC are "
                            f"scored on the 19 Cityscapes train classes")
        return cls(pipeline=pipeline, mode=mode, crop=_pair(crop, "crop_size") if mode == "slide" else None,
                   stride=_pair(stride, "stride") if mode == "slide" else None, num_classes=num_classes,
                   ignore_index=int(seg.get("ignore_index", 255)))

    def logits(self, model: nn.Module, x: torch.Tensor, label_size: tuple[int, int]) -> torch.Tensor:
        """Logits (B, C, H, W) at the label size: normalise uint8 inputs on the device, infer, resize bilinearly."""
        from attnprobe.segmentation import infer

        if x.dtype == torch.uint8:
            x = normalize_on_device(x, self.pipeline.mean, self.pipeline.std)
        return infer(model, x, mode=self.mode, crop=self.crop, stride=self.stride, output_size=tuple(label_size))

    def predict(self, model: nn.Module, x: torch.Tensor, label_size: tuple[int, int]) -> torch.Tensor:
        """Predicted trainIds (B, H, W) at the label size (the official simple_test: argmax of the resized logits)."""
        return self.logits(model, x, label_size).argmax(1)


def check_segmentation_model(loaded: Any) -> None:
    """Refuse a classifier where a segmentation model is needed (one line, before any data is read).

    Raises:
        UserError: the model is not a segmentation model.
    """
    task = getattr(loaded.model, "task", None) or (getattr(loaded, "card", None) or {}).get("task")
    if task != "segmentation":
        raise UserError(f"{loaded.name} is a classification model; attnprobe seg needs a segmentation model "
                        f"(e.g. fan_b_tapadl_seg, or a card with task = \"segmentation\")")


def miou_scorer(protocol: SegProtocol) -> Scorer:
    """Engine scorer: per-class integer areas (intersection, union, prediction, label) summed over a batch.

    The fields are `attnprobe.segmentation.area_fields(C)`; summed over chunks, resumed runs and ranks they are the
    exact single-pass areas, from which `IoUAccumulator.from_fields` computes mIoU, aAcc and mAcc.
    """
    from attnprobe.segmentation import area_fields, areas_to_fields, batch_areas

    def fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        pred = protocol.predict(model, x, tuple(y.shape[-2:]))
        return areas_to_fields(batch_areas(pred, y, protocol.num_classes, protocol.ignore_index).sum(0))

    return Scorer(fn, area_fields(protocol.num_classes))
