"""Compiled weather loops: fog (plasma fractal and blend), the blend of snow."""

from __future__ import annotations

import numpy as np

from attnprobe.corruptions.jit import each, kernel, run

__all__ = ["fog_cpu", "snow_blend_cpu"]


@kernel(np.full((1, 3, 2, 2), 9, np.uint8), np.array([[0.5, -0.5, 0.25]], np.float32), 2, 2.0, 1.5,
        np.zeros((1, 3, 2, 2), np.uint8))
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
                up = ((i - 1) % n) * step + half
                for j in range(n):
                    total = ((grid[i * step + half, j * step + half] + grid[up, j * step + half])
                             + grid[i * step, j * step]) + grid[i * step, ((j + 1) % n) * step]
                    grid[i * step, j * step + half] = total / quarter + amp * noise[used + i * n + j]
            used += n * n
            for i in range(n):  # diamonds between vertical neighbours
                for j in range(n):
                    left = ((j - 1) % n) * step + half
                    total = ((grid[i * step + half, j * step + half] + grid[i * step + half, left])
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


def fog_cpu(x_u8: np.ndarray, draws: np.ndarray, size: int, decay: float, weight: float) -> np.ndarray | None:
    """Fog of uint8 (B, C, H, W) from each image's plasma draws (B, n) float32 (`_fog_loop`); None without Numba."""
    x = np.ascontiguousarray(x_u8)
    return run(_fog_loop, np.empty_like(x), each(x), each(draws), int(size), float(decay), float(weight))


@kernel(np.zeros((1, 3, 2, 2), np.uint8), np.zeros((1, 1, 2, 2), np.float32), 0.8, np.zeros((1, 3, 2, 2), np.uint8))
def _snow_blend_loop(x: np.ndarray, flakes: np.ndarray, keep: float, out: np.ndarray) -> None:
    """Snow's last step on uint8 (B, C, H, W): the image brightened towards 1.5 x its greyscale + 0.5 (weight
    1 - keep), plus the flakes (0-255, cropped top-left to H x W) and the flakes rotated by 180 degrees."""
    h, w = x.shape[2], x.shape[3]
    scale = np.float32(255.0)
    k_image, k_light = np.float32(keep), np.float32(1.0 - keep)
    for b in range(x.shape[0]):
        for y in range(h):
            for i in range(w):
                r = np.float32(x[b, 0, y, i]) / scale
                g = np.float32(x[b, 1, y, i]) / scale
                bl = np.float32(x[b, 2, y, i]) / scale
                grey = (np.float32(0.299) * r + np.float32(0.587) * g) + np.float32(0.114) * bl
                light = grey * np.float32(1.5) + np.float32(0.5)
                here = flakes[b, 0, y, i] / scale
                turned = flakes[b, 0, h - 1 - y, w - 1 - i] / scale
                for c in range(x.shape[1]):
                    v = np.float32(x[b, c, y, i]) / scale
                    v = k_image * v + k_light * max(v, light)
                    v = (v + here) + turned
                    out[b, c, y, i] = np.uint8(min(max(v, np.float32(0.0)), np.float32(1.0)) * scale)


def snow_blend_cpu(x_u8: np.ndarray, flakes: np.ndarray, keep: float) -> np.ndarray | None:
    """`_snow_blend_loop` of uint8 (B, 3, H, W) and float32 flakes (B, 1, >= H, >= W); None without Numba."""
    x = np.ascontiguousarray(x_u8)
    return run(_snow_blend_loop, np.empty_like(x), each(x), each(flakes.astype(np.float32, copy=False)), float(keep))
