"""Digital corruptions: contrast, brightness, saturate, JPEG, pixelate, elastic transform.

Float inputs are in [0, 1], (B, 3, H, W); outputs are the 0-255 scale before truncation, or uint8.
"""

from __future__ import annotations

import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np
import torch

from attnprobe.corruptions import params as P
from attnprobe.corruptions.filters import gaussian_filter
from attnprobe.corruptions.loops_pixel import hsv_adjust_cpu, interleaved_cpu, planar_cpu
from attnprobe.corruptions.loops_resample import pixelate_cpu
from attnprobe.corruptions.loops_warp import elastic_cpu
from attnprobe.corruptions.params import Recipe
from attnprobe.corruptions.resample import map_coordinates, pil_resize, pil_resize_nearest, upscale_sources
from attnprobe.corruptions.rng import ImageRNG

__all__ = ["brightness", "contrast", "elastic_transform", "jpeg_compression", "jpeg_roundtrip", "pixelate",
           "saturate"]


def contrast(x: torch.Tensor, severity: int) -> torch.Tensor:
    """(x - mean) * c + mean with the mean of each channel, c = 0.4 .. 0.05."""
    c = P.CONTRAST[severity - 1]
    mean = x.mean(dim=(-2, -1), keepdim=True)
    return x.sub_(mean).mul_(c).add_(mean).clamp_(0, 1).mul_(255)


def _rgb_to_hsv(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """skimage's rgb2hsv of (B, 3, H, W) in [0, 1], float64 and the same operations, so the same bits."""
    r, g, b = rgb.unbind(1)
    v = torch.maximum(torch.maximum(r, g), b)
    delta = v - torch.minimum(torch.minimum(r, g), b)
    grey = delta == 0
    delta_safe = delta.masked_fill(grey, 1.0)
    s = (delta / v.masked_fill(grey, 1.0)).masked_fill_(grey, 0.0)
    # NOTE: skimage assigns red, then green, then blue: on ties the later channel wins.
    h = torch.where(b == v, (r - g).div_(delta_safe).add_(4.0),
                    torch.where(g == v, (b - r).div_(delta_safe).add_(2.0), (g - b).div_(delta_safe)))
    h = torch.remainder(h.div_(6.0), 1.0).masked_fill_(grey, 0.0)
    return h, s, v


# which of (0, 1, f, 1 - f) each channel's k is in each hue sector (see `_hsv_to_rgb`)
_SECTOR_K = torch.tensor([[0, 2, 1, 1, 3, 0], [3, 0, 0, 2, 1, 1], [1, 1, 3, 0, 0, 2]])


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """skimage's hsv2rgb (float64, same operations, so the same bits) -> (B, 3, H, W).

    In sector i = floor(6 h) each channel is one of v, p = v(1-s), q = v(1-fs), t = v(1-(1-f)s) (f = 6h - i):
    all are v(1 - k s) with k in (0, 1, f, 1 - f), and k s, 1 - k s, v(1 - k s) round exactly as skimage's
    expressions do (multiplying by 0 or 1 is exact).
    """
    h6 = h * 6
    hi = torch.floor(h6)
    f = h6 - hi
    sector = torch.remainder(hi, 6).to(torch.int64)  # (B, H, W)
    ks = torch.stack([torch.zeros_like(f), torch.ones_like(f), f, 1 - f])  # (4, B, H, W)
    choice = _SECTOR_K.to(h.device)[:, sector]  # (3, B, H, W)
    k = ks.gather(0, choice)  # (3, B, H, W)
    return (1 - k * s).mul_(v).transpose(0, 1)


def brightness(x_u8: torch.Tensor, severity: int) -> torch.Tensor:
    """HSV value + c (clipped to 1), c = 0.1 .. 0.5: skimage's rgb2hsv / hsv2rgb round trip in float64."""
    c = P.BRIGHTNESS[severity - 1]
    if x_u8.device.type == "cpu" and (out := hsv_adjust_cpu(x_u8.numpy(), 1.0, 0.0, c)) is not None:
        return torch.from_numpy(out)
    h, s, v = _rgb_to_hsv(x_u8.to(torch.float64) / 255)
    out = _hsv_to_rgb(h, s, (v + c).clamp_(0, 1))
    return out.clamp_(0, 1).mul_(255)


def saturate(x_u8: torch.Tensor, severity: int) -> torch.Tensor:
    """HSV saturation * a + b (clipped to [0, 1]): skimage's rgb2hsv / hsv2rgb round trip in float64."""
    a, b = P.SATURATE[severity - 1]
    if x_u8.device.type == "cpu" and (out := hsv_adjust_cpu(x_u8.numpy(), a, b, 0.0)) is not None:
        return torch.from_numpy(out)
    h, s, v = _rgb_to_hsv(x_u8.to(torch.float64) / 255)
    out = _hsv_to_rgb(h, (s * a + b).clamp_(0, 1), v)
    return out.clamp_(0, 1).mul_(255)


# --- JPEG -------------------------------------------------------------------------------------------------------


def _jpeg_planes(planes: np.ndarray, quality: int, out: np.ndarray) -> None:
    """JPEG round trip of one (3, H, W) uint8 image with PIL, written into `out` (3, H, W).

    NOTE: PIL merges and splits the planes itself (cheaper than interleaving them in torch or NumPy).
    """
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.merge("RGB", [Image.fromarray(p) for p in planes]).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as decoded:
        rgb = decoded if decoded.mode == "RGB" else decoded.convert("RGB")
        for k, band in enumerate(rgb.split()):
            out[k] = np.asarray(band)


# NOTE: PIL frees the GIL while it codes or resizes; threads pay off only when each image is big enough to hide
# their hand-offs (at 224 px they were slower than one thread, even on a quiet machine).
_THREAD_MIN_PIXELS = 512 * 512


def _workers(n: int, pixels: int) -> int:
    if pixels < _THREAD_MIN_PIXELS:
        return 1
    return min(n, max(1, torch.get_num_threads()), os.cpu_count() or 1)


def _map_planes(fn, batch: torch.Tensor, out_hw: tuple[int, int] | None = None) -> torch.Tensor:  # noqa: ANN001
    """fn(planes, out) over the (3, H, W) NumPy images of a uint8 batch (on the CPU), in threads for big images.

    Returns:
        the CPU uint8 (B, 3, *out_hw) results (out_hw defaults to H x W).
    """
    chw = batch.detach().to("cpu").contiguous().numpy()  # (B, 3, H, W)
    out = np.empty((*chw.shape[:2], *(out_hw or chw.shape[-2:])), dtype=np.uint8)
    workers = _workers(len(chw), chw.shape[-2] * chw.shape[-1])

    def run(indices: range) -> None:
        for i in indices:
            fn(chw[i], out[i])

    if workers <= 1:
        run(range(len(chw)))
    else:  # NOTE: one contiguous run of images per thread, few hand-offs
        bounds = np.linspace(0, len(chw), workers + 1).astype(int)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(run, [range(a, b) for a, b in itertools.pairwise(bounds)]))
    return torch.from_numpy(out)


def _interleaved(batch: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) as contiguous (B, H, W, 3)."""
    pixels = interleaved_cpu(batch.numpy())
    return batch.permute(0, 2, 3, 1).contiguous() if pixels is None else torch.from_numpy(pixels)


def _planar(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) as contiguous (B, 3, H, W)."""
    planes = planar_cpu(pixels.numpy())
    return pixels.permute(0, 3, 1, 2).contiguous() if planes is None else torch.from_numpy(planes)


def _torchvision_jpeg(batch: torch.Tensor, quality: int) -> torch.Tensor:
    """torchvision's JPEG round trip of a CPU uint8 (B, 3, H, W) batch (libjpeg-turbo, GIL released).

    NOTE: libjpeg reads and writes interleaved pixels; torchvision takes and gives (3, H, W) tensors and permutes
    them itself with slow strided copies unless they are views of interleaved memory, so the layout changes happen
    here, in compiled loops (half the round trip's time at 2048x1024 otherwise).
    """
    from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

    coded = encode_jpeg([img.permute(2, 0, 1) for img in _interleaved(batch)], quality=quality)
    decoded = decode_jpeg(coded, mode=ImageReadMode.RGB)  # (3, H, W) views of interleaved memory
    return _planar(torch.stack([img.permute(1, 2, 0) for img in decoded]))


@lru_cache(maxsize=16)
def _torchvision_jpeg_is_pils(quality: int) -> bool:
    """Whether torchvision's round trip gives PIL's pixels at `quality`, checked once on a probe image.

    Both bundle libjpeg(-turbo) with the same defaults (standard tables, 4:2:0, islow DCT, fancy upsampling); the
    check guards against an install where they differ (then PIL codes every image).
    """
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:37, 0:53]  # NOTE: odd sides: partial 16x16 blocks at the edges
    smooth = np.stack([xx * 4, yy * 6, (xx + yy) * 3]) % 256
    probe = np.where(xx < 26, smooth, rng.integers(0, 256, smooth.shape)).astype(np.uint8)
    want = np.empty_like(probe)
    _jpeg_planes(probe, quality, want)
    try:
        got = _torchvision_jpeg(torch.from_numpy(probe)[None], quality)[0].numpy()
    except Exception:  # noqa: BLE001 - no usable torchvision coder: PIL it is
        return False
    return np.array_equal(got, want)


def jpeg_roundtrip(x_u8: torch.Tensor, quality: int) -> torch.Tensor:
    """Encode each (3, H, W) uint8 image as a baseline JPEG (libjpeg, 4:2:0) and decode it, on the CPU.

    PIL's `save(format="JPEG", quality=q)` and `Image.open` (libjpeg's standard tables, 4:2:0 chroma subsampling),
    bit for bit; torchvision's coder does it where it gives the same pixels (`_torchvision_jpeg_is_pils`) because it
    frees the GIL, so the engine's chunks code in parallel (PIL's coder holds it). GPU batches make the round trip
    on the CPU too: the GPU encoder (nvJPEG) quantises differently.
    """
    if x_u8.shape[0] == 0:
        return x_u8.clone()
    if _torchvision_jpeg_is_pils(int(quality)):
        return _torchvision_jpeg(x_u8.detach().to("cpu").contiguous(), int(quality)).to(x_u8.device)
    return _map_planes(lambda planes, out: _jpeg_planes(planes, quality, out), x_u8).to(x_u8.device)


def jpeg_compression(x_u8: torch.Tensor, severity: int) -> torch.Tensor:
    """JPEG round trip at quality 25 .. 7."""
    return jpeg_roundtrip(x_u8, P.JPEG_QUALITY[severity - 1])


# --- pixelate ---------------------------------------------------------------------------------------------------


def _pixelate_pil(planes: np.ndarray, size: tuple[int, int], rows: np.ndarray, cols: np.ndarray,
                  out: np.ndarray) -> None:
    """PIL's box downscale of a (3, H, W) image to `size` (w, h), then the upscale's gather, into `out` (3, H, W)."""
    from PIL import Image

    small = Image.merge("RGB", [Image.fromarray(p) for p in planes]).resize(size, Image.BOX)
    for k, band in enumerate(small.split()):
        np.take(np.take(np.asarray(band), rows, axis=0), cols, axis=1, out=out[k])


def pixelate(x_u8: torch.Tensor, severity: int, recipe: Recipe) -> torch.Tensor:
    """PIL box downscale by 0.6 .. 0.25, then back up with box (imagenet-c) or nearest (imagecorruptions).

    Upscaling copies one source pixel per output pixel in both recipes (`upscale_sources`). On the CPU a compiled
    loop does PIL's fixed-point arithmetic (`loops_resample`; PIL itself without Numba); elsewhere `pil_resize`.
    All give PIL's bytes.
    """
    c = P.PIXELATE[severity - 1]
    h, w = x_u8.shape[-2:]
    sh, sw = int(h * c), int(w * c)
    if x_u8.device.type == "cpu":
        rows, cols = upscale_sources(sh, h, recipe.pixelate_up), upscale_sources(sw, w, recipe.pixelate_up)
        out = pixelate_cpu(x_u8.numpy(), (sh, sw), rows, cols)
        if out is not None:
            return torch.from_numpy(out)
        return _map_planes(lambda planes, out: _pixelate_pil(planes, (sw, sh), rows, cols, out), x_u8)
    small = pil_resize(x_u8, sh, sw, "box")
    if recipe.pixelate_up == "box":
        return pil_resize(small, h, w, "box")
    return pil_resize_nearest(small, h, w)


# --- elastic transform ------------------------------------------------------------------------------------------


def _affine_inverses(h: int, w: int, shift: float, rng: ImageRNG) -> np.ndarray:
    """(B, 2, 3) float32: the inverse of each image's random 3-point affine map (OpenCV's warpAffine samples the
    source at inverse @ (x, y, 1)). The three points of the reference (the centre +- a third of the side) each
    move by up to `shift` pixels."""
    centre = np.array([w // 2, h // 2], dtype=np.float32)  # (x, y)
    third = min(h, w) // 3
    src = np.array([centre + third, [centre[0] + third, centre[1] - third], centre - third], dtype=np.float32)
    moves = rng.uniform((3, 2), -shift, shift, device="cpu").numpy()  # (B, 3, 2) float32
    lhs = np.c_[src.astype(np.float64), np.ones(3)]  # (3, 3)
    inverses = []
    for move in moves:
        forward = np.linalg.solve(lhs, (src + move).astype(np.float64)).T  # (2, 3): dst = A @ [src; 1]
        inverses.append(np.linalg.inv(np.r_[forward, [[0.0, 0.0, 1.0]]])[:2])
    return np.stack(inverses).astype(np.float32)


def _affine_sources(inverses: np.ndarray, h: int, w: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Source coordinates (rows, cols), (B, H, W), of the affine maps, on warpAffine's 1/32-pixel grid."""
    inv = torch.from_numpy(inverses).to(device)  # (B, 2, 3)
    xs = torch.arange(w, device=device, dtype=torch.float32)[None, None, :]
    ys = torch.arange(h, device=device, dtype=torch.float32)[None, :, None]
    cols = inv[:, 0, 0, None, None] * xs + inv[:, 0, 1, None, None] * ys + inv[:, 0, 2, None, None]  # (B, H, W)
    rows = inv[:, 1, 0, None, None] * xs + inv[:, 1, 1, None, None] * ys + inv[:, 1, 2, None, None]
    return rows.mul_(32).round_().div_(32), cols.mul_(32).round_().div_(32)


def elastic_transform(x_u8: torch.Tensor, severity: int, rng: ImageRNG, recipe: Recipe) -> torch.Tensor:
    """Smooth random displacement field (plus, for imagenet-c, a random affine map), linear interpolation."""
    b, _, h, w = x_u8.shape
    inverses = None
    if recipe.elastic == "imagenet-c":
        side = min(h, w) * P.ELASTIC_IMAGENET_C_SIDE
        alpha, sigma, shift = (k * side for k in P.ELASTIC_IMAGENET_C[severity - 1])
        inverses = _affine_inverses(h, w, shift, rng)
        low, high, sigmas = -1.0, 1.0, (sigma, sigma)
    else:
        alpha = P.ELASTIC_IMAGECORRUPTIONS_ALPHA[severity - 1]
        low, high, sigmas = -0.005 * h, 0.005 * h, (0.01 * h, 0.01 * w)
    fields = rng.uniform((2, h, w), low, high)  # (B, 2, H, W): dx then dy
    fields = gaussian_filter(fields, sigmas, "reflect", truncate=3.0).mul_(alpha)
    if x_u8.device.type == "cpu" and (out := elastic_cpu(x_u8.numpy(), inverses, fields.numpy())) is not None:
        return torch.from_numpy(out)
    x = x_u8.to(torch.float32).div_(255)
    if inverses is not None:
        x = map_coordinates(x, *_affine_sources(inverses, h, w, x.device), "mirror")  # OpenCV's BORDER_REFLECT_101
    ys = torch.arange(h, device=x.device, dtype=torch.float32)[:, None].expand(h, w)
    xs = torch.arange(w, device=x.device, dtype=torch.float32)[None, :].expand(h, w)
    out = map_coordinates(x, ys + fields[:, 1], xs + fields[:, 0], "reflect")
    return out.clamp_(0, 1).mul_(255)
