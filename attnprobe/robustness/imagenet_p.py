"""ImageNet-P formulas: flip probability (FP), top-5 distance (T5D), flip rate (FR) and mean flip rate (mFR).

Pure functions; fractions in, fractions out. They follow the semantics of `ImageNet-P/test.py` in
hendrycks/robustness (the script that produced the published numbers), which the ImageNet-P paper
(Hendrycks & Dietterich, ICLR 2019) defines as

    FP = 1 / (m (n - 1)) * sum_i sum_j 1[f(x_j^(i)) != f(x_{j-1}^(i))]

averaged per video first, then over the `m` videos.

**Which frames are compared ("difficulty").** A video has `n` frames `0 .. n-1`.

* Noise perturbations (`gaussian_noise`, `shot_noise`, `speckle_noise`; the official script tests
  `"noise" in name`): every frame `j >= 1` is compared with frame 0 (the clean image). The difficulty does
  *not* change the pairing; it selects a different set of videos (folders `<name>_2`, `<name>_3`, generated
  with stronger noise).
* All other perturbations: the frames are split into `d = difficulty` interleaved *chains*
  `c, c + d, c + 2d, ...` for `c = 0 .. d-1`, and each frame is compared with the frame `d` before it in its
  chain. That gives `n - d` pairs per video. The videos are the same for every difficulty.

Worked example, 7 frames with top-1 predictions `[3, 3, 5, 5, 3, 5, 5]`, not noise:

* `d = 1`: pairs (0,1) (1,2) (2,3) (3,4) (4,5) (5,6) → flips 0,1,0,1,1,0 → FP = 3/6.
* `d = 2`: chains [0,2,4,6] and [1,3,5]; pairs (0,2) (2,4) (4,6) (1,3) (3,5) → flips 1,1,1,1,0 → FP = 4/5.
* `d = 3`: chains [0,3,6] [1,4] [2,5]; pairs (0,3) (3,6) (1,4) (2,5) → flips 1,0,0,0 → FP = 1/4.
* noise (any `d`): pairs (0,1) .. (0,6) → flips 0,1,1,0,1,1 → FP = 4/6.

**Top-5 distance.** For one pair of frames (A, B), let `σ(i)` be the rank in B (1 = most likely) of the class
that has rank `i` in A. The ImageNet-P paper's top-5 distance is

    d(A, B) = sum_{i=1..5} sum_{j = min(i, σ(i)) + 1 .. max(i, σ(i))} 1[1 <= j - 1 <= 5]

which simplifies to `sum_{i=1..5} |i - min(σ(i), 6)|`: each of A's top-5 classes contributes how far it
moved, where any rank beyond 5 counts as 6. Identical top-5 lists give 0; five classes that all leave the
top-5 give `5+4+3+2+1 = 15`; swapping ranks 1 and 2 gives 2. Ranks are ordinal: ties go to the lower class index first
(`scipy.stats.rankdata(-logits, method="ordinal")` in the official script). T5D uses the same pairs as FP and
is also averaged per video first.

**Normalisation.** FR_p = FP_p / FP_p(AlexNet) with the constants in `protocol/alexnet_fr.json`; mFR is the
mean FR over the 10 test perturbations. The AlexNet constants presumably belong to difficulty 1 (unverified).
No AlexNet top-5 distances are published, so T5D is reported unnormalised (`mean_top5_distance`), never as an
"mT5D" relative to AlexNet.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from attnprobe.errors import UserError

__all__ = [
    "NOISE_PERTURBATIONS",
    "is_noise_perturbation",
    "frame_pairs",
    "video_flip_probabilities",
    "flip_probability",
    "top5_lists",
    "top5_pair_distance",
    "video_top5_distances",
    "top5_distance",
    "flip_rates",
    "mfr",
    "mean_top5_distance",
]

#: Perturbations whose frames are all compared with frame 0 (the clean image).
NOISE_PERTURBATIONS: tuple[str, ...] = ("gaussian_noise", "shot_noise", "speckle_noise")


def is_noise_perturbation(name: str) -> bool:
    """Whether `name` pairs every frame with frame 0 (the official test: `"noise" in name`)."""
    return "noise" in name


def _check_difficulty(difficulty: int) -> int:
    if int(difficulty) not in (1, 2, 3) or int(difficulty) != difficulty:
        raise UserError(f"difficulty must be 1, 2 or 3, got {difficulty!r}; pass --difficulty 1, 2 or 3")
    return int(difficulty)


def frame_pairs(num_frames: int, noise: bool, difficulty: int = 1) -> list[tuple[int, int]]:
    """The (earlier, later) frame pairs compared in one video, in the official order.

    Args:
        num_frames: frames per video.
        noise: noise perturbation (compare with frame 0) or not (compare along chains).
        difficulty: chain step for non-noise perturbations (1, 2 or 3); ignored for noise.

    Returns:
        `[(0, 1), (0, 2), ...]` for noise; chain by chain `[(c, c + d), (c + d, c + 2d), ...]` otherwise.
    """
    d = _check_difficulty(difficulty)
    if noise:
        return [(0, j) for j in range(1, num_frames)]
    pairs = []
    for start in range(min(d, num_frames)):
        chain = list(range(start, num_frames, d))
        pairs.extend(zip(chain[:-1], chain[1:]))
    return pairs


def _pair_index(num_frames: int, noise: bool, difficulty: int) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = frame_pairs(num_frames, noise, difficulty)
    if not pairs:
        raise UserError(f"a video needs more than {1 if noise else difficulty} frame(s) to compare, got {num_frames}"
                        f"; check the ImageNet-P files or lower --difficulty")
    a, b = zip(*pairs)
    return torch.tensor(a), torch.tensor(b)


def _as_2d_long(predictions: Any) -> torch.Tensor:
    preds = torch.as_tensor(predictions)
    if preds.dim() == 1:
        preds = preds.unsqueeze(0)
    if preds.dim() != 2:
        raise ValueError(f"predictions must be (videos, frames), got shape {tuple(preds.shape)}")
    return preds.long()


def video_flip_probabilities(predictions: Any, noise: bool, difficulty: int = 1) -> torch.Tensor:
    """Flip probability of each video.

    Args:
        predictions: (videos, frames) top-1 classes (tensor, array or nested lists); a 1-D input is one video.
        noise: noise perturbation (pair with frame 0) or not (pair along chains).
        difficulty: 1, 2 or 3 (see the module docstring).

    Returns:
        (videos,) float64 tensor: the fraction of compared pairs whose top-1 class differs.
    """
    preds = _as_2d_long(predictions)
    a, b = _pair_index(preds.shape[1], noise, difficulty)
    return (preds[:, a] != preds[:, b]).double().mean(dim=1)


def flip_probability(predictions: Any, noise: bool, difficulty: int = 1) -> float:
    """Flip probability FP of one perturbation: per-video flip fractions averaged over videos.

    Args:
        predictions: (videos, frames) top-1 classes.
        noise: noise perturbation (pair with frame 0) or not (pair along chains).
        difficulty: 1, 2 or 3.

    Returns:
        FP as a fraction in [0, 1].
    """
    return float(video_flip_probabilities(predictions, noise, difficulty).mean())


def top5_lists(logits: torch.Tensor) -> torch.Tensor:
    """The five most likely classes of each frame, most likely first, ties to the lower class index.

    Args:
        logits: (..., classes) scores; at least 5 classes.

    Returns:
        (..., 5) long tensor of class indices.
    """
    if logits.shape[-1] < 5:
        raise ValueError(f"top-5 distance needs at least 5 classes, got {logits.shape[-1]}")
    # NOTE: a stable descending sort reproduces rankdata(-x, method="ordinal"); topk has no tie guarantee.
    return torch.sort(logits.float(), dim=-1, descending=True, stable=True).indices[..., :5]


def top5_pair_distance(top5_a: torch.Tensor, top5_b: torch.Tensor) -> torch.Tensor:
    """ImageNet-P top-5 distance between frames A and B, given their top-5 lists.

    Args:
        top5_a: (..., 5) class indices of frame A, rank 1 first.
        top5_b: (..., 5) class indices of frame B, rank 1 first.

    Returns:
        (...) long tensor: `sum_i |i - min(σ(i), 6)|` with σ(i) the rank in B of A's rank-i class.
    """
    match = top5_a.unsqueeze(-1) == top5_b.unsqueeze(-2)  # (..., 5, 5): A's rank i vs B's rank j
    ranks = torch.arange(1, 6, device=top5_a.device)
    # rank in B capped at 6: the matching position if the class is in B's top-5, else 6
    sigma = torch.where(match.any(-1), (match.long() * ranks).sum(-1), torch.full_like(ranks, 6))
    return (ranks - sigma).abs().sum(-1)


def video_top5_distances(logits_or_top5: torch.Tensor, noise: bool, difficulty: int = 1) -> torch.Tensor:
    """Mean top-5 distance of each video over the same frame pairs as the flip probability.

    Args:
        logits_or_top5: (videos, frames, classes) logits, or (videos, frames, 5) top-5 lists from `top5_lists`
            (a long tensor whose last dimension is 5).
        noise: noise perturbation (pair with frame 0) or not (pair along chains).
        difficulty: 1, 2 or 3.

    Returns:
        (videos,) float64 tensor.
    """
    x = torch.as_tensor(logits_or_top5)
    if x.dim() == 2:
        x = x.unsqueeze(0)
    if x.dim() != 3:
        raise ValueError(f"expected (videos, frames, classes), got shape {tuple(x.shape)}")
    top5 = x.long() if (x.shape[-1] == 5 and not x.is_floating_point()) else top5_lists(x)
    a, b = _pair_index(top5.shape[1], noise, difficulty)
    return top5_pair_distance(top5[:, a], top5[:, b]).double().mean(dim=1)


def top5_distance(logits: torch.Tensor, noise: bool, difficulty: int = 1) -> float:
    """Top-5 distance T5D of one perturbation (ImageNet-P paper), averaged per video, then over videos.

    Args:
        logits: (videos, frames, classes) scores.
        noise: noise perturbation (pair with frame 0) or not (pair along chains).
        difficulty: 1, 2 or 3.

    Returns:
        T5D, unnormalised (0 = identical top-5 lists; 15 = five new classes at every compared pair).
    """
    return float(video_top5_distances(logits, noise, difficulty).mean())


def _alexnet_fp() -> dict[str, float]:
    from attnprobe import protocol

    return protocol.alexnet_flip_probabilities()


def flip_rates(flip_probs: Mapping[str, float]) -> dict[str, float]:
    """FR_p = FP_p / FP_p(AlexNet) for every perturbation in `flip_probs` that has an AlexNet constant.

    Args:
        flip_probs: perturbation name → flip probability (fraction).

    Returns:
        perturbation name → flip rate (1.0 = as unstable as AlexNet).
    """
    alex = _alexnet_fp()
    unknown = sorted(set(flip_probs) - set(alex))
    if unknown:
        raise UserError(f"no AlexNet flip probability for {', '.join(unknown)}; choose among: {', '.join(alex)}")
    return {p: float(fp) / alex[p] for p, fp in flip_probs.items()}


def mfr(flip_probs: Mapping[str, float], perturbations: Sequence[str] | None = None) -> float:
    """Mean flip rate: mean over the 10 test perturbations of FP / AlexNet FP.

    Args:
        flip_probs: perturbation name → flip probability; must contain every test perturbation (extra
            perturbations such as the validation ones are ignored).
        perturbations: override the perturbations averaged over (default: the 10 test perturbations).

    Returns:
        mFR as a fraction (AlexNet = 1.0; papers print it ×100).
    """
    from attnprobe import protocol

    names = list(perturbations) if perturbations is not None else protocol.test_perturbations()
    missing = [p for p in names if p not in flip_probs]
    if missing:
        raise UserError(f"mFR needs all {len(names)} test perturbations; missing: {', '.join(missing)}; "
                        f"evaluate them with `attnprobe mfr --perturbation {' --perturbation '.join(missing)}`")
    rates = flip_rates({p: flip_probs[p] for p in names})
    return sum(rates.values()) / len(rates)


def mean_top5_distance(top5_distances: Mapping[str, float], perturbations: Sequence[str] | None = None) -> float:
    """Unnormalised mean top-5 distance over the test perturbations.

    NOTE: not the ImageNet-P paper's mT5D, which divides by AlexNet's T5D per perturbation; those AlexNet
    values are not published anywhere we could find, so this is a plain mean and must be labelled as such.

    Args:
        top5_distances: perturbation name → T5D.
        perturbations: perturbations averaged over (default: the 10 test perturbations).

    Returns:
        The plain mean of T5D.
    """
    from attnprobe import protocol

    names = list(perturbations) if perturbations is not None else protocol.test_perturbations()
    missing = [p for p in names if p not in top5_distances]
    if missing:
        raise UserError(f"mean top-5 distance needs all {len(names)} perturbations; missing: {', '.join(missing)}")
    return sum(float(top5_distances[p]) for p in names) / len(names)
