"""Compiled blur loops: separable filters (Gaussian), glass blur, zoom blur, motion blur."""

from __future__ import annotations

import numpy as np

from attnprobe.corruptions.borders import boundary_indices
from attnprobe.corruptions.jit import each, helper, kernel, run

__all__ = ["glass_blur_cpu", "motion_cpu", "separable_cpu", "zoom_blur_cpu"]


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


def zoom_blur_cpu(x_u8: np.ndarray, rows: np.ndarray, row_w: np.ndarray, cols: np.ndarray, col_w: np.ndarray,
                  identities: int) -> np.ndarray | None:
    """Zoom blur of uint8 (B, C, H, W) from its sampling tables (`_zoom_blur_loop`), or None without Numba."""
    x = np.ascontiguousarray(x_u8)
    return run(_zoom_blur_loop, np.empty_like(x), each(x), rows, row_w, cols, col_w, int(identities))


@helper
def _blur_plane(src: np.ndarray, taps_h: np.ndarray, rows: np.ndarray, taps_w: np.ndarray, cols: np.ndarray,
                tmp: np.ndarray, dst: np.ndarray) -> None:
    """dst = src (H, W) correlated with the centred `taps_h` down the columns, then `taps_w` along the rows.

    rows / cols: the source index of every position of the padded axes (H + len(taps_h) - 1, W + len(taps_w) - 1;
    `borders.boundary_indices`), which is how any border mode is applied. Row-wise loops over contiguous memory,
    which the compiler vectorises.
    """
    h, w = src.shape
    for y in range(h):
        row = tmp[y]
        first = src[rows[y]]
        for i in range(w):
            row[i] = taps_h[0] * first[i]
        for t in range(1, taps_h.shape[0]):
            line = src[rows[y + t]]
            wt = taps_h[t]
            for i in range(w):
                row[i] += wt * line[i]
    padded = np.empty(cols.shape[0], dtype=src.dtype)
    for y in range(h):
        row = tmp[y]
        for j in range(cols.shape[0]):
            padded[j] = row[cols[j]]
        out = dst[y]
        for i in range(w):
            out[i] = taps_w[0] * padded[i]
        for t in range(1, taps_w.shape[0]):
            wt = taps_w[t]
            shifted = padded[t:t + w]
            for i in range(w):
                out[i] += wt * shifted[i]


@kernel(np.zeros((1, 3, 3), np.float32), np.ones(1, np.float32), np.arange(3), np.ones(1, np.float32), np.arange(3),
        np.zeros((1, 3, 3), np.float32))
def _separable_loop(x: np.ndarray, taps_h: np.ndarray, rows: np.ndarray, taps_w: np.ndarray, cols: np.ndarray,
                    out: np.ndarray) -> None:
    """`_blur_plane` of each (H, W) plane of x (N, H, W)."""
    tmp = np.empty(x.shape[1:], dtype=x.dtype)
    for n in range(x.shape[0]):
        _blur_plane(x[n], taps_h, rows, taps_w, cols, tmp, out[n])


def separable_cpu(x: np.ndarray, taps_h: tuple[float, ...], rows: np.ndarray, taps_w: tuple[float, ...],
                  cols: np.ndarray) -> np.ndarray | None:
    """Separable correlation of float (..., H, W) planes (`_blur_plane`), or None without Numba."""
    planes = np.ascontiguousarray(x).reshape(-1, *x.shape[-2:])
    th, tw = np.asarray(taps_h, dtype=x.dtype), np.asarray(taps_w, dtype=x.dtype)
    out = run(_separable_loop, np.empty_like(planes), each(planes), th, rows, tw, cols)
    return None if out is None else out.reshape(x.shape)


@kernel(np.zeros((1, 1, 5, 5), np.uint8), np.ones(3, np.float32) / 3, np.arange(7) % 5, np.arange(7) % 5,
        np.zeros((1, 1, 2, 1, 1), np.uint8), 2, np.zeros((1, 1, 5, 5), np.uint8))
def _glass_blur_loop(x: np.ndarray, taps: np.ndarray, rows: np.ndarray, cols: np.ndarray, shifts: np.ndarray, d: int,
                     out: np.ndarray) -> None:
    """Glass blur of uint8 (B, C, H, W): Gaussian blur (`taps`), 8-bit truncation, the reference's pixel pulls
    (`shifts`, see `blur.glass_shuffle_index`), Gaussian blur again; the float32 steps of `blur.glass_blur`."""
    b_n, c_n, h, w = x.shape
    plane = np.empty((h, w), dtype=np.float32)
    tmp = np.empty((h, w), dtype=np.float32)
    blurred = np.empty((h, w), dtype=np.float32)
    index = np.empty(h * w, dtype=np.int64)
    scale = np.float32(255.0)
    for b in range(b_n):
        for p in range(h * w):
            index[p] = p
        for k in range(shifts.shape[1]):
            for hh in range(h - d, d, -1):
                for ww in range(w - d, d, -1):
                    dx = np.int64(shifts[b, k, 0, hh - d - 1, ww - d - 1]) - d
                    dy = np.int64(shifts[b, k, 1, hh - d - 1, ww - d - 1]) - d
                    index[hh * w + ww] = index[(hh + dy) * w + ww + dx]
        for c in range(c_n):
            for y in range(h):
                for i in range(w):
                    plane[y, i] = np.float32(x[b, c, y, i]) / scale
            _blur_plane(plane, taps, rows, taps, cols, tmp, blurred)
            flat = blurred.ravel()
            for y in range(h):
                for i in range(w):
                    plane[y, i] = np.floor(flat[index[y * w + i]] * scale) / scale
            _blur_plane(plane, taps, rows, taps, cols, tmp, blurred)
            for y in range(h):
                for i in range(w):
                    out[b, c, y, i] = np.uint8(min(max(blurred[y, i], np.float32(0.0)), np.float32(1.0)) * scale)


def glass_blur_cpu(x_u8: np.ndarray, taps: tuple[float, ...], shifts: np.ndarray, d: int) -> np.ndarray | None:
    """Glass blur of uint8 (B, C, H, W) (`_glass_blur_loop`) with the Gaussian `taps` and the (B, passes, 2,
    H - 2d, W - 2d) uint8 draws d + (dx, dy); None without Numba."""
    x = np.ascontiguousarray(x_u8)
    r = len(taps) // 2
    rows, cols = (boundary_indices(n, r, r, "nearest") for n in x.shape[-2:])
    return run(_glass_blur_loop, np.empty_like(x), each(x), np.asarray(taps, dtype=np.float32), rows, cols,
               each(shifts), int(d))


@kernel(np.zeros((1, 1, 3, 3), np.float32), np.zeros((1, 2), np.int64), np.ones((1, 2), np.int64),
        np.ones((1, 2), np.float32), np.full(1, 2, np.int64), np.zeros((1, 1, 3, 3), np.float32))
def _motion_loop(x: np.ndarray, dys: np.ndarray, dxs: np.ndarray, weights: np.ndarray, counts: np.ndarray,
                 out: np.ndarray) -> None:
    """out[b, c, y, i] = sum over taps t < counts[b] of weights[b, t] * x[b, c, y + dys[b, t], i + dxs[b, t]],
    float (B, C, H, W), coordinates clamped to the image (edge pixels repeated), taps added in order."""
    b_n, c_n, h, w = x.shape
    for b in range(b_n):
        for c in range(c_n):
            for t in range(counts[b]):
                dy, dx, wt = dys[b, t], dxs[b, t], weights[b, t]
                lo = min(max(-dx, 0), w)  # columns i with 0 <= i + dx < w: lo .. hi
                hi = max(min(w - dx, w), lo)
                for y in range(h):
                    src = x[b, c, min(max(y + dy, 0), h - 1)]
                    dst = out[b, c, y]
                    if t == 0:
                        dst[:] = 0.0
                    # NOTE: slices, so that the loops index with the loop counter alone (and vectorise)
                    inner, shifted = dst[lo:hi], src[lo + dx:hi + dx]
                    for i in range(hi - lo):
                        inner[i] += wt * shifted[i]
                    first, last = src[0], src[w - 1]
                    left, right = dst[:lo], dst[hi:]
                    for i in range(lo):
                        left[i] += wt * first
                    for i in range(w - hi):
                        right[i] += wt * last


def motion_cpu(x: np.ndarray, taps: list[list[tuple[int, int, float]]]) -> np.ndarray | None:
    """Motion blur of float (B, C, H, W) with each image's (row offset, column offset, weight) taps
    (`_motion_loop`); None without Numba."""
    x = np.ascontiguousarray(x)
    most = max(len(t) for t in taps)
    dys, dxs = np.zeros((len(taps), most), np.int64), np.zeros((len(taps), most), np.int64)
    weights = np.zeros((len(taps), most), x.dtype)
    for b, image_taps in enumerate(taps):
        for t, (dy, dx, wt) in enumerate(image_taps):
            dys[b, t], dxs[b, t], weights[b, t] = dy, dx, wt
    counts = np.array([len(t) for t in taps], np.int64)
    return run(_motion_loop, np.empty_like(x), each(x), each(dys), each(dxs), each(weights), each(counts))
