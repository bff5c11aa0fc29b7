"""Benchmark summaries of per-cell mIoUs: Cityscapes-C (per corruption, per group, average) and ACDC (average).

Rules (`attnprobe/protocol/cityscapes_c.json`, `acdc.json`):

* a Cityscapes-C corruption's score is the mean over its official severities (1-3 for the noises, 1-5 otherwise)
  of the per-cell mIoU, each already rounded to 0.01 % as the official evaluate rounds it
  (`test_cityscapes_c.py:182-191`; `rounded=False` averages the unrounded values);
* the paper's "Average mIoU on Cityscapes-C" is the plain mean of the 16 corruption scores (every corruption
  weighted equally, whatever its number of severities); the official script never averages them, the paper's
  averages agree with this to within 0.06 points for the TAP/ADL rows;
* ACDC "Average" is reported as the mean of the 4 condition mIoUs (it matches the paper's FAN rows to 0.05); the
  mIoU pooled over all conditions (areas summed, then divided) is given beside it, since the server's number for
  rows quoted from other papers looks like that.

Values are fractions. A summary never hides missing cells: incomplete corruptions and groups are None and listed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from attnprobe.segmentation.miou import iou_from_areas, official_round

__all__ = ["acdc_summary", "cityscapes_c_summary"]


def cityscapes_c_summary(miou: Mapping[tuple[str, int], float], rounded: bool = True) -> dict[str, Any]:
    """Per-corruption, per-group and average Cityscapes-C scores from per-cell mIoUs.

    Args:
        miou: {(corruption, severity): mIoU fraction} for the cells evaluated so far.
        rounded: round each cell like the official evaluate before averaging (the paper's numbers).

    Returns:
        dict with `corruptions` {name: score or None}, `groups` {group: mean of its 4 or None}, `average` (mean of the
        16, or None unless all are complete), `missing` [(corruption, severity), ...] and `complete` (bool).
    """
    from attnprobe.protocol import cityscapes_c_corruptions, cityscapes_c_groups, cityscapes_c_severities

    value = official_round if rounded else float
    corruptions: dict[str, float | None] = {}
    missing: list[tuple[str, int]] = []
    for c in cityscapes_c_corruptions():
        sevs = cityscapes_c_severities(c)
        absent = [(c, s) for s in sevs if (c, s) not in miou]
        missing.extend(absent)
        corruptions[c] = None if absent else float(np.mean([value(miou[(c, s)]) for s in sevs]))
    groups: dict[str, float | None] = {}
    for g, names in cityscapes_c_groups().items():
        scores = [corruptions[n] for n in names]
        groups[g] = None if any(s is None for s in scores) else float(np.mean(scores))
    complete = not missing
    average = float(np.mean(list(corruptions.values()))) if complete else None
    return {"corruptions": corruptions, "groups": groups, "average": average, "missing": missing,
            "complete": complete, "rounded": rounded}


def acdc_summary(miou: Mapping[str, float], areas: Mapping[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """ACDC average over the four conditions.

    Args:
        miou: {condition: mIoU fraction}.
        areas: {condition: summed areas (4, C)} (see `attnprobe.segmentation.miou`), for the pooled mIoU.

    Returns:
        dict with `conditions`, `average` (mean of the 4 mIoUs, None unless all 4 are there), `pooled` (mIoU of the
        summed areas, None without `areas` for all 4), `missing`.
    """
    from attnprobe.protocol import acdc_conditions

    names = acdc_conditions()
    missing = [c for c in names if c not in miou]
    average = None if missing else float(np.mean([miou[c] for c in names]))
    pooled = None
    if areas is not None and all(c in areas for c in names):
        total = sum(torch.as_tensor(areas[c], dtype=torch.int64).cpu() for c in names)
        pooled = iou_from_areas(total)["miou"]  # type: ignore[arg-type]
    return {"conditions": {c: miou.get(c) for c in names}, "average": average, "pooled": pooled,
            "missing": missing}
