"""Blur corruptions: gaussian, glass, defocus, motion, zoom.

All take floats in [0, 1], (B, 3, H, W), and return the 0-255 scale before truncation (motion blur with the
imagenet-c recipe returns it already rounded, as ImageMagick writes 8-bit pixels).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from attnprobe.corruptions import params as P
from attnprobe.corruptions.filters import correlate2d, gaussian_filter, gaussian_kernel1d, pad2d
from attnprobe.corruptions.loops_blur import glass_blur_cpu, motion_cpu, zoom_blur_cpu
from attnprobe.corruptions.params import Recipe
from attnprobe.corruptions.resample import clipped_zoom_axis, zoom_center
from attnprobe.corruptions.rng import ImageRNG

__all__ = ["defocus_blur", "disk_kernel", "gaussian_blur", "glass_blur", "glass_shuffle_index", "motion_blur",
           "motion_blur_field", "motion_taps", "zoom_blur"]


def gaussian_blur(x: torch.Tensor, severity: int) -> torch.Tensor:
    """skimage `gaussian` (sigma 1 .. 6, border 'nearest', truncate 4) of each channel."""
    return gaussian_filter(x, float(P.GAUSSIAN_BLUR_SIGMA[severity - 1]), "nearest").clamp_(0, 1).mul_(255)


# --- glass blur -------------------------------------------------------------------------------------------------


def glass_shuffle_index(h: int, w: int, shifts: torch.Tensor, max_shift: int, base: int = 0) -> torch.Tensor:
    """Where each pixel's value comes from after the reference's sequential local "swap" loop, exactly.

    The reference visits rows h = H - d .. d + 1 and, in each, columns w = W - d .. d + 1 (both descending),
    draws (dx, dy) in [-d, d) and runs ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` on NumPy views: the first
    assignment copies x[h', w'] into x[h, w], the second then copies that same value back, so each step is a *pull*
    ``x[h, w] <- x[h', w']`` of the *current* image (not a swap; NumPy and Numba agree). A pull from a pixel later
    in raster order reads a value that pixel already pulled (the loop runs backwards); from an earlier or an
    unvisited pixel, the original. So every pixel's value is the original at the end of a chain of forward pulls;
    the chains are resolved for all pixels at once by pointer jumping over the open chains only (O(log length)).

    Args:
        h, w: image size.
        shifts: (B, 2, h - 2d, w - 2d) integers (dx, dy) for the visited pixels, in row-major order of the region
            rows d + 1 .. h - d, columns d + 1 .. w - d.
        max_shift: d.
        base: subtracted from `shifts` (draws stored unsigned, in [0, 2d), pass d).

    Returns:
        (B, h * w) int64: flat source index of every output pixel.
    """
    d = max_shift
    b = shifts.shape[0]
    device = shifts.device
    n = h * w
    ptr = torch.arange(b * n, device=device).reshape(b, h, w)  # NOTE: one index space for the whole batch
    if h - d <= d or w - d <= d:
        return ptr.reshape(b, n) - torch.arange(b, device=device)[:, None] * n
    step = shifts[:, 1].to(torch.int64) * w + shifts[:, 0] - base * (w + 1)  # (B, h', w') flat offset of each pull
    region = (slice(None), slice(d + 1, h - d + 1), slice(d + 1, w - d + 1))
    ptr[region] += step
    forward = torch.zeros((b, h, w), dtype=torch.bool, device=device)
    forward[region] = step > 0
    flat_ptr = ptr.reshape(-1)
    # NOTE: a pull from an unvisited pixel also looks "open" here; that pixel points to itself and is done, so the
    # first jump closes it with the original value, as the reference reads it.
    done = ~forward.reshape(-1)
    active = forward.reshape(-1).nonzero().squeeze(1)
    while active.numel():
        target = flat_ptr[active]
        flat_ptr[active] = flat_ptr[target]
        finished = done[target]
        done[active] = finished
        active = active[~finished]
    return flat_ptr.reshape(b, n) - torch.arange(b, device=device)[:, None] * n


def glass_blur(x_u8: torch.Tensor, severity: int, rng: ImageRNG) -> torch.Tensor:
    """Gaussian blur, 8-bit truncation, local pixel pulls (1-3 passes), Gaussian blur again."""
    sigma, d, passes = P.GLASS_BLUR[severity - 1]
    b, c, h, w = x_u8.shape
    region = (max(h - 2 * d, 0), max(w - 2 * d, 0))
    shifts = rng.small_integers((passes, 2, *region), 2 * d)  # (B, P, 2, h', w') uint8: d + (dx, dy)
    if x_u8.device.type == "cpu":
        out = glass_blur_cpu(x_u8.numpy(), gaussian_kernel1d(float(sigma)), shifts.numpy(), d)
        if out is not None:
            return torch.from_numpy(out)
    x8 = gaussian_filter(x_u8.to(torch.float32).div_(255), float(sigma), "nearest").mul_(255).floor_()
    index = None
    for k in range(passes):
        step = glass_shuffle_index(h, w, shifts[:, k], d, base=d)
        # NOTE: a later pass pulls from the image the earlier passes left: compose the maps.
        index = step if index is None else index.gather(1, step)
    flat = x8.reshape(b, c, h * w)
    shuffled = flat.gather(2, index[:, None].expand(b, c, -1)).reshape(b, c, h, w)
    return gaussian_filter(shuffled.div_(255), float(sigma), "nearest").clamp_(0, 1).mul_(255)


# --- defocus blur -----------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def disk_kernel(radius: int, alias_sigma: float) -> np.ndarray:
    """The anti-aliased disk of defocus blur (float32), as the reference builds it with OpenCV.

    A binary disk on a 17x17 grid (radius <= 8) or a (2r+1)^2 grid, normalised, then blurred with a 3x3 (5x5 for
    radius > 8) Gaussian of sigma `alias_sigma`, mirrored borders (OpenCV's GaussianBlur on the kernel image).
    """
    half = 8 if radius <= 8 else radius
    ksize = 3 if radius <= 8 else 5
    grid = np.arange(-half, half + 1)
    xx, yy = np.meshgrid(grid, grid)
    disk = ((xx ** 2 + yy ** 2) <= radius ** 2).astype(np.float32)
    disk /= disk.sum()
    g = np.exp(-((np.arange(ksize) - (ksize - 1) / 2.0) ** 2) / (2.0 * alias_sigma ** 2))
    g = (g / g.sum()).astype(np.float32)
    r = ksize // 2
    idx = np.arange(-r, disk.shape[0] + r)
    period = 2 * disk.shape[0] - 2
    idx = np.mod(idx, period)
    idx = np.where(idx >= disk.shape[0], period - idx, idx)  # mirrored (BORDER_REFLECT_101)
    padded = disk[np.ix_(idx, idx)].astype(np.float64)
    n = disk.shape[0]
    rows = sum(g[i] * padded[i:i + n, :] for i in range(ksize))
    out = sum(g[i] * rows[:, i:i + n] for i in range(ksize))
    return out.astype(np.float32)


def defocus_blur(x: torch.Tensor, severity: int) -> torch.Tensor:
    """Correlation of each channel with the anti-aliased disk (radius 3 .. 10), mirrored borders (OpenCV)."""
    radius, alias = P.DEFOCUS_BLUR[severity - 1]
    # NOTE: taps below 1e-12 of the peak (the anti-aliasing Gaussian's far tails) are dropped: < 1e-9 grey levels
    kernel = disk_kernel(radius, alias)
    kernel = torch.from_numpy(np.where(kernel < 1e-12 * kernel.max(), 0.0, kernel).astype(np.float32))
    return correlate2d(x, kernel, "mirror").clamp_(0, 1).mul_(255)


# --- motion blur ------------------------------------------------------------------------------------------------


def motion_taps(radius: int, sigma: float, angle: float, h: int, w: int) -> list[tuple[int, int, float]]:
    """The (row offset, column offset, weight) taps of one motion blur, as ImageMagick's MotionBlurImage.

    L = 2 * radius + 1 taps with weights exp(-i^2 / (2 sigma^2)) normalised over i < L; tap i reads the pixel at
    offset (ceil(i sin a - 1/2), ceil(i cos a - 1/2)), border pixels repeated. A tap whose offset reaches the image
    size ends the kernel there (imagecorruptions; it never happens for images larger than the kernel).
    """
    length = 2 * radius + 1
    i = np.arange(length, dtype=np.float64)
    weights = np.exp(-(i ** 2) / (2 * sigma ** 2)) / (math.sqrt(2 * math.pi) * sigma)
    weights /= weights.sum()
    py, px = length * math.sin(math.radians(angle)), length * math.cos(math.radians(angle))
    hyp = math.hypot(py, px)
    taps: dict[tuple[int, int], float] = {}
    for t in range(length):
        dy, dx = math.ceil((t * py) / hyp - 0.5), math.ceil((t * px) / hyp - 0.5)
        if abs(dy) >= h or abs(dx) >= w:
            break
        taps[(dy, dx)] = taps.get((dy, dx), 0.0) + float(weights[t])
    return [(dy, dx, wt) for (dy, dx), wt in taps.items()]


def motion_blur_field(x: torch.Tensor, radius: int, sigma: float, angles: list[float]) -> torch.Tensor:
    """Motion-blur (B, C, H, W) with one angle per image: a weighted sum of shifted copies, border pixels repeated."""
    b, c, h, w = x.shape
    if x.device.type == "cpu":
        out = motion_cpu(x.numpy(), [motion_taps(radius, sigma, angle, h, w) for angle in angles])
        if out is not None:
            return torch.from_numpy(out)
    reach = 2 * radius + 1
    padded = pad2d(x, reach, reach, reach, reach, "nearest")
    out = torch.empty_like(x)
    for i, angle in enumerate(angles):
        acc = out[i]
        for k, (dy, dx, wt) in enumerate(motion_taps(radius, sigma, angle, h, w)):
            view = padded[i, :, reach + dy:reach + dy + h, reach + dx:reach + dx + w]
            if k == 0:
                torch.mul(view, wt, out=acc)
            else:
                acc.add_(view, alpha=wt)
    return out


def motion_blur(x: torch.Tensor, severity: int, rng: ImageRNG, recipe: Recipe) -> torch.Tensor:
    """Motion blur along a random angle in [-45, 45) degrees (radius 10 .. 20, sigma 3 .. 15)."""
    radius, sigma = P.MOTION_BLUR[severity - 1]
    angles = rng.scalar_uniform(-45, 45)
    out = motion_blur_field(x.mul_(255), radius, sigma, angles).clamp_(0, 255)
    return out.round_() if recipe.round_motion else out


# --- zoom blur --------------------------------------------------------------------------------------------------


@lru_cache(maxsize=32)
def _zoom_axis(size: int, factor: float, center_trim: bool) -> tuple[np.ndarray, np.ndarray]:
    """Source index (int64) and weight of the next source (float32) along one axis of `zoom_center`'s output.

    The float32 steps of torch's corner-aligned bilinear upsampling (scale (n - 1) / (m - 1), source = scale *
    position); the last source pixel is read as (second-to-last, weight 1) so that every read has a neighbour.
    """
    crop, start, enlarged, offset = clipped_zoom_axis(size, factor, center_trim)
    scale = np.float32(crop - 1) / np.float32(enlarged - 1)
    real = scale * np.arange(offset, offset + size, dtype=np.float32)
    index = real.astype(np.int64)
    weight = real - index.astype(np.float32)
    edge = index >= crop - 1
    index[edge], weight[edge] = crop - 2, np.float32(1.0)
    return index + start, weight.astype(np.float32)


@lru_cache(maxsize=32)
def _zoom_tables(h: int, w: int, severity: int, center_trim: bool) -> tuple[np.ndarray, ...]:
    """Row and column tables of zoom blur's zooms other than 1 (`loops_blur.zoom_blur_cpu`), and how many copies of the
    image itself the mean holds (the image, plus the zoom by 1.0)."""
    factors = [z for z in P.zoom_factors(severity) if z != 1.0]
    rows = [_zoom_axis(h, z, center_trim) for z in factors]
    cols = [_zoom_axis(w, z, center_trim) for z in factors]
    identities = 1 + len(P.zoom_factors(severity)) - len(factors)
    return (np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows]), np.stack([c[0] for c in cols]),
            np.stack([c[1] for c in cols]), identities)


def zoom_blur(x_u8: torch.Tensor, severity: int, recipe: Recipe) -> torch.Tensor:
    """Mean of the image and its centred zooms by factors 1 .. 1.3."""
    h, w = x_u8.shape[-2:]
    if x_u8.device.type == "cpu":
        out = zoom_blur_cpu(x_u8.numpy(), *_zoom_tables(h, w, severity, recipe.center_trim))
        if out is not None:
            return torch.from_numpy(out)
    x = x_u8.to(torch.float32).div_(255)
    factors = P.zoom_factors(severity)
    acc = x.clone()
    for z in factors:
        acc.add_(zoom_center(x, z, recipe.center_trim))
    return acc.div_(len(factors) + 1).clamp_(0, 1).mul_(255)
