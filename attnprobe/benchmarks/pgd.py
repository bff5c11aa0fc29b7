"""PGD robust accuracy (task "pgd"; condition `pgd5` or `pgd-eps..-step..-steps..`, severity 0).

`correct` counts images still classified right after the attack; `clean_correct` the clean ones. Random starts are
seeded per image (seed, image index), so results do not depend on batch size, ranks or resumption. The attack
itself lives in `attnprobe.attacks`.

    res = evaluate_pgd(loaded, "/data/imagenet/val", store, limit=5000)    # PGDResult: res.robust_accuracy
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attnprobe.attacks import PGD5, normalize, pgd
from attnprobe.benchmarks.common import cell_key
from attnprobe.data.folders import ImageFolderDataset, scan_class_folders
from attnprobe.engine import CellSpec, ProgressHook, Scorer, run_cells
from attnprobe.errors import UserError
from attnprobe.store import ResultsStore

__all__ = ["PGDResult", "evaluate_pgd", "pgd_condition", "pgd_scorer"]


class _PixelInput:
    """Resize + centre crop + to tensor, *without* normalisation (PGD works in pixel space). Picklable."""

    def __init__(self, pre: Any) -> None:
        self.pre = pre

    def __call__(self, img: Any) -> torch.Tensor:
        from torchvision.transforms import functional as TF

        from attnprobe.data.transforms import resize_and_crop

        return TF.to_tensor(resize_and_crop(img, self.pre))

    def tensor_recipe(self) -> Any:
        """The same transform on uint8 tensors (the device input path): pixels in [0, 1], not normalised."""
        from attnprobe.data.tensor_transforms import TensorRecipe

        return TensorRecipe.from_preprocessing(self.pre, resize=True, crop=True, fit=False, normalise=False)


class _IndexedFolder(ImageFolderDataset):
    """Targets are `[label, sample index]`, so the attack can seed each image's random start by its index."""

    def target(self, i: int) -> torch.Tensor:
        return torch.tensor([self.samples[i][1], i], dtype=torch.long)


def _sample_seed(seed: int, index: int) -> int:
    return int.from_bytes(hashlib.sha256(f"pgd|{seed}|{index}".encode()).digest()[:8], "little") >> 1


def pgd_scorer(mean: Sequence[float], std: Sequence[float], eps: float = PGD5["eps"], step: float = PGD5["step"],
               steps: int = PGD5["steps"], seed: int = 0) -> Scorer:
    """Scorer for pixel-space batches with targets `[label, index]`: clean and adversarial top-1 counts."""

    def fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        labels, index = y[:, 0], y[:, 1].tolist()
        with torch.no_grad():
            clean = model(normalize(x, mean, std)).argmax(1) == labels
        adv = pgd(model, x, labels, mean, std, eps=eps, step=step, steps=steps,
                  seed=[_sample_seed(seed, i) for i in index])
        with torch.no_grad():
            robust = model(normalize(adv, mean, std)).argmax(1) == labels
        return {"correct": robust.sum(), "clean_correct": clean.sum(), "correct_mask": robust}

    return Scorer(fn, ("correct", "clean_correct"), needs_grad=True, per_sample=True)


def pgd_condition(eps: float, step: float, steps: int, seed: int) -> str:
    """Store condition name: `pgd5` for the paper's setting with seed 0, else the parameters spelled out."""
    if (eps, step, steps, seed) == (PGD5["eps"], PGD5["step"], PGD5["steps"], 0):
        return "pgd5"
    return f"pgd-eps{eps * 255:g}-step{step * 255:g}-steps{steps}-seed{seed}"


@dataclass
class PGDResult:
    """Clean and robust top-1 accuracy under L-inf PGD."""

    n: int
    skipped: int
    clean_accuracy: float
    robust_accuracy: float
    eps: float
    step: float
    steps: int
    seed: int
    cached: bool
    dataset: str
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["eps_255"], d["step_255"] = self.eps * 255, self.step * 255
        return d


def evaluate_pgd(lm: Any, root: str | Path, store: ResultsStore | None, *, limit: int | None = None,
                 batch_size: int = 32, eps: float = PGD5["eps"], step: float = PGD5["step"],
                 steps: int = PGD5["steps"], seed: int = 0, workers: int | None = None,
                 device: torch.device | str | None = None, fresh: bool = False, strict: bool = False,
                 progress: ProgressHook | None = None, **run_kw: Any) -> PGDResult:
    """Robust accuracy of one model under L-inf PGD (default PGD-5: eps 1/255, step 0.5/255, 5 steps).

    Args:
        lm: a `LoadedModel`.
        root: ImageNet validation folder (`<wnid>/` class folders).
        store: results store (rank 0) or None.
        limit: evenly spaced subset of this many images.
        batch_size: images per attack batch (each needs activations and an input gradient).
        eps, step, steps: attack settings in pixel units.
        seed: base seed of the per-image random starts.
        workers, device, fresh, strict, progress: as in `run_cells`.
        run_kw: passed to `run_cells` (precision, decode, channels_last, compile). Under bf16/fp16 the attack's
            input gradients are computed in reduced precision too: a weaker attack, so use fp32 for paper numbers.
    """
    if eps < 0 or step < 0 or steps < 0:
        raise UserError("--eps, --step and --steps must be non-negative")
    pre = lm.preprocessing
    samples = scan_class_folders(root, "validation folder")
    ds = _IndexedFolder(root, _PixelInput(pre), samples=samples, limit=limit, kind="imagenet_val")
    cond = pgd_condition(eps, step, steps, seed)
    info = {"eps": eps, "step": step, "steps": steps, "seed": seed, "norm": "linf", "random_start": True,
            "space": "pixel", "limit": limit}
    cell = CellSpec(cell_key(lm, "pgd", ds.fingerprint, cond), ds, info)
    [res] = run_cells(lm.model, [cell], store, batch_size=batch_size, workers=workers, device=device,
                      scorer=pgd_scorer(pre.mean, pre.std, eps, step, steps, seed), fresh=fresh, strict=strict,
                      progress=progress, **run_kw)
    clean = res.extra.get("clean_correct", 0)
    return PGDResult(n=res.n, skipped=res.skipped, clean_accuracy=clean / res.n if res.n else math.nan,
                     robust_accuracy=res.top1_accuracy, eps=eps, step=step, steps=steps, seed=seed,
                     cached=res.cached, dataset=res.key.dataset, extra=dict(res.extra))
