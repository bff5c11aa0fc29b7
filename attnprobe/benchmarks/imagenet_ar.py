"""ImageNet-A / ImageNet-R top-1 accuracy (tasks "imagenet_a", "imagenet_r"; condition = task, severity 0).

Top-1 among the 200 logits of the set (`protocol.subset_indices`); labels are positions in the set's canonical
200-wnid list, so any subset of class folders is scored against the right logits.

    res = evaluate_subset(loaded, "r", "/data/imagenet-r", store)     # SubsetResult: res.accuracy, res.n
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from attnprobe.benchmarks.common import cell_key
from attnprobe.data.folders import ImageFolderDataset, scan_class_folders
from attnprobe.engine import CellSpec, ProgressHook, restricted_top1_scorer, run_cells
from attnprobe.errors import UserError
from attnprobe.store import ResultsStore

__all__ = ["SubsetResult", "evaluate_subset", "subset_samples"]


@dataclass
class SubsetResult:
    """Top-1 accuracy on ImageNet-A or ImageNet-R (200 classes)."""

    set: str
    n: int
    correct: int
    skipped: int
    accuracy: float
    cached: bool
    dataset: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def subset_samples(root: str | Path, set_name: str) -> tuple[list[tuple[str, int]], list[int]]:
    """List an ImageNet-A/R folder with labels as positions in the set's canonical 200-wnid list.

    Returns:
        (samples, indices): `(relative path, position)` sorted by path, and the 200 logit indices.

    Raises:
        UserError: an unknown set name, or a wnid folder that is not one of the set's 200 classes.
    """
    from attnprobe import protocol

    name = set_name.lower()
    if name not in ("a", "r"):
        raise UserError(f"unknown set {set_name!r}; use --set a (ImageNet-A) or --set r (ImageNet-R)")
    indices = protocol.subset_indices(name)
    wnids = protocol.imagenet_wnids()
    position = {wnids[i]: k for k, i in enumerate(indices)}
    samples = scan_class_folders(root, f"ImageNet-{name.upper()} folder")
    out = []
    for rel, label in samples:
        wnid = wnids[label]
        if wnid not in position:
            raise UserError(f"class folder {wnid} in {root} is not one of the 200 ImageNet-{name.upper()} classes; "
                            f"check that --set {name} matches the data (ImageNet-A and -R have different classes)")
        out.append((rel, position[wnid]))
    return out, indices


def evaluate_subset(lm: Any, set_name: str, root: str | Path, store: ResultsStore | None, *, batch_size: int = 128,
                    limit: int | None = None, workers: int | None = None, device: torch.device | str | None = None,
                    fresh: bool = False, strict: bool = False, progress: ProgressHook | None = None,
                    **run_kw: Any) -> SubsetResult:
    """Top-1 accuracy of one model on ImageNet-A (`set_name="a"`) or ImageNet-R (`"r"`), 200-class logits.

    Images get the model's standard evaluation transform (resize, centre crop, normalise). `run_kw` goes to
    `run_cells` (precision, decode, channels_last, compile, ...).
    """
    from attnprobe.data.transforms import eval_transform

    samples, indices = subset_samples(root, set_name)
    task = f"imagenet_{set_name.lower()}"
    ds = ImageFolderDataset(root, eval_transform(lm.preprocessing), samples=samples, limit=limit, kind=task)
    cell = CellSpec(cell_key(lm, task, ds.fingerprint, task), ds, {"classes": 200, "limit": limit})
    [res] = run_cells(lm.model, [cell], store, batch_size=batch_size, workers=workers, device=device,
                      scorer=restricted_top1_scorer(indices), fresh=fresh, strict=strict, progress=progress,
                      **run_kw)
    return SubsetResult(set=task, n=res.n, correct=res.correct, skipped=res.skipped,
                        accuracy=res.top1_accuracy, cached=res.cached, dataset=res.key.dataset)
