"""Spatter: water drops (severities 1-3) or mud (4-5) from a smoothed, thresholded normal field. Same in both
recipes. Floats in [0, 1], (B, 3, H, W) in; the 0-255 scale out."""

from __future__ import annotations

import numpy as np
import torch

from attnprobe.corruptions import cvops
from attnprobe.corruptions import params as P
from attnprobe.corruptions.filters import gaussian_filter
from attnprobe.corruptions.rng import ImageRNG

__all__ = ["spatter"]

_WATER = torch.tensor([175.0, 238.0, 238.0]) / 255  # pale turquoise (applied to R, G, B as the reference does)
_MUD = torch.tensor([63.0, 42.0, 20.0]) / 255
_EMBOSS = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])


def _water_mask(liquid: torch.Tensor) -> torch.Tensor:
    """The drops' intensity (B, H, W): liquid level times a shading made from the distance to the drop edges."""
    level = (liquid * 255).floor_().clamp_(0, 255).to(torch.uint8)  # NOTE: the reference casts to 8 bits
    edges = cvops.canny(level, 50, 150)
    dist = cvops.distance_l2_mask5(255 - edges, 20.0)
    dist = cvops.box3(dist).floor_().to(torch.uint8)  # float32 -> uint8 truncates, as NumPy's astype
    dist = cvops.equalize_hist(dist)
    dist = cvops.filter3x3_u8(dist, _EMBOSS)
    dist = cvops.box3(dist).to(torch.float32)
    return level.to(torch.float32) * dist


def spatter(x: torch.Tensor, severity: int, rng: ImageRNG) -> torch.Tensor:
    """Water drops (turquoise highlights with embossed edges) or mud (brown blobs covering the image)."""
    loc, scale, sigma, threshold, strength, mud = P.SPATTER[severity - 1]
    b, _, h, w = x.shape
    liquid = rng.normal((h, w), mean=loc, std=scale)  # (B, H, W)
    liquid = gaussian_filter(liquid, float(sigma), "nearest")
    liquid = liquid.masked_fill_(liquid < threshold, 0.0)
    if not mud:
        m = _water_mask(liquid)
        peak = m.reshape(b, -1).amax(1)[:, None, None]
        # NOTE: no drop at all leaves 0/0 in the reference (NaN pixels); here the image stays clean.
        m = torch.where(peak > 0, m / peak.clamp(min=1e-12), torch.zeros_like(m)) * strength
        return x.add_(m[:, None] * _WATER.to(x.device)[None, :, None, None]).clamp_(0, 1).mul_(255)
    m = (liquid > threshold).to(torch.float32)
    m = gaussian_filter(m, float(strength), "nearest")
    m = m.masked_fill_(m < 0.8, 0.0)[:, None]  # (B, 1, H, W)
    return x.mul_(1 - m).add_(m * _MUD.to(x.device)[None, :, None, None]).clamp_(0, 1).mul_(255)
