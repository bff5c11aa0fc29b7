"""Loops that have no fast vectorised form, compiled with Numba when it is installed (it comes with
`imagecorruptions-imaug`); each caller keeps a torch path for other devices and for when Numba is missing."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np

__all__ = ["glass_index_cpu"]


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


@lru_cache(maxsize=1)
def _compiled() -> Callable | None:
    try:
        import numba
    except ImportError:
        return None
    for cache in (True, False):  # NOTE: no writable cache folder (read-only install): compile in memory
        try:
            fn = numba.njit(cache=cache, nogil=True)(_glass_index_loop)
            fn(np.zeros((1, 1, 2, 1, 1), np.uint8), 3, 3, 1, np.zeros((1, 9), np.int64))
            return fn
        except Exception:  # noqa: BLE001, S112 - any Numba failure leaves the torch path
            continue
    return None


def glass_index_cpu(shifts: np.ndarray, h: int, w: int, d: int) -> np.ndarray | None:
    """Flat source index (B, h * w) int64 of glass blur's pulls, or None when Numba is not available.

    Args:
        shifts: (B, passes, 2, h - 2d, w - 2d) uint8 draws d + (dx, dy), row-major over the visited region.
        h, w: image size.
        d: the largest shift.
    """
    fn = _compiled()
    if fn is None:
        return None
    out = np.empty((shifts.shape[0], h * w), dtype=np.int64)
    fn(np.ascontiguousarray(shifts), h, w, d, out)
    return out
