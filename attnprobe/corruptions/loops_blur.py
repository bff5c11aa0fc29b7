"""Compiled blur loops: glass blur's pixel pulls, zoom blur."""

from __future__ import annotations

import numpy as np

from attnprobe.corruptions.jit import compiled, kernel, over_images

__all__ = ["glass_index_cpu", "zoom_blur_cpu"]


@kernel(np.zeros((1, 1, 2, 1, 1), np.uint8), 3, 3, 1, np.zeros((1, 9), np.int64))
def _glass_index_loop(shifts: np.ndarray, h: int, w: int, d: int, out: np.ndarray) -> None:
    """The reference's pixel pulls, replayed on an index map: out[b, p] = source pixel of p after all passes."""
    for b in range(shifts.shape[0]):
        idx = out[b]
        for p in range(h * w):
            idx[p] = p
        for k in range(shifts.shape[1]):
            for hh in range(h - d, d, -1):
                for ww in range(w - d, d, -1):
                    dx = np.int64(shifts[b, k, 0, hh - d - 1, ww - d - 1]) - d
                    dy = np.int64(shifts[b, k, 1, hh - d - 1, ww - d - 1]) - d
                    idx[hh * w + ww] = idx[(hh + dy) * w + ww + dx]


@kernel(np.zeros((1, 1, 2, 2), np.uint8), np.zeros((1, 2), np.int64), np.zeros((1, 2), np.float32),
        np.zeros((1, 2), np.int64), np.zeros((1, 2), np.float32), 1, np.zeros((1, 1, 2, 2), np.uint8))
def _zoom_blur_loop(x: np.ndarray, rows: np.ndarray, row_w: np.ndarray, cols: np.ndarray, col_w: np.ndarray,
                    identities: int, out: np.ndarray) -> None:
    """Mean of `identities` copies of each image and its bilinear zooms, uint8 (B, C, H, W) in and out.

    Zoom k reads output row y from source rows rows[k, y] and rows[k, y] + 1 with weights 1 - row_w[k, y] and
    row_w[k, y] (columns likewise). Separable: the source rows a zoom needs are resampled along x once, then
    blended along y straight into the sum, so each zoom costs two light passes and no image-sized temporaries.
    """
    zooms, h = rows.shape
    w = cols.shape[1]
    plane = np.empty((x.shape[2], x.shape[3]), dtype=np.float32)
    tmp = np.empty((h + 1, w), dtype=np.float32)
    acc = np.empty((h, w), dtype=np.float32)
    scale = np.float32(1.0) / np.float32(zooms + identities)
    copies = np.float32(identities)
    for b in range(x.shape[0]):
        for c in range(x.shape[1]):
            for y in range(h):
                src, dst, total = x[b, c, y], plane[y], acc[y]
                for i in range(w):
                    dst[i] = np.float32(src[i])
                    total[i] = dst[i] * copies
            for k in range(zooms):
                first = rows[k, 0]
                col, lam_x = cols[k], col_w[k]
                for r in range(first, rows[k, h - 1] + 2):
                    src, dst = plane[r], tmp[r - first]
                    for i in range(w):
                        j = col[i]
                        dst[i] = (np.float32(1.0) - lam_x[i]) * src[j] + lam_x[i] * src[j + 1]
                for y in range(h):
                    top, bottom, total = tmp[rows[k, y] - first], tmp[rows[k, y] - first + 1], acc[y]
                    lam = row_w[k, y]
                    keep = np.float32(1.0) - lam
                    for i in range(w):
                        total[i] += keep * top[i] + lam * bottom[i]
            for y in range(h):
                total, dst = acc[y], out[b, c, y]
                for i in range(w):
                    dst[i] = np.uint8(min(max(total[i] * scale, np.float32(0.0)), np.float32(255.0)))


def glass_index_cpu(shifts: np.ndarray, h: int, w: int, d: int) -> np.ndarray | None:
    """Flat source index (B, h * w) int64 of glass blur's pulls, or None when Numba is not available.

    Args:
        shifts: (B, passes, 2, h - 2d, w - 2d) uint8 draws d + (dx, dy), row-major over the visited region.
        h, w: image size.
        d: the largest shift.
    """
    fn = compiled(_glass_index_loop)
    if fn is None:
        return None
    shifts = np.ascontiguousarray(shifts)
    out = np.empty((shifts.shape[0], h * w), dtype=np.int64)
    over_images(len(shifts), lambda a, b: fn(shifts[a:b], h, w, d, out[a:b]))
    return out


def zoom_blur_cpu(x_u8: np.ndarray, rows: np.ndarray, row_w: np.ndarray, cols: np.ndarray, col_w: np.ndarray,
                  identities: int) -> np.ndarray | None:
    """Zoom blur of uint8 (B, C, H, W) from its sampling tables (`_zoom_blur_loop`), or None without Numba."""
    fn = compiled(_zoom_blur_loop)
    if fn is None:
        return None
    x_u8 = np.ascontiguousarray(x_u8)
    out = np.empty_like(x_u8)
    over_images(len(x_u8), lambda a, b: fn(x_u8[a:b], rows, row_w, cols, col_w, int(identities), out[a:b]))
    return out
