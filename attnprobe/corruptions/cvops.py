"""The OpenCV operations of spatter, on batches of single-channel images (B, H, W), with OpenCV's rounding.

Each function matches its OpenCV counterpart pixel for pixel on 8-bit inputs (checked in the tests):
`canny` (Canny, aperture 3, L1 gradient), `distance_l2_mask5` (distanceTransform DIST_L2 with the 5x5 mask),
`box3` (blur with a 3x3 box, BORDER_REFLECT_101), `equalize_hist`, `filter3x3_u8` (filter2D to CV_8U).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from attnprobe.corruptions.filters import pad2d

__all__ = ["box3", "canny", "distance_l2_mask5", "equalize_hist", "filter3x3_u8"]

_CANNY_SHIFT = 15
_TG22 = int(0.4142135623730950488016887242097 * (1 << _CANNY_SHIFT) + 0.5)


def _shift(p: torch.Tensor, dy: int, dx: int, h: int, w: int) -> torch.Tensor:
    """The (H, W) window of a 1-pixel-padded (B, H+2, W+2) tensor at offset (dy, dx) in -1..1."""
    return p[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]


def canny(img: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """OpenCV's Canny edge map (0 or 255, uint8) of uint8 (B, H, W): 3x3 Sobel (border replicated), L1 magnitude,
    non-maximum suppression in 4 directions, hysteresis with 8-connectivity."""
    b, h, w = img.shape
    p = pad2d(img.to(torch.int32), 1, 1, 1, 1, "nearest")
    gx = (_shift(p, -1, 1, h, w) - _shift(p, -1, -1, h, w)) + 2 * (_shift(p, 0, 1, h, w) - _shift(p, 0, -1, h, w)) \
        + (_shift(p, 1, 1, h, w) - _shift(p, 1, -1, h, w))
    gy = (_shift(p, 1, -1, h, w) - _shift(p, -1, -1, h, w)) + 2 * (_shift(p, 1, 0, h, w) - _shift(p, -1, 0, h, w)) \
        + (_shift(p, 1, 1, h, w) - _shift(p, -1, 1, h, w))
    mag = gx.abs() + gy.abs()
    m = F.pad(mag, (1, 1, 1, 1))  # NOTE: magnitudes outside the image count as 0

    ax, ay = gx.abs(), gy.abs() << _CANNY_SHIFT
    tg22 = ax * _TG22
    tg67 = tg22 + (ax << (_CANNY_SHIFT + 1))
    horizontal = ay < tg22
    vertical = ~horizontal & (ay > tg67)
    diagonal = ~horizontal & ~vertical
    s_neg = (gx < 0) != (gy < 0)  # gradient components of opposite signs
    keep_h = (mag > _shift(m, 0, -1, h, w)) & (mag >= _shift(m, 0, 1, h, w))
    keep_v = (mag > _shift(m, -1, 0, h, w)) & (mag >= _shift(m, 1, 0, h, w))
    keep_d = torch.where(s_neg, (mag > _shift(m, -1, 1, h, w)) & (mag > _shift(m, 1, -1, h, w)),
                         (mag > _shift(m, -1, -1, h, w)) & (mag > _shift(m, 1, 1, h, w)))
    local_max = (horizontal & keep_h) | (vertical & keep_v) | (diagonal & keep_d)
    candidate = local_max & (mag > int(np.floor(low)))
    edges = candidate & (mag > int(np.floor(high)))
    grown = edges
    while True:  # hysteresis: grow the strong edges through 8-connected candidates
        p = torch.nn.functional.pad(grown, (1, 1, 1, 1))
        near = grown.clone()
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if dy or dx:
                    near |= _shift(p, dy, dx, h, w)
        nxt = near & candidate | grown
        if torch.equal(nxt, grown):
            break
        grown = nxt
    return grown.to(torch.uint8) * 255


_D_HV, _D_DIAG, _D_KNIGHT = (float(np.float32(c)) for c in (1.0, 1.4, 2.1969))


def distance_l2_mask5(img: torch.Tensor, cap: float) -> torch.Tensor:
    """OpenCV's distanceTransform(DIST_L2, 5) of uint8 (B, H, W), capped at `cap` (threshold TRUNC), float32.

    The distance of a non-zero pixel to the nearest zero pixel along 8-neighbour and knight moves costing 1, 1.4
    and 2.1969 (OpenCV's 5x5 mask), never leaving the image, by OpenCV's two raster passes (top-down with the upper
    half of the mask, bottom-up with the lower half). Each row is one vectorised step: the moves from the two rows
    before it, then the moves along the row (cost 1 per pixel) as a running minimum of d[x'] + (x - x').
    """
    b, h, w = img.shape
    big = 1e6
    d = torch.where(img == 0, 0.0, big).to(torch.float64)
    steps = torch.arange(w, device=img.device, dtype=torch.float64)
    one_back = torch.tensor([_D_KNIGHT, _D_DIAG, _D_HV, _D_DIAG, _D_KNIGHT], dtype=torch.float64, device=img.device)
    two_back = torch.tensor([_D_KNIGHT, big, _D_KNIGHT], dtype=torch.float64, device=img.device)
    padded = torch.nn.functional.pad(d, (2, 2), value=big)  # (B, H, W + 4); rows are written back as they settle
    for rows, sign in ((range(h), 1), (range(h - 1, -1, -1), -1)):
        for y in rows:
            cand = padded[:, y, 2:2 + w]
            if 0 <= y - sign < h:
                near = padded[:, y - sign].unfold(1, 5, 1)  # (B, W, 5): x-2 .. x+2 of the row before
                cand = torch.minimum(cand, (near + one_back).amin(-1))
            if 0 <= y - 2 * sign < h:
                far = padded[:, y - 2 * sign, 1:w + 3].unfold(1, 3, 1)  # (B, W, 3): x-1 .. x+1 two rows before
                cand = torch.minimum(cand, (far + two_back).amin(-1))
            if sign > 0:  # left to right: d[x] = min over x' <= x of d[x'] + (x - x')
                cand = torch.cummin(cand - steps, dim=1).values + steps
            else:  # right to left
                cand = torch.cummin((cand + steps).flip(1), dim=1).values.flip(1) - steps
            padded[:, y, 2:2 + w] = cand
    d = padded[..., 2:2 + w]
    return d.to(torch.float32).clamp_(max=float(cap))


def box3(img: torch.Tensor) -> torch.Tensor:
    """OpenCV blur(ksize=(3, 3)) (mirrored borders): float32 in/out (sum in float64), or uint8 in/out (rounded)."""
    b, h, w = img.shape
    wide = img.to(torch.float64) if img.dtype != torch.uint8 else img.to(torch.int32)
    p = pad2d(wide, 1, 1, 1, 1, "mirror")
    total = sum(_shift(p, dy, dx, h, w) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
    if img.dtype == torch.uint8:
        return torch.round(total.to(torch.float64) / 9).clamp_(0, 255).to(torch.uint8)
    return (total * (1.0 / 9)).to(torch.float32)


def equalize_hist(img: torch.Tensor) -> torch.Tensor:
    """OpenCV equalizeHist of uint8 (B, H, W), per image."""
    b, h, w = img.shape
    flat = img.reshape(b, -1).to(torch.int64)
    hist = torch.zeros((b, 256), dtype=torch.int64, device=img.device).scatter_add_(1, flat, torch.ones_like(flat))
    first = (hist > 0).to(torch.int64).argmax(1)  # (B,) lowest level present
    lowest = hist.gather(1, first[:, None])[:, 0]
    total = h * w
    scale = torch.tensor(255.0, dtype=torch.float32) / (total - lowest).clamp(min=1).to(torch.float32)  # (B,)
    cum = hist.cumsum(1) - lowest[:, None]  # pixels above the lowest level, up to each level
    lut = torch.round(cum.to(torch.float32) * scale[:, None]).clamp_(0, 255)
    levels = torch.arange(256, device=img.device)[None]
    lut = torch.where(levels <= first[:, None], torch.zeros_like(lut), lut).to(torch.uint8)
    out = lut.gather(1, flat).reshape(b, h, w)
    single = (lowest == total)[:, None, None]  # one level only: OpenCV fills the image with that level
    return torch.where(single, first[:, None, None].to(torch.uint8).expand(b, h, w), out)


def filter3x3_u8(img: torch.Tensor, kernel: np.ndarray) -> torch.Tensor:
    """OpenCV filter2D(img, CV_8U, kernel) with an integer 3x3 kernel (a correlation), mirrored borders."""
    b, h, w = img.shape
    p = pad2d(img.to(torch.int32), 1, 1, 1, 1, "mirror")
    total = sum(int(kernel[dy + 1, dx + 1]) * _shift(p, dy, dx, h, w)
                for dy in (-1, 0, 1) for dx in (-1, 0, 1) if kernel[dy + 1, dx + 1] != 0)
    return total.clamp_(0, 255).to(torch.uint8)
