"""Mean IoU exactly as the official TAP/ADL segmentation code computes it (MMSegmentation 0.13 `eval_metrics`).

Rules (`shared/reference/segmentation/seg_protocol.json -> miou`, official `mmseg/core/evaluation/metrics.py`):

* pixels whose label is `ignore_index` (255) are removed first, predictions on them included;
* per image, four class histograms: intersection (pred == label), prediction, label, and
  union = pred + label - intersection; they are *summed over the whole evaluated set* before any division;
* IoU_c = I_c / U_c, Acc_c = I_c / L_c (NaN where the denominator is 0), aAcc = sum I / sum L;
  mIoU and mAcc are `nanmean` over classes: a class absent from labels *and* predictions is skipped, a class that
  is predicted but never labelled has IoU 0 and counts;
* the official summary rounds to 0.01 %: `np.round(nanmean(x) * 100, 2) / 100` (`official_round`).

Histograms follow `np.histogram(values, bins=np.arange(C + 1))`: values outside `[0, C]` are dropped and, as
numpy's last bin is closed, a value equal to `C` lands in class `C - 1`. A `C`-class argmax never produces such
values and trainId maps hold only 0..18 and 255, so this only matters for malformed label files; we mirror it
anyway so that the numbers are the official ones for any input.

The areas are int64 counts, so sums over chunks, ranks and images are exact: a chunked, sharded run gives the same
numbers as a single pass. Everything runs on the tensors' device (bincount), CPU or CUDA.

    acc = IoUAccumulator(num_classes=19)
    for logits, labels in batches:                 # labels (B, H, W) uint8/int64, 255 = ignore
        acc.update(logits.argmax(1), labels)
    res = acc.compute()                            # {"miou", "iou", "acc", "aacc", "macc", "summary", ...}

    # resumable engine: store per-chunk sums as named integer fields, add them up later
    fields = areas_to_fields(batch_areas(pred, labels).sum(0))      # {"area_intersect_00": ..., ...}
    total = IoUAccumulator.from_fields(summed_fields, num_classes=19).compute()
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "AREA_KINDS",
    "IoUAccumulator",
    "area_fields",
    "areas_from_fields",
    "areas_to_fields",
    "batch_areas",
    "iou_from_areas",
    "mean_iou",
    "official_round",
]

#: The four per-class sums, in the order of the rows of an areas tensor (4, C).
AREA_KINDS = ("area_intersect", "area_union", "area_pred", "area_label")


def _bins(values: torch.Tensor, other: int) -> torch.Tensor:
    """int32 bin per value: the value itself in [0, other), `other` for anything outside (negative or larger)."""
    v = values.clamp(max=other) if values.dtype == torch.uint8 else values.clamp(-1, other)
    v = v.to(torch.int32)
    return torch.where(v < 0, other, v)


def batch_areas(preds: torch.Tensor, labels: torch.Tensor, num_classes: int = 19,
                ignore_index: int = 255) -> torch.Tensor:
    """Per-image class areas of a batch, official rules (see the module docstring).

    Args:
        preds: predicted class maps (B, H, W) or (H, W), any integer dtype.
        labels: label maps of the same shape (uint8 is fine); `ignore_index` marks pixels that are not scored.
        num_classes: number of classes C.
        ignore_index: label value to ignore.

    Returns:
        int64 tensor (B, 4, C) on the inputs' device: rows `AREA_KINDS` (intersection, union, prediction, label).
    """
    if preds.shape != labels.shape:
        raise ValueError(f"prediction {tuple(preds.shape)} and label {tuple(labels.shape)} differ in shape; resize the "
                         f"logits to the label size before the argmax")
    if preds.dim() == 2:
        preds, labels = preds[None], labels[None]
    if preds.dim() != 3:
        raise ValueError(f"expected (B, H, W) or (H, W) maps, got shape {tuple(preds.shape)}")
    if preds.is_floating_point() or labels.is_floating_point():
        raise TypeError("predictions and labels must be integer class maps (take the argmax of the logits first)")
    b, c = preds.shape[0], int(num_classes)
    # NOTE: one confusion histogram per image over K = C + 2 bins per axis: the C classes, the value C itself (which
    # np.histogram puts into class C - 1, but which is only an intersection where both values are C) and "other"
    # (dropped by np.histogram). Ignored pixels go to one extra bin. One bincount, no masked copies, int32 codes.
    k = c + 2
    per_image = k * k + 1
    pred = preds.reshape(b, -1)  # (B, HW)
    label = labels.reshape(b, -1).to(pred.device)  # (B, HW)
    code = _bins(label, k - 1) * k + _bins(pred, k - 1)  # (B, HW) in [0, K*K)
    code.masked_fill_(label == ignore_index, k * k)
    code += (torch.arange(b, device=pred.device, dtype=torch.int32) * per_image)[:, None]
    hist = torch.bincount(code.reshape(-1), minlength=b * per_image).reshape(b, per_image)
    confusion = hist[:, : k * k].reshape(b, k, k)  # (B, label bin, pred bin)

    def fold(v: torch.Tensor) -> torch.Tensor:  # (B, K) -> (B, C): bin C joins class C - 1, "other" is dropped
        out = v[:, :c].clone()
        out[:, c - 1] += v[:, c]
        return out

    area_intersect = fold(confusion.diagonal(dim1=1, dim2=2))
    area_label = fold(confusion.sum(2))
    area_pred = fold(confusion.sum(1))
    area_union = area_pred + area_label - area_intersect
    return torch.stack([area_intersect, area_union, area_pred, area_label], dim=1)  # (B, 4, C)


def official_round(value: float) -> float:
    """The official summary rounding: `np.round(value * 100, 2) / 100` (NaN stays NaN)."""
    return float(np.round(float(value) * 100, 2)) / 100.0


def _nanmean(x: np.ndarray) -> float:
    finite = x[~np.isnan(x)]
    return float(finite.mean()) if finite.size else math.nan


def iou_from_areas(areas: torch.Tensor | np.ndarray | Sequence[Sequence[int]]) -> dict[str, Any]:
    """mIoU and accuracies from summed areas (4, C), as the official `eval_metrics` + `CustomDataset.evaluate`.

    Returns:
        dict with `miou`, `macc`, `aacc` (fractions, unrounded), `iou`, `acc` (float64 arrays (C,), NaN where the
        class has no pixels), `summary` (`{"mIoU", "mAcc", "aAcc"}` rounded like the official evaluate), `n_classes`
        (classes that enter the mIoU), `num_classes`, `pixels` (scored pixels) and the four `area_*` arrays (int64).
    """
    a = areas.detach().cpu().numpy() if isinstance(areas, torch.Tensor) else np.asarray(areas)
    a = a.astype(np.int64)
    if a.ndim != 2 or a.shape[0] != 4:
        raise ValueError(f"areas must have shape (4, num_classes), got {a.shape}")
    inter, union, _, label = (a[i].astype(np.float64) for i in range(4))
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
        acc = inter / label
        aacc = float(inter.sum() / label.sum()) if label.sum() > 0 else math.nan
    miou, macc = _nanmean(iou), _nanmean(acc)
    return {
        "miou": miou, "macc": macc, "aacc": aacc, "iou": iou, "acc": acc,
        "summary": {"mIoU": official_round(miou), "mAcc": official_round(macc), "aAcc": official_round(aacc)},
        "n_classes": int((~np.isnan(iou)).sum()), "num_classes": int(a.shape[1]), "pixels": int(a[3].sum()),
        **{k: a[i].copy() for i, k in enumerate(AREA_KINDS)},
    }


def area_fields(num_classes: int = 19) -> tuple[str, ...]:
    """Names of the 4 x C integer fields of an areas tensor: `area_intersect_00`, ..., `area_label_18`."""
    return tuple(f"{kind}_{c:02d}" for kind in AREA_KINDS for c in range(num_classes))


def areas_to_fields(areas: torch.Tensor) -> dict[str, torch.Tensor]:
    """Split an areas tensor (4, C) into named scalar fields (still on its device), for a scorer's batch sums."""
    if areas.dim() != 2 or areas.shape[0] != 4:
        raise ValueError(f"areas must have shape (4, num_classes), got {tuple(areas.shape)}")
    flat = areas.reshape(-1)
    return {name: flat[i] for i, name in enumerate(area_fields(areas.shape[1]))}


def areas_from_fields(fields: Mapping[str, Any], num_classes: int = 19) -> torch.Tensor:
    """Rebuild the int64 areas (4, C) from named fields (e.g. summed chunk sums read back from the store).

    Stored sums may come back as floats (the engine reduces in float64, exact below 2**53); they must be integral.
    """
    values = []
    for name in area_fields(num_classes):
        if name not in fields:
            raise KeyError(f"missing field {name!r}; these sums were not written by a mIoU scorer")
        v = float(fields[name])
        if v != round(v) or v < 0:
            raise ValueError(f"field {name!r} = {v} is not a non-negative integer count")
        values.append(round(v))
    return torch.tensor(values, dtype=torch.int64).reshape(4, num_classes)


class IoUAccumulator:
    """Running class areas over any number of batches, chunks or ranks; exact (int64) and device-resident.

    Args:
        num_classes: number of classes C (19 for Cityscapes).
        ignore_index: label value that is not scored (255).
        device: where the sums live (default: the device of the first update).
    """

    def __init__(self, num_classes: int = 19, ignore_index: int = 255,
                 device: torch.device | str | None = None) -> None:
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.areas: torch.Tensor | None = (torch.zeros(4, self.num_classes, dtype=torch.int64, device=device)
                                           if device is not None else None)
        self.images = 0

    def update(self, preds: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Add a batch (B, H, W) or one map (H, W); returns the batch's per-image areas (B, 4, C)."""
        per_image = batch_areas(preds, labels, self.num_classes, self.ignore_index)
        total = per_image.sum(0)
        self.areas = total if self.areas is None else self.areas + total.to(self.areas.device)
        self.images += per_image.shape[0]
        return per_image

    def add_areas(self, areas: torch.Tensor, images: int = 0) -> None:
        """Add already computed areas (4, C) (e.g. another chunk's or rank's sums)."""
        areas = torch.as_tensor(areas, dtype=torch.int64)
        if tuple(areas.shape) != (4, self.num_classes):
            raise ValueError(f"areas must have shape (4, {self.num_classes}), got {tuple(areas.shape)}")
        self.areas = areas.clone() if self.areas is None else self.areas + areas.to(self.areas.device)
        self.images += int(images)

    def merge(self, other: IoUAccumulator) -> IoUAccumulator:
        """Add another accumulator's sums into this one (same classes and ignore index); returns self."""
        if (other.num_classes, other.ignore_index) != (self.num_classes, self.ignore_index):
            raise ValueError("cannot merge accumulators with different num_classes or ignore_index")
        if other.areas is not None:
            self.add_areas(other.areas, other.images)
        return self

    def totals(self) -> torch.Tensor:
        """The summed areas (4, C), int64 (zeros before any update)."""
        if self.areas is None:
            return torch.zeros(4, self.num_classes, dtype=torch.int64)
        return self.areas

    def to_fields(self) -> dict[str, int]:
        """The sums as named integer fields (`area_fields`), e.g. for the results store."""
        return {k: int(v) for k, v in zip(area_fields(self.num_classes), self.totals().reshape(-1).tolist())}

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any], num_classes: int = 19,
                    ignore_index: int = 255) -> IoUAccumulator:
        """An accumulator holding the sums of `fields` (see `areas_from_fields`)."""
        acc = cls(num_classes, ignore_index)
        acc.add_areas(areas_from_fields(fields, num_classes))
        return acc

    def compute(self) -> dict[str, Any]:
        """mIoU, per-class IoU and accuracies of everything added so far (see `iou_from_areas`)."""
        out = iou_from_areas(self.totals())
        out["images"] = self.images
        return out


def mean_iou(preds: Iterable[Any], gts: Iterable[Any], num_classes: int = 19,
             ignore_index: int = 255) -> dict[str, Any]:
    """mIoU over a set of predicted and ground-truth maps (official MMSegmentation 0.13 rules).

    Args:
        preds: predicted class maps (tensors or arrays; each (H, W), or a (B, H, W) batch).
        gts: label maps, paired with `preds` (sizes may differ between pairs, never within one).
        num_classes: number of classes.
        ignore_index: label value that is not scored.

    Returns:
        See `iou_from_areas` (plus `images`).
    """
    acc = IoUAccumulator(num_classes, ignore_index)
    preds, gts = list(preds), list(gts)
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} predictions but {len(gts)} label maps")
    for p, g in zip(preds, gts):
        acc.update(torch.as_tensor(np.asarray(p) if not isinstance(p, torch.Tensor) else p),
                   torch.as_tensor(np.asarray(g) if not isinstance(g, torch.Tensor) else g))
    return acc.compute()
