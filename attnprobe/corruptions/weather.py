"""Weather corruptions: snow, frost, fog.

All take floats in [0, 1], (B, 3, H, W), and return the 0-255 scale before truncation.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from attnprobe.corruptions import params as P
from attnprobe.corruptions.blur import motion_blur_field
from attnprobe.corruptions.loops_weather import fog_cpu, snow_blend_cpu
from attnprobe.corruptions.params import Recipe
from attnprobe.corruptions.resample import zoom_center
from attnprobe.corruptions.rng import ImageRNG
from attnprobe.errors import UserError

__all__ = ["fog", "frost", "frost_picture", "plasma_fractal", "snow"]


# --- snow -------------------------------------------------------------------------------------------------------


def snow(x_u8: torch.Tensor, severity: int, rng: ImageRNG, recipe: Recipe) -> torch.Tensor:
    """Flakes: a zoomed, thresholded normal field, motion-blurred at a random angle in [-135, -45) degrees,
    added twice (once rotated by 180 degrees) to the image brightened towards its greyscale."""
    loc, scale, zoom, threshold, radius, sigma, keep = P.SNOW[severity - 1]
    b, _, h, w = x_u8.shape
    field = rng.normal((1, h, w), mean=loc, std=scale)  # (B, 1, H, W)
    # NOTE: imagenet-c trims the zoomed field to H x W (centre) first; imagecorruptions blurs it whole, then cuts.
    flakes = zoom_center(field, float(zoom), center_trim=True, keep_size=recipe.center_trim)
    flakes = flakes.masked_fill(flakes < threshold, 0.0).clamp_(0, 1)
    angles = rng.scalar_uniform(-135, -45)
    if recipe.snow_quantise_flakes:  # written as an 8-bit PNG for ImageMagick, which rounds its output
        flakes = motion_blur_field(flakes.mul(255).floor_(), radius, sigma, angles).round_().clamp_(0, 255)
    else:
        flakes = motion_blur_field(flakes.mul(255), radius, sigma, angles).round_()
    if x_u8.device.type == "cpu" and (out := snow_blend_cpu(x_u8.numpy(), flakes.numpy(), keep)) is not None:
        return torch.from_numpy(out)
    flakes = flakes[..., :h, :w].div_(255)
    x = x_u8.to(torch.float32).div_(255)
    grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)  # (B, 1, H, W) as OpenCV
    x = keep * x + (1 - keep) * torch.maximum(x, grey * 1.5 + 0.5)
    return x.add_(flakes).add_(flakes.flip(-1, -2)).clamp_(0, 1).mul_(255)


# --- frost ------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=6)
def _frost_source(index: int) -> np.ndarray:
    """Frost picture `index` (0-5) as RGB uint8, read from the `imagecorruptions` package (same files as the
    ImageNet-C repository's)."""
    import importlib.resources

    import cv2

    name = ["frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg"][index]
    try:
        ref = importlib.resources.files("imagecorruptions") / "frost" / name
    except ModuleNotFoundError:
        raise UserError("the frost corruption needs the frost pictures of the imagecorruptions package; "
                        "pip install imagecorruptions-imaug") from None
    with importlib.resources.as_file(ref) as path:
        bgr = cv2.imread(str(path))
    if bgr is None:
        raise UserError(f"cannot read the frost picture {name} of the imagecorruptions package; reinstall it")
    return np.ascontiguousarray(bgr[..., ::-1])


def frost_picture(index: int, h: int, w: int, always_enlarge: bool) -> np.ndarray:
    """The frost picture to crop for an H x W image: enlarged (OpenCV bicubic) when needed, RGB uint8.

    imagecorruptions always enlarges by 1.1x the factor that makes the picture cover the image (1 when it already
    does); imagenet-c crops the picture at its own size, and is extended here to enlarge like imagecorruptions
    only when the picture does not cover the image.
    """
    return _frost_resized(index, h, w, always_enlarge)


@lru_cache(maxsize=24)
def _frost_resized(index: int, h: int, w: int, always_enlarge: bool) -> np.ndarray:
    import cv2

    pic = _frost_source(index)
    fh, fw = pic.shape[:2]
    if fh > h and fw > w and not always_enlarge:
        return pic
    if fh >= h and fw >= w:
        factor = 1.0
    elif fw >= w:
        factor = h / fh
    elif fh >= h:
        factor = w / fw
    else:
        factor = max(h / fh, w / fw)
    factor *= 1.1
    size = (int(math.ceil(fw * factor)), int(math.ceil(fh * factor)))
    return np.ascontiguousarray(cv2.resize(pic, dsize=size, interpolation=cv2.INTER_CUBIC))


def frost(x_u8: torch.Tensor, severity: int, rng: ImageRNG, recipe: Recipe) -> torch.Tensor:
    """keep * image + weight * a random crop of a random frost picture (0-255 scale)."""
    keep, weight = P.FROST[severity - 1]
    b, _, h, w = x_u8.shape
    pictures = [frost_picture(pick, h, w, recipe.frost_always_enlarge)
                for pick in rng.scalar_integer(0, recipe.frost_pictures)]
    tops = rng.scalar_integer(0, [pic.shape[0] - h for pic in pictures])
    lefts = rng.scalar_integer(0, [pic.shape[1] - w for pic in pictures])
    crops = [torch.from_numpy(pic[top:top + h, left:left + w]).permute(2, 0, 1)
             for pic, top, left in zip(pictures, tops, lefts)]
    layer = torch.stack(crops).to(x_u8.device, torch.float32)  # (B, 3, H, W)
    return x_u8.to(torch.float32).mul_(keep).add_(layer, alpha=weight).clamp_(0, 255)


# --- fog --------------------------------------------------------------------------------------------------------


def plasma_draws(size: int, rng: ImageRNG) -> torch.Tensor:
    """The uniform noise in [-1, 1) of a plasma fractal (B, n): every fill of every level, in the order used."""
    levels = int(math.log2(size))
    counts = [(size // (size >> k)) ** 2 for k in range(levels)]  # points per fill at each level
    return rng.uniform((3 * sum(counts),), -1.0, 1.0)


def plasma_fractal(size: int, decay: float, draws: torch.Tensor) -> torch.Tensor:
    """Diamond-square height map (B, size, size) in [0, 1], as the reference's `plasma_fractal` (size a power of 2).

    Each level sets the centres of the squares, then of the diamonds, to the mean of their 4 neighbours (wrapping
    around) plus uniform noise of +-wibble^2, starting at wibble = 100 and dividing it by `decay` per level.
    """
    b = draws.shape[0]  # (B, total): `plasma_draws`
    grid = torch.zeros((b, size, size), dtype=torch.float32, device=draws.device)
    step, wibble, used = size, 100.0, 0

    def noisy_mean(total: torch.Tensor) -> torch.Tensor:
        nonlocal used
        n = total.shape[1] * total.shape[2]
        noise = draws[:, used:used + n].reshape(total.shape)
        used += n
        return total / 4 + wibble * wibble * noise

    while step >= 2:
        half = step // 2
        corners = grid[:, 0::step, 0::step]
        squares = corners + corners.roll(-1, 1)
        squares = squares + squares.roll(-1, 2)
        grid[:, half::step, half::step] = noisy_mean(squares)
        centres = grid[:, half::step, half::step]
        corners = grid[:, 0::step, 0::step]
        across = centres + centres.roll(1, 1) + corners + corners.roll(-1, 2)
        grid[:, 0::step, half::step] = noisy_mean(across)
        down = centres + centres.roll(1, 2) + corners + corners.roll(-1, 1)
        grid[:, half::step, 0::step] = noisy_mean(down)
        step //= 2
        wibble /= decay
    flat = grid.reshape(b, -1)
    low = flat.amin(1)[:, None, None]  # NOTE: amin/amax skip max's index search
    grid = grid - low
    return grid / grid.reshape(b, -1).amax(1)[:, None, None]


def fog(x_u8: torch.Tensor, severity: int, rng: ImageRNG) -> torch.Tensor:
    """Add weight * plasma fractal, then rescale so the image's old maximum maps to max / (max + weight)."""
    weight, decay = P.FOG[severity - 1]
    b, _, h, w = x_u8.shape
    size = 1 << max(1, (max(h, w) - 1).bit_length())
    draws = plasma_draws(size, rng)
    if x_u8.device.type == "cpu" and (out := fog_cpu(x_u8.numpy(), draws.numpy(), size, decay, weight)) is not None:
        return torch.from_numpy(out)
    x = x_u8.to(torch.float32).div_(255)
    peak = x.reshape(b, -1).amax(1)[:, None, None, None]
    plasma = plasma_fractal(size, float(decay), draws)[:, None, :h, :w]
    return x.add_(plasma, alpha=weight).mul_(peak / (peak + weight)).clamp_(0, 1).mul_(255)
