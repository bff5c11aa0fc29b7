"""Loops that have no fast vectorised form, compiled with Numba when it is installed (it comes with
`imagecorruptions-imaug`); each caller keeps a torch path for other devices and for when Numba is missing."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache, lru_cache

import numpy as np
import torch

__all__ = ["available", "glass_index_cpu", "hsv_adjust_cpu", "shot_noise_cpu"]


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


def _hsv_adjust_loop(x: np.ndarray, s_scale: float, s_shift: float, v_shift: float, out: np.ndarray) -> None:
    """skimage's rgb2hsv, s * s_scale + s_shift and v + v_shift (each clipped to [0, 1]), hsv2rgb, x 255, truncated.

    The float64 operations of `digital._rgb_to_hsv` / `_hsv_to_rgb` one pixel at a time (same roundings).
    """
    for b in range(x.shape[0]):
        for y in range(x.shape[2]):
            for col in range(x.shape[3]):
                r = np.float64(x[b, 0, y, col]) / 255.0
                g = np.float64(x[b, 1, y, col]) / 255.0
                bl = np.float64(x[b, 2, y, col]) / 255.0
                v = max(max(r, g), bl)
                delta = v - min(min(r, g), bl)
                if delta == 0.0:
                    h = 0.0
                    s = 0.0
                else:
                    s = delta / v
                    if bl == v:  # NOTE: skimage assigns red, then green, then blue: the later channel wins
                        h = (r - g) / delta + 4.0
                    elif g == v:
                        h = (bl - r) / delta + 2.0
                    else:
                        h = (g - bl) / delta
                    h = h / 6.0
                    h = h - np.floor(h)  # torch.remainder(h, 1)
                s = min(max(s * s_scale + s_shift, 0.0), 1.0)
                v = min(max(v + v_shift, 0.0), 1.0)
                h6 = h * 6.0
                hi = np.floor(h6)
                f = h6 - hi
                sector = int(hi) % 6
                p = (1.0 - s) * v
                q = (1.0 - f * s) * v
                t = (1.0 - (1.0 - f) * s) * v
                if sector == 0:
                    rr, gg, bb = v, t, p
                elif sector == 1:
                    rr, gg, bb = q, v, p
                elif sector == 2:
                    rr, gg, bb = p, v, t
                elif sector == 3:
                    rr, gg, bb = p, q, v
                elif sector == 4:
                    rr, gg, bb = t, p, v
                else:
                    rr, gg, bb = v, p, q
                out[b, 0, y, col] = np.uint8(min(max(rr, 0.0), 1.0) * 255.0)
                out[b, 1, y, col] = np.uint8(min(max(gg, 0.0), 1.0) * 255.0)
                out[b, 2, y, col] = np.uint8(min(max(bb, 0.0), 1.0) * 255.0)


def _shot_noise_loop(level: np.ndarray, u: np.ndarray, base: np.ndarray, threshold: np.ndarray,
                     offset: np.ndarray, photons: int, buckets: int, lut: np.ndarray, out: np.ndarray) -> None:
    """`noise.shot_noise`'s guide-table inverse CDF, one value at a time (flat arrays)."""
    for i in range(level.shape[0]):
        lv = np.int64(level[i])
        bucket = np.int64(np.int32(u[i] * np.float32(buckets))) + lv * buckets
        count = np.int64(base[bucket])
        if count < 0:
            key = np.float64(u[i]) + 2.0 * np.float64(lv)
            count = np.int64(np.searchsorted(offset, key, side="right")) - lv * photons
        elif u[i] >= threshold[bucket]:
            count += 1
        out[i] = lut[min(count, photons)]


_KERNELS = {"glass": (_glass_index_loop, (np.zeros((1, 1, 2, 1, 1), np.uint8), 3, 3, 1, np.zeros((1, 9), np.int64))),
            "hsv": (_hsv_adjust_loop,
                    (np.zeros((1, 3, 1, 1), np.uint8), 1.0, 0.0, 0.0, np.zeros((1, 3, 1, 1), np.uint8))),
            "shot": (_shot_noise_loop, (np.zeros(1, np.uint8), np.zeros(1, np.float32), np.zeros(256, np.int32),
                                        np.ones(256, np.float32), np.arange(3.0), 1, 1, np.zeros(2, np.uint8),
                                        np.zeros(1, np.uint8)))}


@cache
def _compiled(kernel: str) -> Callable | None:
    try:
        import numba
    except ImportError:
        return None
    loop, example = _KERNELS[kernel]
    for on_disk in (True, False):  # NOTE: no writable cache folder (read-only install): compile in memory
        try:
            fn = numba.njit(cache=on_disk, nogil=True)(loop)
            fn(*example)
            return fn
        except Exception:  # noqa: BLE001, S112 - any Numba failure leaves the torch path
            continue
    return None


def available() -> bool:
    """Whether the compiled loops run (Numba installed and working)."""
    return _compiled("hsv") is not None


@lru_cache(maxsize=4)
def _pool(workers: int, pid: int) -> ThreadPoolExecutor:
    """A pool per process: NOTE: a forked loader worker inherits the parent's pool without its threads."""
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="attnprobe-corrupt")


def _over_images(n: int, work: Callable[[int, int], None]) -> None:
    """work(start, stop) over images 0 .. n, split among torch's threads (the loops free the GIL)."""
    workers = min(n, max(1, torch.get_num_threads()), os.cpu_count() or 1)
    if workers <= 1:
        work(0, n)
        return
    bounds = np.linspace(0, n, workers + 1).astype(int)
    list(_pool(workers, os.getpid()).map(lambda ab: work(*ab), zip(bounds[:-1], bounds[1:])))  # noqa: RUF007


def hsv_adjust_cpu(x_u8: np.ndarray, s_scale: float, s_shift: float, v_shift: float) -> np.ndarray | None:
    """Brightness / saturate of uint8 (B, 3, H, W) (see `_hsv_adjust_loop`), or None without Numba."""
    fn = _compiled("hsv")
    if fn is None:
        return None
    x_u8 = np.ascontiguousarray(x_u8)
    out = np.empty_like(x_u8)
    _over_images(len(x_u8), lambda a, b: fn(x_u8[a:b], float(s_scale), float(s_shift), float(v_shift), out[a:b]))
    return out


def shot_noise_cpu(level: np.ndarray, u: np.ndarray, tables: tuple[np.ndarray, ...], photons: int, buckets: int,
                   lut: np.ndarray) -> np.ndarray | None:
    """Shot noise of uint8 levels (B, N) with float32 uniforms (B, N) (`noise.shot_noise`); None without Numba."""
    fn = _compiled("shot")
    if fn is None:
        return None
    out = np.empty_like(level)
    n = len(level)
    _over_images(n, lambda a, b: fn(level[a:b].reshape(-1), u[a:b].reshape(-1), *tables, int(photons), int(buckets),
                                    lut, out[a:b].reshape(-1)))
    return out


def glass_index_cpu(shifts: np.ndarray, h: int, w: int, d: int) -> np.ndarray | None:
    """Flat source index (B, h * w) int64 of glass blur's pulls, or None when Numba is not available.

    Args:
        shifts: (B, passes, 2, h - 2d, w - 2d) uint8 draws d + (dx, dy), row-major over the visited region.
        h, w: image size.
        d: the largest shift.
    """
    fn = _compiled("glass")
    if fn is None:
        return None
    shifts = np.ascontiguousarray(shifts)
    out = np.empty((shifts.shape[0], h * w), dtype=np.int64)
    _over_images(len(shifts), lambda a, b: fn(shifts[a:b], h, w, d, out[a:b]))
    return out
