"""Compiled per-value loops: the HSV round trip of brightness / saturate, gaussian, impulse and shot noise, and the
planes <-> interleaved pixel layouts that JPEG coders read and write."""

from __future__ import annotations

import numpy as np

from attnprobe.corruptions.jit import each, kernel, run

__all__ = ["add_noise_cpu", "hsv_adjust_cpu", "impulse_noise_cpu", "interleaved_cpu", "planar_cpu", "shot_noise_cpu"]


@kernel(np.zeros((1, 3, 1, 1), np.uint8), 1.0, 0.0, 0.0, np.zeros((1, 3, 1, 1), np.uint8))
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


@kernel(np.zeros((1, 2), np.uint8), np.zeros((1, 2), np.float32), np.zeros((1, 2), np.uint8))
def _add_noise_loop(x: np.ndarray, noise: np.ndarray, out: np.ndarray) -> None:
    """uint8 of clip(x / 255 + noise, 0, 1) * 255, (B, N) arrays; the float32 steps of the torch path."""
    for b in range(x.shape[0]):
        for i in range(x.shape[1]):
            v = np.float32(x[b, i]) / np.float32(255.0) + noise[b, i]
            out[b, i] = np.uint8(min(max(v, np.float32(0.0)), np.float32(1.0)) * np.float32(255.0))


@kernel(np.zeros((1, 2), np.uint8), np.zeros((1, 2), np.float32), 0.5, np.zeros((1, 2), np.uint8))
def _impulse_loop(x: np.ndarray, u: np.ndarray, amount: float, out: np.ndarray) -> None:
    """Pepper (0) where u < amount / 2, salt (255) where u < amount, else the value; (B, N) arrays."""
    salt = np.float32(amount)
    pepper = np.float32(amount / 2)
    for b in range(x.shape[0]):
        for i in range(x.shape[1]):
            out[b, i] = 0 if u[b, i] < pepper else (255 if u[b, i] < salt else x[b, i])


@kernel(np.zeros((1, 1), np.uint8), np.zeros((1, 1), np.float32), np.zeros(256, np.int32), np.ones(256, np.float32),
        np.arange(3.0), 1, 1, np.zeros(2, np.uint8), np.zeros((1, 1), np.uint8))
def _shot_noise_loop(level: np.ndarray, u: np.ndarray, base: np.ndarray, threshold: np.ndarray,
                     offset: np.ndarray, photons: int, buckets: int, lut: np.ndarray, out: np.ndarray) -> None:
    """`noise.shot_noise`'s guide-table inverse CDF, one value at a time ((B, N) levels, uniforms and out)."""
    for b in range(level.shape[0]):
        for i in range(level.shape[1]):
            lv = np.int64(level[b, i])
            bucket = np.int64(np.int32(u[b, i] * np.float32(buckets))) + lv * buckets
            count = np.int64(base[bucket])
            if count < 0:
                key = np.float64(u[b, i]) + 2.0 * np.float64(lv)
                count = np.int64(np.searchsorted(offset, key, side="right")) - lv * photons
            elif u[b, i] >= threshold[bucket]:
                count += 1
            out[b, i] = lut[min(count, photons)]


def hsv_adjust_cpu(x_u8: np.ndarray, s_scale: float, s_shift: float, v_shift: float) -> np.ndarray | None:
    """Brightness / saturate of uint8 (B, 3, H, W) (see `_hsv_adjust_loop`), or None without Numba."""
    x = np.ascontiguousarray(x_u8)
    return run(_hsv_adjust_loop, np.empty_like(x), each(x), float(s_scale), float(s_shift), float(v_shift))


def _per_value(loop, x_u8: np.ndarray, values: np.ndarray, *args: object) -> np.ndarray | None:  # noqa: ANN001
    """loop over uint8 (B, ...) images and one value per element (B, ...), as (B, N) arrays; None without Numba."""
    b = len(x_u8)
    out = run(loop, np.empty((b, x_u8[0].size), np.uint8), each(x_u8.reshape(b, -1)), each(values.reshape(b, -1)),
              *args)
    return None if out is None else out.reshape(x_u8.shape)


def add_noise_cpu(x_u8: np.ndarray, noise: np.ndarray) -> np.ndarray | None:
    """uint8 of clip(x / 255 + noise, 0, 1) * 255 (float32 noise of the same shape), or None without Numba."""
    return _per_value(_add_noise_loop, x_u8, noise)


def impulse_noise_cpu(x_u8: np.ndarray, u: np.ndarray, amount: float) -> np.ndarray | None:
    """Salt and pepper from float32 uniforms of the same shape (`noise.impulse_noise`), or None without Numba."""
    return _per_value(_impulse_loop, x_u8, u, float(amount))


def shot_noise_cpu(level: np.ndarray, u: np.ndarray, tables: tuple[np.ndarray, ...], photons: int, buckets: int,
                   lut: np.ndarray) -> np.ndarray | None:
    """Shot noise of uint8 levels (B, N) with float32 uniforms (B, N) (`noise.shot_noise`); None without Numba."""
    return run(_shot_noise_loop, np.empty_like(level), each(level), each(u), *tables, int(photons), int(buckets), lut)


# NOTE: torch and NumPy copy a permuted uint8 image element by element with strided reads (about 8 ms for a
# 2048x1024 image); these row-wise loops take about 2 ms, which is what decides the JPEG round trip's speed.
@kernel(np.zeros((1, 3, 1, 2), np.uint8), np.zeros((1, 1, 2, 3), np.uint8))
def _interleave_loop(planes: np.ndarray, out: np.ndarray) -> None:
    """(B, 3, H, W) planes -> (B, H, W, 3) pixels."""
    for b in range(planes.shape[0]):
        for y in range(planes.shape[2]):
            for c in range(3):
                for x in range(planes.shape[3]):
                    out[b, y, x, c] = planes[b, c, y, x]


@kernel(np.zeros((1, 1, 2, 3), np.uint8), np.zeros((1, 3, 1, 2), np.uint8))
def _planar_loop(pixels: np.ndarray, out: np.ndarray) -> None:
    """(B, H, W, 3) pixels -> (B, 3, H, W) planes."""
    for b in range(pixels.shape[0]):
        for y in range(pixels.shape[1]):
            for c in range(3):
                for x in range(pixels.shape[2]):
                    out[b, c, y, x] = pixels[b, y, x, c]


def interleaved_cpu(planes: np.ndarray) -> np.ndarray | None:
    """uint8 (B, 3, H, W) as (B, H, W, 3), or None without Numba."""
    b, _, h, w = planes.shape
    return run(_interleave_loop, np.empty((b, h, w, 3), np.uint8), each(planes))


def planar_cpu(pixels: np.ndarray) -> np.ndarray | None:
    """uint8 (B, H, W, 3) as (B, 3, H, W), or None without Numba."""
    b, h, w, _ = pixels.shape
    return run(_planar_loop, np.empty((b, 3, h, w), np.uint8), each(pixels))
