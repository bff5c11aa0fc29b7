"""The ImageNet-P benchmark (task "imagenet_p"): flip probability, flip rate, mFR and top-5 distance.

One sample is one video (condition = perturbation, severity = difficulty); its frames go through the model in
batches of at most `frame_batch` frames. Each chunk stores the sums `fp_sum` (per-video flip probabilities),
`t5d_sum`, `flips`, `pairs`, `frames`, `frames_correct`; FP = `fp_sum / n` can be recomputed from the store.
`correct` counts videos whose frame 0 is classified right. Videos come released (`.mp4`) or regenerated from clean
images (`attnprobe.data.imagenet_p_generate`); the formulas live in `attnprobe.robustness.imagenet_p`.

    sources = imagenet_p_sources(None, difficulty=1, data="/data/imagenet-p")
    results = evaluate_imagenet_p(loaded, sources, store)          # one PResult per perturbation
    summarize_imagenet_p(results)["mfr"]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attnprobe.attacks import normalize
from attnprobe.benchmarks.common import cell_key
from attnprobe.data.imagenet_p import ImageNetPDataset, RegeneratedVideos, ReleasedVideos
from attnprobe.data.imagenet_p_generate import APPROXIMATIONS, PERTURBATIONS
from attnprobe.engine import CellResult, CellSpec, ProgressHook, Scorer, run_cells
from attnprobe.errors import UserError
from attnprobe.robustness.imagenet_p import flip_rates, frame_pairs, top5_lists, top5_pair_distance
from attnprobe.store import ResultsStore

__all__ = ["P_CHUNK_SIZE", "REGENERATED_NOTE", "T5D_NOTE", "PResult", "evaluate_imagenet_p", "imagenet_p_scorer",
           "imagenet_p_sources", "summarize_imagenet_p"]


#: Videos per committed chunk (a video is ~31 images, so this is ~6k forward passes).
P_CHUNK_SIZE = 200

REGENERATED_NOTE = ("regenerated ImageNet-P: sequences generated on the fly from clean images (own random draws, "
                    "no x264 compression); not the released videos, so numbers are close to, not equal to, "
                    "published mFR")
T5D_NOTE = ("mean top-5 distance is unnormalised: no AlexNet top-5 distances are published, so the paper's "
            "AlexNet-relative mT5D cannot be computed")


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
                        **run_kw: Any) -> list[PResult]:
    """Flip probability, flip rate and top-5 distance of one loaded model on each source.

    Args:
        lm: a `attnprobe.zoo.LoadedModel` (model, name, checkpoint_sha256, preprocessing).
        sources: from `imagenet_p_sources`.
        store: results store (rank 0), or None for an in-memory run.
        batch_size: most frames per forward pass (a loader batch holds `batch_size // frames` videos, at least 1).
        workers, device, fresh, strict, progress: as in `attnprobe.engine.run_cells`.
        run_kw: passed to `run_cells` (precision, channels_last, compile); videos are not JPEG files, so they are
            always decoded in the loader workers.

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
        # NOTE: source, root and limit let the report keep released, regenerated and --limit cells apart
        root = src.clean if src.regenerated else src.root  # type: ignore[union-attr]
        info = {"regenerated": src.regenerated, "source": "regenerated" if src.regenerated else "released",
                "root": str(Path(root).resolve()), "limit": src.limit, "frames": src.expected_frames,
                "frame_batch": batch_size, "folder": src.folder.name}
        if src.regenerated:
            info["note"] = REGENERATED_NOTE
            if src.perturbation in APPROXIMATIONS:
                info["approximation"] = APPROXIMATIONS[src.perturbation]
        cells.append(CellSpec(cell_key(lm, "imagenet_p", ds.fingerprint, src.perturbation, src.difficulty), ds, info))
    videos_per_batch = max(1, batch_size // max(s.expected_frames for s in sources))
    pre = lm.preprocessing
    results = run_cells(lm.model, cells, store, batch_size=videos_per_batch, workers=workers, device=device,
                        scorer=imagenet_p_scorer(pre.mean, pre.std, batch_size), chunk_size=P_CHUNK_SIZE,
                        fresh=fresh, strict=strict, progress=progress, **run_kw)
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
