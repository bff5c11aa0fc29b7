"""Semantic segmentation: FAN / TAP-FAN backbones with the SegFormer head, slide inference, mIoU.

    import attnprobe
    model = attnprobe.create_model("fan_b_tapadl_seg", checkpoint="tapadl_fan_base_segmentation.pth")
    logits = attnprobe.segmentation.infer(model, x, mode="slide", crop=(1024, 1024), stride=(768, 768))
    scores = attnprobe.segmentation.mean_iou(preds, gts, num_classes=19, ignore_index=255)

Names are re-exported lazily, so importing this package does not import torch.
"""

import importlib
from typing import Any

# public name -> module that defines it
_EXPORTS = {
    "EncoderDecoder": "attnprobe.segmentation.model",
    "SEGMENTORS": "attnprobe.segmentation.model",
    "build_segmentor": "attnprobe.segmentation.model",
    "build_segmentor_from_config": "attnprobe.segmentation.model",
    "segmentor_from_backbone": "attnprobe.segmentation.model",
    "SegFormerHead": "attnprobe.segmentation.segformer_head",
    "infer": "attnprobe.segmentation.inference",
    "slide_inference": "attnprobe.segmentation.inference",
    "whole_inference": "attnprobe.segmentation.inference",
    "slide_windows": "attnprobe.segmentation.inference",
    "slide_count": "attnprobe.segmentation.inference",
    "mean_iou": "attnprobe.segmentation.miou",
}

__all__ = ["EncoderDecoder", "SEGMENTORS", "SegFormerHead", "build_segmentor", "build_segmentor_from_config", "infer",
           "mean_iou", "segmentor_from_backbone", "slide_count", "slide_inference", "slide_windows", "whole_inference"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'attnprobe.segmentation' has no attribute {name!r}")
