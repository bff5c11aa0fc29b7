"""Semantic segmentation: FAN / TAP-FAN backbones with the SegFormer head, slide inference, mIoU (official
MMSegmentation 0.13 rules) with its exact, chunkable accumulator, and the Cityscapes-C / ACDC summaries.

    import attnprobe
    model = attnprobe.create_model("fan_b_tapadl_seg", checkpoint="tapadl_fan_base_segmentation.pth")
    logits = attnprobe.segmentation.infer(model, x, mode="slide", crop=(1024, 1024), stride=(768, 768))
    scores = attnprobe.segmentation.mean_iou(preds, gts, num_classes=19, ignore_index=255)

Names are re-exported lazily, so importing this package does not import torch.
"""

from __future__ import annotations

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
    "IoUAccumulator": "attnprobe.segmentation.miou",
    "batch_areas": "attnprobe.segmentation.miou",
    "iou_from_areas": "attnprobe.segmentation.miou",
    "area_fields": "attnprobe.segmentation.miou",
    "areas_to_fields": "attnprobe.segmentation.miou",
    "areas_from_fields": "attnprobe.segmentation.miou",
    "official_round": "attnprobe.segmentation.miou",
    "cityscapes_c_summary": "attnprobe.segmentation.scores",
    "acdc_summary": "attnprobe.segmentation.scores",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'attnprobe.segmentation' has no attribute {name!r}")
