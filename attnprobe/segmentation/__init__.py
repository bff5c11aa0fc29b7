"""Semantic segmentation: mIoU (official MMSegmentation 0.13 rules), its exact, chunkable accumulator, and the
Cityscapes-C / ACDC summaries.

Re-exported lazily, so `import attnprobe.segmentation` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it
_EXPORTS = {
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

__all__ = ["IoUAccumulator", "acdc_summary", "area_fields", "areas_from_fields", "areas_to_fields", "batch_areas",
           "cityscapes_c_summary", "iou_from_areas", "mean_iou", "official_round"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'attnprobe.segmentation' has no attribute {name!r}")
