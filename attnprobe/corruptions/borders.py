"""Border modes as index maps: where each position of a padded axis reads from (SciPy's names)."""

from __future__ import annotations

import numpy as np

__all__ = ["boundary_indices"]


def boundary_indices(n: int, before: int, after: int, mode: str) -> np.ndarray:
    """Source index of every position of an axis of length n padded by `before` and `after` (int64)."""
    i = np.arange(-before, n + after, dtype=np.int64)
    if mode == "nearest":
        return np.clip(i, 0, n - 1)
    if mode == "reflect":
        period = 2 * n
        m = np.mod(i, period)
        return np.where(m >= n, period - 1 - m, m)
    if mode == "mirror":
        if n == 1:
            return np.zeros_like(i)
        period = 2 * n - 2
        m = np.mod(i, period)
        return np.where(m >= n, period - m, m)
    if mode == "wrap":
        return np.mod(i, n)
    raise ValueError(f"unknown border mode {mode!r}")
