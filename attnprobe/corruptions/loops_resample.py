"""Compiled resampling: pixelate's PIL box downscale (fixed point, bit for bit) and its pixel-copying upscale."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from attnprobe.corruptions.jit import each, kernel, run
from attnprobe.corruptions.resample import PIL_PRECISION_BITS, pil_taps

__all__ = ["pixelate_cpu"]


@kernel(np.zeros((1, 1, 2, 2), np.uint8), np.zeros((1, 1), np.int64), np.ones((1, 1), np.int32),
        np.zeros((1, 1), np.int64), np.ones((1, 1), np.int32), np.zeros(2, np.int64), np.zeros(2, np.int64),
        np.zeros((1, 1, 2, 2), np.uint8))
def _pixelate_loop(x: np.ndarray, col_idx: np.ndarray, col_w: np.ndarray, row_idx: np.ndarray, row_w: np.ndarray,
                   rows: np.ndarray, cols: np.ndarray, out: np.ndarray) -> None:
    """PIL's resize of each uint8 (H, W) plane to (sh, sw), then out[y, x] = small[rows[y], cols[x]] (the upscale
    copies one pixel per output).

    PIL's passes: horizontal, then vertical; output j of a pass is the fixed-point sum over taps t of
    in[idx[t, j]] * w[t, j] (`_box_taps`), + 2**21, >> 22, clipped. NOTE: taps outside, all outputs inside: the
    loops stream over contiguous outputs (a loop over a few taps per output was twice as slow); int32 sums as
    PIL's (the weights of a box sum to about 2**22: 255 * 2**22 + 2**21 cannot overflow).
    """
    b_n, c_n, h, _ = x.shape
    sh, sw = row_idx.shape[1], col_idx.shape[1]
    wide = np.empty((h, sw), dtype=np.uint8)
    acc = np.empty(sw, dtype=np.int32)
    small = np.empty((sh, sw), dtype=np.uint8)
    spread = np.empty((sh, cols.shape[0]), dtype=np.uint8)
    half = np.int32(1 << (PIL_PRECISION_BITS - 1))
    for b in range(b_n):
        for c in range(c_n):
            for y in range(h):
                src = x[b, c, y]
                acc[:] = half
                for t in range(col_idx.shape[0]):
                    for j in range(sw):
                        acc[j] += np.int32(src[col_idx[t, j]]) * col_w[t, j]
                for j in range(sw):
                    wide[y, j] = min(max(acc[j] >> PIL_PRECISION_BITS, 0), 255)
            for i in range(sh):
                acc[:] = half
                for t in range(row_idx.shape[0]):
                    weight = row_w[t, i]
                    src = wide[row_idx[t, i]]
                    for j in range(sw):
                        acc[j] += np.int32(src[j]) * weight
                for j in range(sw):
                    small[i, j] = min(max(acc[j] >> PIL_PRECISION_BITS, 0), 255)
            for i in range(sh):
                for xx in range(cols.shape[0]):
                    spread[i, xx] = small[i, cols[xx]]
            for y in range(rows.shape[0]):
                out[b, c, y, :] = spread[rows[y]]


@lru_cache(maxsize=64)
def _box_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """PIL's box taps (`resample.pil_taps`: (n, k)) as (k', n) indices and int32 weights, k' the most taps any
    output uses (a box's k has room to spare); unused taps read a valid index with weight 0."""
    idx, weights = pil_taps(in_size, out_size, "box")  # NOTE: pil_taps pads with a valid index and weight 0
    used = np.flatnonzero((weights != 0).any(0))
    width = int(used.max()) + 1 if used.size else 1
    return np.ascontiguousarray(idx[:, :width].T), np.ascontiguousarray(weights[:, :width].T.astype(np.int32))


def pixelate_cpu(x_u8: np.ndarray, small_hw: tuple[int, int], rows_up: np.ndarray,
                 cols_up: np.ndarray) -> np.ndarray | None:
    """Pixelate of uint8 (B, C, H, W): PIL's box downscale to `small_hw`, then the upscale's source rows and columns;
    or None without Numba."""
    x = np.ascontiguousarray(x_u8)
    (sh, sw), (h, w) = small_hw, x.shape[-2:]
    return run(_pixelate_loop, np.empty_like(x), each(x), *_box_taps(w, sw), *_box_taps(h, sh), rows_up, cols_up)
