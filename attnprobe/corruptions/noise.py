"""Noise corruptions: gaussian, shot (Poisson), impulse (salt and pepper), speckle. Same in both recipes.

Each takes the batch as floats in [0, 1], (B, 3, H, W), and returns values on the 0-255 scale (clipped and
truncated to uint8 by the caller) or uint8 directly.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from attnprobe.corruptions import params as P
from attnprobe.corruptions.loops_pixel import add_noise_cpu, impulse_noise_cpu, shot_noise_cpu
from attnprobe.corruptions.rng import ImageRNG

__all__ = ["gaussian_noise", "impulse_noise", "shot_noise", "speckle_noise"]


def gaussian_noise(x_u8: torch.Tensor, severity: int, rng: ImageRNG) -> torch.Tensor:
    """x + N(0, std), std 0.08 .. 0.38 of the range."""
    noise = rng.normal(x_u8.shape[1:], std=P.GAUSSIAN_NOISE_STD[severity - 1])
    if x_u8.device.type == "cpu" and (out := add_noise_cpu(x_u8.numpy(), noise.numpy())) is not None:
        return torch.from_numpy(out)
    return x_u8.to(torch.float32).div_(255).add_(noise).clamp_(0, 1).mul_(255)


def speckle_noise(x: torch.Tensor, severity: int, rng: ImageRNG) -> torch.Tensor:
    """x + x * N(0, std), std 0.15 .. 0.6."""
    noise = rng.normal(x.shape[1:], std=P.SPECKLE_NOISE_STD[severity - 1])
    return x.addcmul_(x, noise).clamp_(0, 1).mul_(255)


_BUCKETS = 128  # NOTE: small tables stay in cache; the gathers dominate the cost


@lru_cache(maxsize=8)
def _poisson_guide(photons: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse-CDF guide tables of min(Poisson(level / 255 * photons), photons) for the 256 input levels.

    Counts >= photons all give 255, so only the CDF values F(0) .. F(photons - 1) (the thresholds) matter: the
    count is the number of thresholds below u. The unit interval is cut into buckets per level; a bucket holding
    at most one threshold gives the count as ``base + (u >= threshold)``; buckets with more (in the tails) are
    flagged with base -1 and resolved by a binary search over the thresholds.

    Returns:
        base (256 * buckets,) int32 (-1: search), threshold (256 * buckets,) float32, and the thresholds
        (256 * photons,) float64, offset by 2 * level so that all rows form one sorted vector.
    """
    from scipy.stats import poisson

    rates = np.arange(256, dtype=np.float64) / 255.0 * photons
    cdf = poisson.cdf(np.arange(photons)[None, :], rates[:, None])  # (256, photons)
    cdf[0, :] = 1.0  # rate 0: always 0 photons
    starts = np.arange(_BUCKETS, dtype=np.float64) / _BUCKETS
    below_start = (cdf[:, None, :] <= starts[None, :, None]).sum(-1)  # (256, M) thresholds <= bucket start
    below_end = (cdf[:, None, :] < (starts + 1.0 / _BUCKETS)[None, :, None]).sum(-1)
    padded = np.concatenate([cdf, np.full((256, 1), 2.0)], 1)
    threshold = np.take_along_axis(padded, np.minimum(below_start, photons), 1)
    base = np.where(below_end - below_start >= 2, -1, below_start)
    offset = cdf + 2.0 * np.arange(256, dtype=np.float64)[:, None]
    return base.reshape(-1).astype(np.int32), threshold.reshape(-1).astype(np.float32), offset.reshape(-1)


@lru_cache(maxsize=8)
def _count_levels(photons: int) -> torch.Tensor:
    """uint8 output of each photon count 0 .. photons: the float32 steps of the 0-255 path, then truncation."""
    counts = torch.arange(photons + 1, dtype=torch.int32)
    return counts.to(torch.float32).div_(float(photons)).clamp_(0, 1).mul_(255).to(torch.uint8)


def shot_noise(x_u8: torch.Tensor, severity: int, rng: ImageRNG) -> torch.Tensor:
    """Poisson(x * photons) / photons, photons 60 .. 3: inverse-CDF draws from guide tables (uint8 out)."""
    photons = P.SHOT_NOISE_PHOTONS[severity - 1]
    u = rng.uniform(x_u8.shape[1:]).reshape(-1)  # (B * 3 * H * W,)
    if x_u8.device.type == "cpu":
        b = len(x_u8)
        out = shot_noise_cpu(x_u8.contiguous().numpy().reshape(b, -1), u.numpy().reshape(b, -1),
                             _poisson_guide(photons), photons, _BUCKETS, _count_levels(photons).numpy())
        if out is not None:
            return torch.from_numpy(out).reshape(x_u8.shape)
    base, threshold, offset = (torch.from_numpy(a).to(x_u8.device) for a in _poisson_guide(photons))
    level = x_u8.reshape(-1).to(torch.int32)
    bucket = (u * _BUCKETS).to(torch.int32).add_(level * _BUCKETS)
    counts = base.index_select(0, bucket)
    hard = (counts < 0).nonzero().squeeze(1)
    counts.add_(u >= threshold.index_select(0, bucket))
    if hard.numel():
        lv = level[hard].to(torch.int64)
        pos = torch.searchsorted(offset, u[hard].to(torch.float64) + 2.0 * lv.to(torch.float64), right=True)
        counts[hard] = (pos - lv * photons).to(torch.int32)
    # NOTE: counts above `photons` clip to 255 as in the float path
    lut = _count_levels(photons).to(x_u8.device)
    return lut.index_select(0, counts.clamp_(max=photons)).reshape(x_u8.shape)


def impulse_noise(x_u8: torch.Tensor, severity: int, rng: ImageRNG) -> torch.Tensor:
    """Each value becomes 0 with probability amount/2 and 255 with probability amount/2 (uint8 out).

    skimage's salt and pepper flips each value with probability `amount` and salts half of the flipped ones:
    one uniform per value gives the same three outcomes with the same probabilities.
    """
    amount = P.IMPULSE_NOISE_AMOUNT[severity - 1]
    u = rng.uniform(x_u8.shape[1:])
    if x_u8.device.type == "cpu" and (out := impulse_noise_cpu(x_u8.numpy(), u.numpy(), amount)) is not None:
        return torch.from_numpy(out)
    out = x_u8.clone()
    out[u < amount] = 255
    out[u < amount / 2] = 0
    return out
