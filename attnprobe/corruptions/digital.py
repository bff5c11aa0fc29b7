"""Digital corruptions: contrast, brightness, saturate, JPEG, pixelate, elastic transform.

Float inputs are in [0, 1], (B, 3, H, W); outputs are the 0-255 scale before truncation, or uint8.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from attnprobe.corruptions import params as P
from attnprobe.corruptions.filters import gaussian_filter
from attnprobe.corruptions.params import Recipe
from attnprobe.corruptions.resample import map_coordinates, pil_resize, pil_resize_nearest
from attnprobe.corruptions.rng import ImageRNG

__all__ = ["brightness", "contrast", "elastic_transform", "jpeg_compression", "jpeg_roundtrip", "pixelate",
           "saturate"]


def contrast(x: torch.Tensor, severity: int) -> torch.Tensor:
    """(x - mean) * c + mean with the mean of each channel, c = 0.4 .. 0.05."""
    c = P.CONTRAST[severity - 1]
    mean = x.mean(dim=(-2, -1), keepdim=True)
    return x.sub_(mean).mul_(c).add_(mean).clamp_(0, 1).mul_(255)


def brightness(x: torch.Tensor, severity: int) -> torch.Tensor:
    """HSV value + c (clipped to 1), c = 0.1 .. 0.5, as skimage's rgb2hsv / hsv2rgb round trip.

    With hue and saturation fixed, every RGB channel is proportional to the value V, so the round trip is
    rgb * V' / V (a black pixel, V = 0, becomes grey V').
    """
    c = P.BRIGHTNESS[severity - 1]
    value = x.amax(dim=1, keepdim=True)  # (B, 1, H, W)
    new = (value + c).clamp_(0, 1)
    scale = torch.where(value > 0, new / value.clamp(min=1e-12), torch.zeros_like(value))
    out = torch.where(value > 0, x * scale, new.expand_as(x))
    return out.clamp_(0, 1).mul_(255)


def saturate(x: torch.Tensor, severity: int) -> torch.Tensor:
    """HSV saturation * a + b (clipped to [0, 1]), as skimage's rgb2hsv / hsv2rgb round trip.

    With hue and value fixed, each channel is V - (S' / S) (V - channel). A grey pixel (S = 0) has hue 0 (red) in
    skimage, so it becomes (V, V (1 - S'), V (1 - S')).
    """
    a, b = P.SATURATE[severity - 1]
    value = x.amax(dim=1, keepdim=True)
    delta = value - x.amin(dim=1, keepdim=True)
    sat = torch.where(value > 0, delta / value.clamp(min=1e-12), torch.zeros_like(value))
    new = (sat * a + b).clamp_(0, 1)
    coloured = value - (new * value / delta.clamp(min=1e-12)) * (value - x)
    grey = torch.cat([value, value * (1 - new), value * (1 - new)], dim=1)
    return torch.where(delta > 0, coloured, grey).clamp_(0, 1).mul_(255)


# --- JPEG -------------------------------------------------------------------------------------------------------


def _jpeg_one(image: torch.Tensor, quality: int) -> torch.Tensor:
    from torchvision.io import decode_jpeg, encode_jpeg

    return decode_jpeg(encode_jpeg(image, quality=quality))


def jpeg_roundtrip(x_u8: torch.Tensor, quality: int) -> torch.Tensor:
    """Encode each (3, H, W) uint8 image as a baseline JPEG (libjpeg, 4:2:0) and decode it, on the CPU.

    Byte-identical to PIL's `save(format="JPEG", quality=q)` and `Image.open` (both use libjpeg's standard tables
    and 4:2:0 chroma subsampling; checked in the tests). GPU batches make the round trip on the CPU too: the GPU
    encoder (nvJPEG) quantises differently.
    """
    cpu = x_u8.detach().to("cpu").contiguous()
    workers = min(len(cpu), max(1, torch.get_num_threads()), os.cpu_count() or 1)
    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            out = list(pool.map(lambda im: _jpeg_one(im, quality), cpu.unbind(0)))
    else:
        out = [_jpeg_one(im, quality) for im in cpu.unbind(0)]
    return torch.stack(out).to(x_u8.device)


def jpeg_compression(x_u8: torch.Tensor, severity: int) -> torch.Tensor:
    """JPEG round trip at quality 25 .. 7."""
    return jpeg_roundtrip(x_u8, P.JPEG_QUALITY[severity - 1])


# --- pixelate ---------------------------------------------------------------------------------------------------


def pixelate(x_u8: torch.Tensor, severity: int, recipe: Recipe) -> torch.Tensor:
    """PIL box downscale by 0.6 .. 0.25, then back up with box (imagenet-c) or nearest (imagecorruptions)."""
    c = P.PIXELATE[severity - 1]
    h, w = x_u8.shape[-2:]
    small = pil_resize(x_u8, int(h * c), int(w * c), "box")
    if recipe.pixelate_up == "box":
        return pil_resize(small, h, w, "box")
    return pil_resize_nearest(small, h, w)


# --- elastic transform ------------------------------------------------------------------------------------------


def _affine_sources(h: int, w: int, shift: float, rng: ImageRNG, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Source coordinates (rows, cols), (B, H, W), of OpenCV's warpAffine for a random 3-point affine map.

    The three points of the reference (the centre +- a third of the side) each move by up to `shift` pixels;
    warpAffine samples the source at the inverse map of every output pixel, on a 1/32-pixel grid.
    """
    centre = np.array([w // 2, h // 2], dtype=np.float32)  # (x, y)
    third = min(h, w) // 3
    src = np.array([centre + third, [centre[0] + third, centre[1] - third], centre - third], dtype=np.float64)
    moves = rng.uniform((3, 2), -shift, shift, device="cpu").numpy()  # (B, 3, 2) float32
    rows, cols = [], []
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    for move in moves:
        dst = (src.astype(np.float32) + move).astype(np.float64)
        # forward map dst = A @ [src; 1]; warpAffine samples src at the inverse map of each output pixel
        a = np.linalg.solve(np.c_[src, np.ones(3)], dst).T  # (2, 3)
        inv = np.linalg.inv(np.r_[a, [[0.0, 0.0, 1.0]]])[:2]  # (2, 3)
        u = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
        v = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
        cols.append(torch.round(u * 32) / 32)
        rows.append(torch.round(v * 32) / 32)
    return torch.stack(rows).to(device, torch.float32), torch.stack(cols).to(device, torch.float32)


def elastic_transform(x: torch.Tensor, severity: int, rng: ImageRNG, recipe: Recipe) -> torch.Tensor:
    """Smooth random displacement field (plus, for imagenet-c, a random affine map), linear interpolation."""
    b, _, h, w = x.shape
    ys = torch.arange(h, device=x.device, dtype=torch.float32)[:, None].expand(h, w)
    xs = torch.arange(w, device=x.device, dtype=torch.float32)[None, :].expand(h, w)
    if recipe.elastic == "imagenet-c":
        side = min(h, w) * P.ELASTIC_IMAGENET_C_SIDE
        alpha, sigma, shift = (k * side for k in P.ELASTIC_IMAGENET_C[severity - 1])
        rows, cols = _affine_sources(h, w, shift, rng, x.device)
        x = map_coordinates(x, rows, cols, "mirror")  # OpenCV's default border, BORDER_REFLECT_101
        low, high, sigmas = -1.0, 1.0, (sigma, sigma)
    else:
        alpha = P.ELASTIC_IMAGECORRUPTIONS_ALPHA[severity - 1]
        low, high, sigmas = -0.005 * h, 0.005 * h, (0.01 * h, 0.01 * w)
    fields = rng.uniform((2, h, w), low, high)  # (B, 2, H, W): dx then dy
    fields = gaussian_filter(fields, sigmas, "reflect", truncate=3.0).mul_(alpha)
    out = map_coordinates(x, ys + fields[:, 1], xs + fields[:, 0], "reflect")
    return out.clamp_(0, 1).mul_(255)

