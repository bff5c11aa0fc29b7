"""Drivers for ImageNet-P (FP, FR, mFR, T5D), ImageNet-A/R accuracy and PGD-5 robust accuracy.

All three run on the generic resumable, distributed loop `attnprobe.evaluate.run_cells` with their own scorer:

* ImageNet-P (`task="imagenet_p"`, condition = perturbation, severity = difficulty): one sample is one video;
  its frames go through the model in batches of at most `frame_batch` frames. Each chunk stores the sums
  `fp_sum` (per-video flip probabilities), `t5d_sum`, `flips`, `pairs`, `frames`, `frames_correct`; FP =
  `fp_sum / n` can be recomputed from the store. `correct` counts videos whose frame 0 is classified right.
* ImageNet-A/R (`task="imagenet_a" | "imagenet_r"`, condition = task, severity 0): top-1 among the 200 logits
  of the set (`protocol.subset_indices`); labels are positions in the set's canonical 200-wnid list.
* PGD (`task="pgd"`, condition `pgd5` or `pgd-eps..-step..-steps..`, severity 0): `correct` counts images still
  classified right after the attack; `clean_correct` the clean ones. Random starts are seeded per image
  (seed, image index), so results do not depend on batch size, ranks or resumption.

Library code here never prints; progress goes to a `ProgressHook`.
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
from attnprobe.data.folders import ImageFolderDataset, scan_class_folders
from attnprobe.data.imagenet_p import ImageNetPDataset, RegeneratedVideos, ReleasedVideos
from attnprobe.data.imagenet_p_generate import APPROXIMATIONS, PERTURBATIONS
from attnprobe.errors import UserError
from attnprobe.evaluate import CellResult, CellSpec, ProgressHook, Scorer, restricted_top1_scorer, run_cells
from attnprobe.robustness.imagenet_p import (
    flip_rates,
    frame_pairs,
    top5_lists,
    top5_pair_distance,
)
from attnprobe.store import CellKey, ResultsStore

__all__ = [
    "P_CHUNK_SIZE",
    "REGENERATED_NOTE",
    "T5D_NOTE",
    "PResult",
    "SubsetResult",
    "PGDResult",
    "imagenet_p_scorer",
    "pgd_scorer",
    "imagenet_p_sources",
    "evaluate_imagenet_p",
    "summarize_imagenet_p",
    "subset_samples",
    "evaluate_subset",
    "evaluate_pgd",
    "pgd_condition",
]

#: Videos per committed chunk (a video is ~31 images, so this is ~6k forward passes).
P_CHUNK_SIZE = 200

REGENERATED_NOTE = ("regenerated ImageNet-P: sequences generated on the fly from clean images (own random draws, "
                    "no x264 compression); not the released videos, so numbers are close to, not equal to, "
                    "published mFR")
T5D_NOTE = ("mean top-5 distance is unnormalised: no AlexNet top-5 distances are published, so the paper's "
            "AlexNet-relative mT5D cannot be computed")


def _key(lm: Any, task: str, dataset: str, condition: str, severity: int = 0) -> CellKey:
    return CellKey(model=lm.name, checkpoint_sha256=lm.checkpoint_sha256, task=task, dataset=dataset,
                   preprocessing=lm.preprocessing.key(), condition=condition, severity=int(severity))


# ---------------------------------------------------------------------------------------------------------------
# ImageNet-P
# ---------------------------------------------------------------------------------------------------------------
def imagenet_p_scorer(mean: Sequence[float], std: Sequence[float], frame_batch: int = 64) -> Scorer:
    """Scorer for `ImageNetPDataset` batches: (V, T, H, W, 3) uint8 videos, targets (V, 3) = [label, noise, d].

    Frames are normalised on the device and go through the model `frame_batch` at a time, so activation memory
    does not grow with the video length. Only each frame's top-5 list is kept.
    """
    if frame_batch < 1:
        raise UserError(f"--batch-size must be at least 1, got {frame_batch}")
    fields = ("correct", "fp_sum", "t5d_sum", "flips", "pairs", "frames", "frames_correct")

    def fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        v, t = x.shape[:2]
        labels, noise, difficulty = y[:, 0], bool(y[0, 1]), int(y[0, 2])
        flat = x.reshape(v * t, *x.shape[2:])  # (V*T, H, W, 3)
        tops = []
        for s in range(0, v * t, frame_batch):
            frames = flat[s:s + frame_batch].permute(0, 3, 1, 2).float().div_(255)  # (b, 3, H, W)
            tops.append(top5_lists(model(normalize(frames, mean, std))))
        top5 = torch.cat(tops).reshape(v, t, 5)
        pairs = frame_pairs(t, noise, difficulty)
        a = torch.tensor([p[0] for p in pairs], device=x.device)
        b = torch.tensor([p[1] for p in pairs], device=x.device)
        top1 = top5[..., 0]
        flips = (top1[:, a] != top1[:, b]).double()  # (V, pairs)
        dist = top5_pair_distance(top5[:, a], top5[:, b]).double()  # (V, pairs)
        return {"correct": (top1[:, 0] == labels).sum(), "fp_sum": flips.mean(1).sum(),
                "t5d_sum": dist.mean(1).sum(), "flips": flips.sum(), "pairs": torch.tensor(v * len(pairs)),
                "frames": torch.tensor(v * t), "frames_correct": (top1 == labels[:, None]).sum()}

    return Scorer(fn, fields)


def imagenet_p_sources(perturbations: Sequence[str] | None, difficulty: int = 1, data: str | Path | None = None,
                       clean: str | Path | None = None, limit: int | None = None
                       ) -> list[ReleasedVideos | RegeneratedVideos]:
    """One source per perturbation: released videos under `data`, or regenerated from the clean folder `clean`.

    Args:
        perturbations: names (default: the 10 test perturbations).
        difficulty: 1, 2 or 3.
        data: ImageNet-P root (released videos).
        clean: clean validation folder (regenerate on the fly); exactly one of `data` / `clean`.
        limit: evenly spaced subset of this many videos per perturbation.
    """
    from attnprobe import protocol

    if (data is None) == (clean is None):
        raise UserError("pass either --data IMAGENET_P_ROOT (released videos) or --clean VAL_DIR --on-the-fly")
    names = list(perturbations) if perturbations else protocol.test_perturbations()
    for n in names:
        if n not in PERTURBATIONS:
            raise UserError(f"unknown ImageNet-P perturbation {n!r}; choose from: {', '.join(PERTURBATIONS)}")
    if data is not None:
        return [ReleasedVideos(data, n, difficulty, limit=limit) for n in names]
    return [RegeneratedVideos(clean, n, difficulty, limit=limit) for n in names]  # type: ignore[arg-type]


@dataclass
class PResult:
    """One perturbation of one model: FP, FR (when AlexNet has a constant), T5D and counts."""

    perturbation: str
    difficulty: int
    videos: int
    skipped: int
    flip_probability: float
    flip_rate: float | None
    top5_distance: float
    frame0_accuracy: float
    frame_accuracy: float
    regenerated: bool
    cached: bool
    dataset: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _p_result(res: CellResult, regenerated: bool) -> PResult:
    e = res.extra or {}
    n = res.n
    fp = e.get("fp_sum", 0.0) / n if n else math.nan
    alex = flip_rates({res.key.condition: fp})[res.key.condition] if n else None
    return PResult(perturbation=res.key.condition, difficulty=res.key.severity, videos=n, skipped=res.skipped,
                   flip_probability=fp, flip_rate=alex, top5_distance=e.get("t5d_sum", 0.0) / n if n else math.nan,
                   frame0_accuracy=res.correct / n if n else math.nan,
                   frame_accuracy=e.get("frames_correct", 0) / e["frames"] if e.get("frames") else math.nan,
                   regenerated=regenerated, cached=res.cached, dataset=res.key.dataset)


def evaluate_imagenet_p(lm: Any, sources: Sequence[ReleasedVideos | RegeneratedVideos], store: ResultsStore | None,
                        *, batch_size: int = 64, workers: int | None = None, device: torch.device | str | None = None,
                        fresh: bool = False, strict: bool = False, progress: ProgressHook | None = None,
                        autocast_dtype: torch.dtype | None = None) -> list[PResult]:
    """Flip probability, flip rate and top-5 distance of one loaded model on each source.

    Args:
        lm: a `attnprobe.zoo.LoadedModel` (model, name, checkpoint_sha256, preprocessing).
        sources: from `imagenet_p_sources`.
        store: results store (rank 0), or None for an in-memory run.
        batch_size: most frames per forward pass (a loader batch holds `batch_size // frames` videos, at least 1).
        workers, device, fresh, strict, progress, autocast_dtype: as in `attnprobe.evaluate.run_cells`.

    Returns:
        One `PResult` per source, in order.
    """
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    if not sources:
        return []
    cells = []
    hook = progress if progress is not None else ProgressHook()
    for src in sources:
        ds = ImageNetPDataset(src)
        if ds.frame_size != (lm.preprocessing.input_size,) * 2:
            # NOTE: the protocol feeds the 224x224 frames as they are; a model built for another size may refuse
            hook.warn(f"{src.perturbation}: frames are {ds.frame_size[0]}x{ds.frame_size[1]} but {lm.name} expects "
                      f"{lm.preprocessing.input_size}x{lm.preprocessing.input_size}; frames are not resized")
        info = {"regenerated": src.regenerated, "frames": src.expected_frames, "frame_batch": batch_size,
                "folder": src.folder.name}
        if src.regenerated:
            info["note"] = REGENERATED_NOTE
            if src.perturbation in APPROXIMATIONS:
                info["approximation"] = APPROXIMATIONS[src.perturbation]
        cells.append(CellSpec(_key(lm, "imagenet_p", ds.fingerprint, src.perturbation, src.difficulty), ds, info))
    videos_per_batch = max(1, batch_size // max(s.expected_frames for s in sources))
    pre = lm.preprocessing
    results = run_cells(lm.model, cells, store, batch_size=videos_per_batch, workers=workers, device=device,
                        scorer=imagenet_p_scorer(pre.mean, pre.std, batch_size), chunk_size=P_CHUNK_SIZE,
                        fresh=fresh, strict=strict, progress=progress, autocast_dtype=autocast_dtype)
    return [_p_result(r, s.regenerated) for r, s in zip(results, sources)]


def summarize_imagenet_p(results: Sequence[PResult]) -> dict[str, Any]:
    """mFR (when all 10 test perturbations are present) and the unnormalised mean T5D, with the caveats.

    Returns:
        `{"mfr": float | None, "mean_top5_distance": float | None, "perturbations": [...], "notes": [...]}`;
        `mfr` is None (with a note naming what is missing) unless every test perturbation was evaluated.
    """
    from attnprobe import protocol

    tests = protocol.test_perturbations()
    by_name = {r.perturbation: r for r in results}
    missing = [p for p in tests if p not in by_name]
    notes = [T5D_NOTE]
    if any(r.regenerated for r in results):
        notes.append(REGENERATED_NOTE)
    approx = sorted({r.perturbation for r in results if r.regenerated and r.perturbation in APPROXIMATIONS})
    if approx:
        notes.append("approximated: " + "; ".join(f"{p}: {APPROXIMATIONS[p]}" for p in approx))
    diffs = sorted({r.difficulty for r in results})
    if diffs != [1]:
        notes.append("AlexNet flip probabilities are (presumably) for difficulty 1; FR at difficulty "
                     f"{', '.join(map(str, diffs))} uses the same denominators")
    if missing:
        notes.append(f"mFR needs all 10 test perturbations; missing: {', '.join(missing)}")
        mfr_value = t5d = None
    else:
        mfr_value = sum(by_name[p].flip_rate for p in tests) / len(tests)  # type: ignore[misc]
        t5d = sum(by_name[p].top5_distance for p in tests) / len(tests)
    return {"mfr": mfr_value, "mean_top5_distance": t5d, "perturbations": [r.as_dict() for r in results],
            "notes": notes}


# ---------------------------------------------------------------------------------------------------------------
# ImageNet-A / ImageNet-R
# ---------------------------------------------------------------------------------------------------------------
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
                    autocast_dtype: torch.dtype | None = None) -> SubsetResult:
    """Top-1 accuracy of one model on ImageNet-A (`set_name="a"`) or ImageNet-R (`"r"`), 200-class logits.

    Images get the model's standard evaluation transform (resize, centre crop, normalise).
    """
    from attnprobe.data.transforms import eval_transform

    samples, indices = subset_samples(root, set_name)
    task = f"imagenet_{set_name.lower()}"
    ds = ImageFolderDataset(root, eval_transform(lm.preprocessing), samples=samples, limit=limit, kind=task)
    cell = CellSpec(_key(lm, task, ds.fingerprint, task), ds, {"classes": 200, "limit": limit})
    [res] = run_cells(lm.model, [cell], store, batch_size=batch_size, workers=workers, device=device,
                      scorer=restricted_top1_scorer(indices), fresh=fresh, strict=strict, progress=progress,
                      autocast_dtype=autocast_dtype)
    return SubsetResult(set=task, n=res.n, correct=res.correct, skipped=res.skipped,
                        accuracy=res.top1_accuracy, cached=res.cached, dataset=res.key.dataset)


# ---------------------------------------------------------------------------------------------------------------
# PGD
# ---------------------------------------------------------------------------------------------------------------
class _PixelInput:
    """Resize + centre crop + to tensor, *without* normalisation (PGD works in pixel space). Picklable."""

    def __init__(self, pre: Any) -> None:
        self.pre = pre

    def __call__(self, img: Any) -> torch.Tensor:
        from torchvision.transforms import functional as TF

        from attnprobe.data.transforms import resize_and_crop

        return TF.to_tensor(resize_and_crop(img, self.pre))


class _IndexedFolder(ImageFolderDataset):
    """Targets are `[label, sample index]`, so the attack can seed each image's random start by its index."""

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
        x, label, ok = super().__getitem__(i)
        return x, torch.tensor([label, i], dtype=torch.long), ok


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
                 progress: ProgressHook | None = None) -> PGDResult:
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
    """
    if eps < 0 or step < 0 or steps < 0:
        raise UserError("--eps, --step and --steps must be non-negative")
    pre = lm.preprocessing
    samples = scan_class_folders(root, "validation folder")
    ds = _IndexedFolder(root, _PixelInput(pre), samples=samples, limit=limit, kind="imagenet_val")
    cond = pgd_condition(eps, step, steps, seed)
    info = {"eps": eps, "step": step, "steps": steps, "seed": seed, "norm": "linf", "random_start": True,
            "space": "pixel", "limit": limit}
    cell = CellSpec(_key(lm, "pgd", ds.fingerprint, cond), ds, info)
    [res] = run_cells(lm.model, [cell], store, batch_size=batch_size, workers=workers, device=device,
                      scorer=pgd_scorer(pre.mean, pre.std, eps, step, steps, seed), fresh=fresh, strict=strict,
                      progress=progress)
    clean = res.extra.get("clean_correct", 0)
    return PGDResult(n=res.n, skipped=res.skipped, clean_accuracy=clean / res.n if res.n else math.nan,
                     robust_accuracy=res.top1_accuracy, eps=eps, step=step, steps=steps, seed=seed,
                     cached=res.cached, dataset=res.key.dataset, extra=dict(res.extra))
