"""Noise corruptions: gaussian, shot (Poisson), impulse (salt and pepper), speckle. Same in both recipes.

Each takes the batch as floats in [0, 1], (B, 3, H, W), and returns values on the 0-255 scale (clipped and
truncated to uint8 by the caller) or uint8 directly.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from attnprobe.corruptions import params as P
from attnprobe.corruptions.rng import ImageRNG

__all__ = ["gaussian_noise", "impulse_noise", "shot_noise", "speckle_noise"]


def gaussian_noise(x: torch.Tensor, severity: int, rng: ImageRNG) -> torch.Tensor:
    """x + N(0, std), std 0.08 .. 0.38 of the range."""
    noise = rng.normal(x.shape[1:], std=P.GAUSSIAN_NOISE_STD[severity - 1])
    return x.add_(noise).clamp_(0, 1).mul_(255)


def speckle_noise(x: torch.Tensor, severity: int, rng: ImageRNG) -> torch.Tensor:
    """x + x * N(0, std), std 0.15 .. 0.6."""
    noise = rng.normal(x.shape[1:], std=P.SPECKLE_NOISE_STD[severity - 1])
    return x.addcmul_(x, noise).clamp_(0, 1).mul_(255)


@lru_cache(maxsize=8)
def _poisson_cdf_table(photons: int) -> tuple[np.ndarray, int]:
    """Cumulative Poisson probabilities of each of the 256 input levels (rate = level / 255 * photons), offset.

    Row v holds P(K <= k) for k = 0 .. K-1, shifted by 2v so that all rows form one sorted vector (float64): an
    inverse-CDF draw of every pixel is then a single `searchsorted`. The last column is exactly 1.
    """
    rates = np.arange(256, dtype=np.float64) / 255.0 * photons
    kmax = int(photons + 12 * math.sqrt(photons) + 20)
    k = np.arange(kmax, dtype=np.float64)
    from scipy.special import gammaln

    with np.errstate(divide="ignore"):
        logpmf = k[None, :] * np.log(rates[:, None]) - rates[:, None] - gammaln(k + 1)[None, :]
    logpmf[0, :] = -np.inf
    logpmf[0, 0] = 0.0  # rate 0: always 0 photons
    cdf = np.minimum(np.cumsum(np.exp(logpmf), axis=1), 1.0)
    cdf[:, -1] = 1.0
    return cdf + 2.0 * np.arange(256, dtype=np.float64)[:, None], kmax


def shot_noise(x: torch.Tensor, severity: int, rng: ImageRNG, x_u8: torch.Tensor) -> torch.Tensor:
    """Poisson(x * photons) / photons, photons 60 .. 3, drawn by inverting the CDF of each input level."""
    photons = P.SHOT_NOISE_PHOTONS[severity - 1]
    table, kmax = _poisson_cdf_table(photons)
    flat = torch.from_numpy(table).to(x.device).reshape(-1)  # (256 * kmax,)
    u = rng.uniform(x.shape[1:], dtype=torch.float64)
    level = x_u8.to(torch.int64)
    pos = torch.searchsorted(flat, u.add_(level.to(torch.float64) * 2.0))
    counts = (pos - level * kmax).to(torch.float32)
    return counts.div_(float(photons)).clamp_(0, 1).mul_(255)


def impulse_noise(x_u8: torch.Tensor, severity: int, rng: ImageRNG) -> torch.Tensor:
    """Each value becomes 0 with probability amount/2 and 255 with probability amount/2 (uint8 out).

    skimage's salt and pepper flips each value with probability `amount` and salts half of the flipped ones:
    one uniform per value gives the same three outcomes with the same probabilities.
    """
    amount = P.IMPULSE_NOISE_AMOUNT[severity - 1]
    u = rng.uniform(x_u8.shape[1:])
    out = x_u8.clone()
    out[u < amount] = 255
    out[u < amount / 2] = 0
    return out
