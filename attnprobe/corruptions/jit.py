"""Loops that have no fast vectorised form, compiled with Numba when it is installed (it comes with
`imagecorruptions-imaug`); each caller keeps a torch path for other devices and for when Numba is missing."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache, lru_cache

import numpy as np
import torch

__all__ = ["add_noise_cpu", "available", "elastic_cpu", "fog_cpu", "glass_index_cpu", "hsv_adjust_cpu", "impulse_noise_cpu", "shot_noise_cpu",
           "zoom_blur_cpu"]


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


def _add_noise_loop(x: np.ndarray, noise: np.ndarray, out: np.ndarray) -> None:
    """uint8 of clip(x / 255 + noise, 0, 1) * 255, flat arrays; the float32 steps of the torch path."""
    for i in range(x.shape[0]):
        v = np.float32(x[i]) / np.float32(255.0) + noise[i]
        out[i] = np.uint8(min(max(v, np.float32(0.0)), np.float32(1.0)) * np.float32(255.0))


def _impulse_loop(x: np.ndarray, u: np.ndarray, amount: float, out: np.ndarray) -> None:
    """Pepper (0) where u < amount / 2, salt (255) where u < amount, else the value; flat arrays."""
    salt = np.float32(amount)
    pepper = np.float32(amount / 2)
    for i in range(x.shape[0]):
        out[i] = 0 if u[i] < pepper else (255 if u[i] < salt else x[i])


def _fold(c: float, edge: float) -> float:
    """c >= 0 folded into [0, edge] by reflecting at 0 and edge (period 2 * edge; 0 when edge is 0)."""
    if edge <= 0.0:
        return c * 0
    period = edge + edge
    c = c - period * np.floor(c / period)
    return period - c if c > edge else c


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


def _fog_loop(x: np.ndarray, draws: np.ndarray, size: int, decay: float, weight: float, out: np.ndarray) -> None:
    """Fog of uint8 (B, C, H, W): each image's diamond-square plasma (`weather.plasma_fractal`, the same float32
    steps and draw order) scaled to [0, 1], cropped top-left, then (x + weight * plasma) * max / (max + weight)."""
    grid = np.empty((size, size), dtype=np.float32)
    quarter = np.float32(4.0)
    for b in range(x.shape[0]):
        grid[:, :] = 0.0
        noise = draws[b]
        used = 0
        step = size
        wibble = 100.0
        while step >= 2:
            half = step // 2
            n = size // step
            amp = np.float32(wibble * wibble)
            for i in range(n):  # squares: the mean of the 4 corners
                for j in range(n):
                    i1, j1 = (i + 1) % n, (j + 1) % n
                    total = (grid[i * step, j * step] + grid[i1 * step, j * step]) + (
                        grid[i * step, j1 * step] + grid[i1 * step, j1 * step])
                    grid[i * step + half, j * step + half] = total / quarter + amp * noise[used + i * n + j]
            used += n * n
            for i in range(n):  # diamonds between horizontal neighbours
                for j in range(n):
                    total = ((grid[i * step + half, j * step + half] + grid[((i - 1) % n) * step + half, j * step + half])
                             + grid[i * step, j * step]) + grid[i * step, ((j + 1) % n) * step]
                    grid[i * step, j * step + half] = total / quarter + amp * noise[used + i * n + j]
            used += n * n
            for i in range(n):  # diamonds between vertical neighbours
                for j in range(n):
                    total = ((grid[i * step + half, j * step + half] + grid[i * step + half, ((j - 1) % n) * step + half])
                             + grid[i * step, j * step]) + grid[((i + 1) % n) * step, j * step]
                    grid[i * step + half, j * step] = total / quarter + amp * noise[used + i * n + j]
            used += n * n
            step //= 2
            wibble /= decay
        low = grid.min()
        high = grid.max() - low
        peak = np.float32(x[b].max()) / np.float32(255.0)
        w32 = np.float32(weight)
        gain = peak / (peak + w32)
        for c in range(x.shape[1]):
            for y in range(x.shape[2]):
                for i in range(x.shape[3]):
                    plasma = (grid[y, i] - low) / high
                    v = (np.float32(x[b, c, y, i]) / np.float32(255.0) + w32 * plasma) * gain
                    out[b, c, y, i] = np.uint8(min(max(v, np.float32(0.0)), np.float32(1.0)) * np.float32(255.0))


_KERNELS = {"glass": (_glass_index_loop, (np.zeros((1, 1, 2, 1, 1), np.uint8), 3, 3, 1, np.zeros((1, 9), np.int64))),
            "hsv": (_hsv_adjust_loop,
                    (np.zeros((1, 3, 1, 1), np.uint8), 1.0, 0.0, 0.0, np.zeros((1, 3, 1, 1), np.uint8))),
            "zoom": (_zoom_blur_loop, (np.zeros((1, 1, 2, 2), np.uint8), np.zeros((1, 2), np.int64),
                                       np.zeros((1, 2), np.float32), np.zeros((1, 2), np.int64),
                                       np.zeros((1, 2), np.float32), 1, np.zeros((1, 1, 2, 2), np.uint8))),
            "noise": (_add_noise_loop, (np.zeros(1, np.uint8), np.zeros(1, np.float32), np.zeros(1, np.uint8))),
            "impulse": (_impulse_loop, (np.zeros(1, np.uint8), np.zeros(1, np.float32), 0.5, np.zeros(1, np.uint8))),
            "elastic": (_elastic_loop, (np.zeros((1, 1, 2, 2), np.uint8), np.zeros((1, 2, 3), np.float32), True,
                                        np.zeros((1, 2, 2, 2), np.float32), np.zeros((1, 1, 2, 2), np.uint8))),
            "fog": (_fog_loop, (np.full((1, 3, 2, 2), 9, np.uint8), np.array([[0.5, -0.5, 0.25]], np.float32), 2, 2.0, 1.5,
                                np.zeros((1, 3, 2, 2), np.uint8))),
            "shot": (_shot_noise_loop, (np.zeros(1, np.uint8), np.zeros(1, np.float32), np.zeros(256, np.int32),
                                        np.ones(256, np.float32), np.arange(3.0), 1, 1, np.zeros(2, np.uint8),
                                        np.zeros(1, np.uint8)))}


_HELPERS = ("_fold",)  # plain functions the loops call: compiled (inlined) before the loops


@cache
def _compile_helpers(numba) -> None:  # noqa: ANN001
    for name in _HELPERS:
        globals()[name] = numba.njit(inline="always")(globals()[name])


@cache
def _compiled(kernel: str) -> Callable | None:
    try:
        import numba
    except ImportError:
        return None
    _compile_helpers(numba)
    loop, example = _KERNELS[kernel]
    for on_disk in (True, False):  # NOTE: no writable cache folder (read-only install): compile in memory
        try:
            fn = numba.njit(cache=on_disk, nogil=True, error_model="numpy")(loop)
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


def zoom_blur_cpu(x_u8: np.ndarray, rows: np.ndarray, row_w: np.ndarray, cols: np.ndarray, col_w: np.ndarray,
                  identities: int) -> np.ndarray | None:
    """Zoom blur of uint8 (B, C, H, W) from its sampling tables (`_zoom_blur_loop`), or None without Numba."""
    fn = _compiled("zoom")
    if fn is None:
        return None
    x_u8 = np.ascontiguousarray(x_u8)
    out = np.empty_like(x_u8)
    _over_images(len(x_u8), lambda a, b: fn(x_u8[a:b], rows, row_w, cols, col_w, int(identities), out[a:b]))
    return out


def _flat_map(kernel: str, x_u8: np.ndarray, values: np.ndarray, *args: object) -> np.ndarray | None:
    """kernel(x, values, *args, out) over uint8 (B, ...) images with per-value `values` (B, ...), or None."""
    fn = _compiled(kernel)
    if fn is None:
        return None
    b = len(x_u8)
    x = np.ascontiguousarray(x_u8).reshape(b, -1)
    v = np.ascontiguousarray(values).reshape(b, -1)
    out = np.empty_like(x)
    _over_images(b, lambda i, j: fn(x[i:j].reshape(-1), v[i:j].reshape(-1), *args, out[i:j].reshape(-1)))
    return out.reshape(x_u8.shape)


def add_noise_cpu(x_u8: np.ndarray, noise: np.ndarray) -> np.ndarray | None:
    """uint8 of clip(x / 255 + noise, 0, 1) * 255 (float32 noise of the same shape), or None without Numba."""
    return _flat_map("noise", x_u8, noise)


def impulse_noise_cpu(x_u8: np.ndarray, u: np.ndarray, amount: float) -> np.ndarray | None:
    """Salt and pepper from float32 uniforms of the same shape (`noise.impulse_noise`), or None without Numba."""
    return _flat_map("impulse", x_u8, u, float(amount))


def elastic_cpu(x_u8: np.ndarray, inverse: np.ndarray | None, fields: np.ndarray) -> np.ndarray | None:
    """Elastic transform of uint8 (B, C, H, W) (`_elastic_loop`): affine inverses (B, 2, 3) float32 or None,
    displacement fields (B, 2, H, W) float32 (dx, dy, pixels); None without Numba."""
    fn = _compiled("elastic")
    if fn is None:
        return None
    x_u8 = np.ascontiguousarray(x_u8)
    fields = np.ascontiguousarray(fields, dtype=np.float32)
    affine = inverse is not None
    inverse = np.zeros((len(x_u8), 2, 3), np.float32) if inverse is None else np.ascontiguousarray(inverse, np.float32)
    out = np.empty_like(x_u8)
    _over_images(len(x_u8), lambda a, b: fn(x_u8[a:b], inverse[a:b], affine, fields[a:b], out[a:b]))
    return out


def fog_cpu(x_u8: np.ndarray, draws: np.ndarray, size: int, decay: float, weight: float) -> np.ndarray | None:
    """Fog of uint8 (B, C, H, W) from each image's plasma draws (B, n) float32 (`_fog_loop`); None without Numba."""
    fn = _compiled("fog")
    if fn is None:
        return None
    x_u8 = np.ascontiguousarray(x_u8)
    draws = np.ascontiguousarray(draws)
    out = np.empty_like(x_u8)
    _over_images(len(x_u8), lambda a, b: fn(x_u8[a:b], draws[a:b], int(size), float(decay), float(weight), out[a:b]))
    return out
