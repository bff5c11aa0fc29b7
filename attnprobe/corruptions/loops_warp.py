"""Compiled warps: the elastic transform's affine map and displacement field, with linear interpolation."""

from __future__ import annotations

import numpy as np

from attnprobe.corruptions.jit import each, helper, kernel, run

__all__ = ["elastic_cpu"]


@helper
def _fold(c: float, edge: float) -> float:
    """c >= 0 folded into [0, edge] by reflecting at 0 and edge (period 2 * edge; 0 when edge is 0)."""
    if edge <= 0.0:
        return c * 0
    period = edge + edge
    c = c - period * np.floor(c / period)
    return period - c if c > edge else c


@kernel(np.zeros((1, 1, 2, 2), np.uint8), np.zeros((1, 2, 3), np.float32), True, np.zeros((1, 2, 2, 2), np.float32),
        np.zeros((1, 1, 2, 2), np.uint8))
def _elastic_loop(x: np.ndarray, inverse: np.ndarray, affine: bool, fields: np.ndarray, out: np.ndarray) -> None:
    """Elastic transform of uint8 (B, C, H, W), linear interpolation throughout.

    1. (affine) warped = the image at source = inverse @ (x, y, 1) on a 1/32-pixel grid (OpenCV's warpAffine),
       coordinates mirrored at the edge pixels (BORDER_REFLECT_101); else warped = the image.
    2. out = warped at (y + dy, x + dx) (fields (B, 2, H, W): dx, dy), coordinates reflected at the pixel borders
       -0.5 and n - 0.5 (SciPy's "reflect"), truncated to uint8.
    """
    b_n, c_n, h, w = x.shape
    warped = np.empty((c_n, h, w), dtype=np.float32)
    one = np.float32(1.0)
    half = np.float32(0.5)
    grid = np.float32(32.0)
    for b in range(b_n):
        if affine:
            a00, a01, a02 = inverse[b, 0, 0], inverse[b, 0, 1], inverse[b, 0, 2]
            a10, a11, a12 = inverse[b, 1, 0], inverse[b, 1, 1], inverse[b, 1, 2]
            for y in range(h):
                fy = np.float32(y)
                for i in range(w):
                    fx = np.float32(i)
                    row = np.round((a10 * fx + a11 * fy + a12) * grid) / grid
                    col = np.round((a00 * fx + a01 * fy + a02) * grid) / grid
                    if not np.float32(0.0) <= row <= np.float32(h - 1):  # NOTE: rare; mirror into [0, h - 1]
                        row = _fold(abs(row), np.float32(h - 1))
                    if not np.float32(0.0) <= col <= np.float32(w - 1):
                        col = _fold(abs(col), np.float32(w - 1))
                    r0, c0 = min(int(row), h - 1), min(int(col), w - 1)
                    r1, c1 = min(r0 + 1, h - 1), min(c0 + 1, w - 1)
                    fr, fc = row - np.float32(r0), col - np.float32(c0)
                    for c in range(c_n):
                        top = (one - fc) * np.float32(x[b, c, r0, c0]) + fc * np.float32(x[b, c, r0, c1])
                        bottom = (one - fc) * np.float32(x[b, c, r1, c0]) + fc * np.float32(x[b, c, r1, c1])
                        warped[c, y, i] = (one - fr) * top + fr * bottom
        else:
            for c in range(c_n):
                for y in range(h):
                    for i in range(w):
                        warped[c, y, i] = np.float32(x[b, c, y, i])
        for y in range(h):
            for i in range(w):
                row = np.float32(y) + fields[b, 1, y, i]
                col = np.float32(i) + fields[b, 0, y, i]
                if not np.float32(0.0) <= row <= np.float32(h - 1):  # reflect at -0.5 and h - 0.5
                    row = _fold(abs(row + half), np.float32(h)) - half
                    row = min(max(row, np.float32(0.0)), np.float32(h - 1))
                if not np.float32(0.0) <= col <= np.float32(w - 1):
                    col = _fold(abs(col + half), np.float32(w)) - half
                    col = min(max(col, np.float32(0.0)), np.float32(w - 1))
                r0, c0 = min(int(row), h - 1), min(int(col), w - 1)
                r1, c1 = min(r0 + 1, h - 1), min(c0 + 1, w - 1)
                fr, fc = row - np.float32(r0), col - np.float32(c0)
                for c in range(c_n):
                    top = (one - fc) * warped[c, r0, c0] + fc * warped[c, r0, c1]
                    bottom = (one - fc) * warped[c, r1, c0] + fc * warped[c, r1, c1]
                    v = (one - fr) * top + fr * bottom
                    out[b, c, y, i] = np.uint8(min(max(v, np.float32(0.0)), np.float32(255.0)))


def elastic_cpu(x_u8: np.ndarray, inverse: np.ndarray | None, fields: np.ndarray) -> np.ndarray | None:
    """Elastic transform of uint8 (B, C, H, W) (`_elastic_loop`): affine inverses (B, 2, 3) float32 or None,
    displacement fields (B, 2, H, W) float32 (dx, dy, pixels); None without Numba."""
    x = np.ascontiguousarray(x_u8)
    affine = inverse is not None
    inverse = np.zeros((len(x), 2, 3), np.float32) if inverse is None else inverse.astype(np.float32, copy=False)
    return run(_elastic_loop, np.empty_like(x), each(x), each(inverse), affine,
               each(fields.astype(np.float32, copy=False)))
