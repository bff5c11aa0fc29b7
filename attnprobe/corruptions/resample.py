"""Resampling with the conventions of the libraries the reference recipes call.

* `pil_resize`: PIL's `Image.resize` with BOX / BILINEAR / BICUBIC on 8-bit images, bit-exact (same filter
  weights, same 22-bit fixed-point rounding, horizontal pass first, 8-bit intermediate).
* `pil_resize_nearest`: PIL's NEAREST resize (its affine scan: source = int(scale * (x + 0.5)), accumulated).
* `zoom_center`: `scipy.ndimage.zoom(order=1)` of a centred crop (the "clipped zoom" of zoom blur and snow):
  linear interpolation with the corner pixels aligned, output size ``round(crop * factor)``.
* `map_coordinates`: `scipy.ndimage.map_coordinates(order=1)` with a border mode, per-image coordinates.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["PIL_PRECISION_BITS", "clipped_zoom_axis", "map_coordinates", "pil_resize", "pil_resize_nearest", "pil_taps",
           "upscale_sources", "zoom_center"]

PIL_PRECISION_BITS = 22  # PIL: 32 - 8 - 2


def _box(x: np.ndarray) -> np.ndarray:
    return ((x > -0.5) & (x <= 0.5)).astype(np.float64)


def _triangle(x: np.ndarray) -> np.ndarray:
    return np.clip(1.0 - np.abs(x), 0.0, None)


def _cubic(x: np.ndarray) -> np.ndarray:
    a = -0.5
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


_PIL_FILTERS = {"box": (_box, 0.5), "bilinear": (_triangle, 1.0), "bicubic": (_cubic, 2.0)}


@lru_cache(maxsize=64)
def pil_taps(in_size: int, out_size: int, filter_name: str) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and fixed-point weights of PIL's resampling: both (out_size, ksize), int64."""
    fn, support = _PIL_FILTERS[filter_name]
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = support * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    idx = np.zeros((out_size, ksize), dtype=np.int64)
    weights = np.zeros((out_size, ksize), dtype=np.int64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        taps = np.arange(xmax)
        w = fn((taps + xmin - center + 0.5) / filterscale)
        total = w.sum()
        if total != 0.0:
            w = w / total
        fixed = np.where(w < 0, (-0.5 + w * (1 << PIL_PRECISION_BITS)).astype(np.int64),
                         (0.5 + w * (1 << PIL_PRECISION_BITS)).astype(np.int64))
        idx[xx, :xmax] = taps + xmin
        idx[xx, xmax:] = xmin  # NOTE: padding taps carry weight 0
        weights[xx, :xmax] = fixed
    return idx, weights


@lru_cache(maxsize=64)
def _single_taps(in_size: int, out_size: int, filter_name: str) -> np.ndarray | None:
    """The source index of each output when every output copies one input (weight exactly 1.0), else None.

    Then PIL's fixed-point sum (v * 2**22 + 2**21) >> 22 is v: the pass is a plain gather (box upscaling).
    """
    idx, w = pil_taps(in_size, out_size, filter_name)
    nonzero = w != 0
    if not (nonzero.sum(1) == 1).all() or not (w[nonzero] == 1 << PIL_PRECISION_BITS).all():
        return None
    return np.ascontiguousarray(idx[nonzero])


def upscale_sources(in_size: int, out_size: int, filter_name: str) -> np.ndarray:
    """The source index of each output of an upscaling PIL resize that copies pixels ("box" or "nearest")."""
    if filter_name == "nearest":
        return _nearest_index(in_size, out_size)
    single = _single_taps(in_size, out_size, filter_name)
    if single is None:
        raise ValueError(f"a {filter_name} resize from {in_size} to {out_size} pixels mixes pixels")
    return single


def _resample_axis(x: torch.Tensor, dim: int, out_size: int, filter_name: str) -> torch.Tensor:
    """One PIL pass on uint8 along dim (-1 or -2): fixed-point sum, round, clip to 0..255, uint8."""
    single = _single_taps(x.shape[dim], out_size, filter_name)
    if single is not None and x.dtype == torch.uint8:
        return x.index_select(dim, torch.from_numpy(single).to(x.device))
    idx, w = pil_taps(x.shape[dim], out_size, filter_name)
    acc = None
    for t in range(idx.shape[1]):
        if not bool((w[:, t] != 0).any()):
            continue
        col = torch.from_numpy(np.ascontiguousarray(idx[:, t])).to(x.device)
        wt = torch.from_numpy(np.ascontiguousarray(w[:, t])).to(device=x.device, dtype=torch.int32)
        wt = wt if dim == -1 else wt[:, None]
        term = x.index_select(dim, col).to(torch.int32) * wt
        acc = term if acc is None else acc.add_(term)
    acc = acc.add_(1 << (PIL_PRECISION_BITS - 1))
    acc = torch.bitwise_right_shift(acc, PIL_PRECISION_BITS)  # NOTE: arithmetic shift = floor, as PIL's `>>`
    return acc.clamp_(0, 255).to(torch.uint8)


def pil_resize(x: torch.Tensor, out_h: int, out_w: int, filter_name: str = "box") -> torch.Tensor:
    """PIL `Image.resize((out_w, out_h), filter)` of uint8 (..., H, W) images, bit-exact."""
    if x.shape[-1] != out_w:
        x = _resample_axis(x, -1, out_w, filter_name)
    if x.shape[-2] != out_h:
        x = _resample_axis(x, -2, out_h, filter_name)
    return x


@lru_cache(maxsize=64)
def _nearest_index(in_size: int, out_size: int) -> np.ndarray:
    """PIL's NEAREST source index per output position (an accumulated affine scan in double precision)."""
    step = in_size / out_size
    pos = step * 0.5
    out = np.empty(out_size, dtype=np.int64)
    for i in range(out_size):
        out[i] = min(max(int(pos), 0), in_size - 1)
        pos += step
    return out


def pil_resize_nearest(x: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """PIL `Image.resize((out_w, out_h), NEAREST)` of (..., H, W) images."""
    rows = torch.from_numpy(_nearest_index(x.shape[-2], out_h)).to(x.device)
    cols = torch.from_numpy(_nearest_index(x.shape[-1], out_w)).to(x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


def clipped_zoom_axis(size: int, factor: float, center_trim: bool) -> tuple[int, int, int, int]:
    """One axis of the clipped zoom: (crop length, crop start, enlarged length, where the kept part starts in it).

    The crop is the centred 1/factor of the side (rounded up); it is enlarged to ``round(crop * factor)`` (Python's
    round, as SciPy's zoom) and the kept `size` pixels start at the centre (`center_trim`) or at 0.
    """
    crop = math.ceil(size / factor)
    enlarged = int(round(crop * factor))
    offset = max((enlarged - size) // 2, 0) if center_trim else 0
    return crop, (size - crop) // 2, enlarged, offset


def zoom_center(x: torch.Tensor, factor: float, center_trim: bool, keep_size: bool = True) -> torch.Tensor:
    """Centred crop of 1/factor of each side, enlarged by `factor` with corner-aligned linear interpolation.

    Args:
        x: (B, C, H, W) float.
        factor: zoom factor >= 1.
        center_trim: cut the enlarged crop (a pixel or two larger than H x W) to H x W around its centre, else
            keep its top-left H x W (imagecorruptions).
        keep_size: return exactly H x W; else the whole enlarged crop (imagecorruptions' snow).
    """
    h, w = x.shape[-2:]
    ch, top, oh, t = clipped_zoom_axis(h, factor, center_trim)
    cw, left, ow, lft = clipped_zoom_axis(w, factor, center_trim)
    crop = x[..., top:top + ch, left:left + cw]
    if (oh, ow) == (ch, cw):
        out = crop
    else:
        out = F.interpolate(crop, size=(oh, ow), mode="bilinear", align_corners=True)
    if not keep_size:
        return out
    return out[..., t:t + h, lft:lft + w]


def map_coordinates(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, mode: str) -> torch.Tensor:
    """Linear interpolation of (B, C, H, W) at per-image float coordinates, a SciPy border mode beyond the edges.

    As `scipy.ndimage.map_coordinates(order=1)`: the image is extended with the border mode, then interpolated.
    For these modes that equals interpolating at the reflected (or clamped) coordinate, which is what
    `grid_sample` does: "reflect" (half-sample symmetric) is its reflection padding without aligned corners,
    "mirror" (OpenCV's BORDER_REFLECT_101) with aligned corners, "nearest" its border padding.

    Args:
        x: (B, C, H, W) float.
        rows, cols: (B, H', W') coordinates (row, column) into each image.
        mode: "reflect", "mirror" or "nearest".

    Returns:
        (B, C, H', W').
    """
    h, w = x.shape[-2:]
    if mode == "mirror":
        gx, gy = cols * (2.0 / max(w - 1, 1)) - 1, rows * (2.0 / max(h - 1, 1)) - 1
        padding, aligned = "reflection", True
    elif mode in ("reflect", "nearest"):
        gx, gy = (cols * 2 + 1) / w - 1, (rows * 2 + 1) / h - 1
        padding, aligned = ("reflection" if mode == "reflect" else "border"), False
    else:
        raise ValueError(f"unknown border mode {mode!r}")
    grid = torch.stack([gx, gy], dim=-1).to(x.dtype)  # (B, H', W', 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=aligned)
