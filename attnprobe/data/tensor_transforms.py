"""The evaluation transforms on uint8 image tensors, on any device, bit-identical to the PIL path.

The CPU path decodes with PIL and resizes with `PIL.Image.resize` (`attnprobe.data.transforms`). The device path
(`attnprobe.engine.device_input`) decodes JPEGs with `torchvision.io.decode_jpeg` and resizes here, on the GPU or on
the CPU. To give the same tensors, `resize_like_pil` reimplements Pillow's two-pass resampling (`Resample.c`):
the same filter weights in double precision, quantised to the same 22-bit fixed-point integers, a horizontal pass
rounded to uint8, then a vertical pass. The sums are exact integer arithmetic (int64), so the result does not depend
on the device or on the order of summation: on the bundled photos and random images it equals Pillow bit for bit
(`tests/test_device_input.py`). `torch.nn.functional.interpolate(..., antialias=True)` is *not* used: it resizes in
one float pass without the intermediate rounding and clipping, and differs from PIL by up to 23 levels on noisy
images with bicubic overshoot.

    recipe = TensorRecipe.from_preprocessing(pre, resize=True, crop=True)
    x = recipe.finish(torch.stack([recipe.geometry(img) for img in images]))   # (B, 3, S, S) normalised float32
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torchvision.transforms import functional as TF

__all__ = ["PIL_FILTERS", "TensorRecipe", "normalize", "resize_like_pil", "resize_shorter", "shorter_side_size"]

#: Pillow's fixed-point precision for 8-bit images (Resample.c: 32 - 8 - 2 bits).
_PRECISION_BITS = 22
#: Largest temporary gather (elements) per pass; larger images are resampled in row blocks.
_MAX_GATHER = 1 << 24


def _bilinear(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


def _bicubic(x: np.ndarray) -> np.ndarray:
    a = -0.5  # NOTE: Pillow's a; torch's non-antialiased bicubic uses -0.75
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _sinc(x: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        px = x * math.pi
        return np.where(x == 0.0, 1.0, np.sin(px) / px)


def _lanczos(x: np.ndarray) -> np.ndarray:
    return np.where((-3.0 <= x) & (x < 3.0), _sinc(x) * _sinc(x / 3), 0.0)


#: interpolation name -> (filter, support), as Pillow defines them.
PIL_FILTERS = {"bilinear": (_bilinear, 1.0), "bicubic": (_bicubic, 2.0), "lanczos": (_lanczos, 3.0)}


@lru_cache(maxsize=256)
def _coefficients(in_size: int, out_size: int, interpolation: str) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for one axis.

    Returns:
        (index, weight): (out, k) int64 source indices and (out, k) int64 fixed-point weights (0 beyond each
        output pixel's window).
    """
    filt, support0 = PIL_FILTERS[interpolation]
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = support0 * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    center = (np.arange(out_size, dtype=np.float64) + 0.5) * scale  # (out,)
    # NOTE: C's (int) truncates toward zero; negative starts are clipped to 0 either way
    xmin = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)
    xmax = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size) - xmin  # taps per output
    taps = np.arange(ksize, dtype=np.int64)[None, :]  # (1, k)
    valid = taps < xmax[:, None]  # (out, k)
    w = np.where(valid, filt(((taps + xmin[:, None]) - center[:, None] + 0.5) * (1.0 / filterscale)), 0.0)
    total = np.cumsum(w, axis=1)[:, -1:]  # sequential sums, in Pillow's order
    w = np.where(total != 0.0, w / np.where(total != 0.0, total, 1.0), w)
    fixed = np.where(w < 0, w * (1 << _PRECISION_BITS) - 0.5, w * (1 << _PRECISION_BITS) + 0.5)
    weight = np.where(valid, np.trunc(fixed), 0).astype(np.int64)
    index = np.where(valid, taps + xmin[:, None], xmin[:, None])  # padding taps read any valid pixel, weight 0
    return index, weight


_DEVICE_COEFFS: dict[tuple[int, int, str, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}


def _device_coefficients(in_size: int, out_size: int, interpolation: str,
                         device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The coefficients on `device`: flat source indices (out * k,) and weights (out, k), int32 when every partial
    sum of 255 * |weight| fits in int32 (always for these filters; checked anyway), else int64."""
    key = (in_size, out_size, interpolation, device)
    hit = _DEVICE_COEFFS.get(key)
    if hit is None:
        if len(_DEVICE_COEFFS) > 512:
            _DEVICE_COEFFS.clear()
        index, weight = _coefficients(in_size, out_size, interpolation)
        fits = 255 * int(np.abs(weight).sum(axis=1).max()) + (1 << _PRECISION_BITS) < 2**31
        dtype = torch.int32 if fits else torch.int64
        hit = (torch.from_numpy(index.reshape(-1)).to(device), torch.from_numpy(weight).to(device, dtype))
        _DEVICE_COEFFS[key] = hit
    return hit


def _resample_rows(img: torch.Tensor, out_size: int, interpolation: str) -> torch.Tensor:
    """One Pillow pass along the first dimension: (L, R) uint8 -> (out_size, R) uint8."""
    index, weight = _device_coefficients(img.shape[0], out_size, interpolation, img.device)
    k = weight.shape[1]
    cols = max(1, _MAX_GATHER // max(index.numel(), 1))
    out = torch.empty((out_size, img.shape[1]), dtype=torch.uint8, device=img.device)
    for c in range(0, img.shape[1], cols):
        block = img[:, c:c + cols]
        # NOTE: gathering whole rows (dim 0) is a memcpy per row, far faster than gathering along the last dim
        taps = block.index_select(0, index).view(out_size, k, block.shape[1]).to(weight.dtype)  # (out, k, r)
        # NOTE: exact integer sums, as Pillow's; no partial sum can overflow (checked in _device_coefficients)
        acc = (taps * weight[:, :, None]).sum(1, dtype=weight.dtype) + (1 << (_PRECISION_BITS - 1))  # (out, r)
        out[:, c:c + cols] = (acc >> _PRECISION_BITS).clamp_(0, 255).to(torch.uint8)
    return out


def resize_like_pil(img: torch.Tensor, size_hw: tuple[int, int], interpolation: str = "bicubic") -> torch.Tensor:
    """Resize a uint8 image to `(height, width)` exactly as `PIL.Image.resize` does (RGB/L images).

    Args:
        img: (C, H, W) uint8, on any device.
        size_hw: output (height, width).
        interpolation: "bilinear", "bicubic" or "lanczos" (Pillow's filters, with antialiasing when shrinking).
    """
    if img.dtype != torch.uint8 or img.ndim != 3:
        raise TypeError(f"resize_like_pil expects a (C, H, W) uint8 image, got {img.dtype} {tuple(img.shape)}")
    if interpolation not in PIL_FILTERS:
        raise ValueError(f"no tensor resampling for interpolation {interpolation!r}; use one of {sorted(PIL_FILTERS)}")
    h, w = int(size_hw[0]), int(size_hw[1])
    c = img.shape[0]
    if img.shape[2] != w:  # NOTE: Pillow resizes horizontally first, into a uint8 image, then vertically
        rows = img.permute(2, 0, 1).reshape(img.shape[2], -1)  # (W, C*H)
        img = _resample_rows(rows, w, interpolation).view(w, c, -1).permute(1, 2, 0)  # (C, H, w)
    if img.shape[1] != h:
        rows = img.permute(1, 0, 2).reshape(img.shape[1], -1)  # (H, C*w)
        img = _resample_rows(rows, h, interpolation).view(h, c, -1).permute(1, 0, 2)  # (C, h, w)
    return img.contiguous()


def shorter_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """Output (height, width) when the shorter side becomes `size`, with torchvision's rounding (as `TF.resize`)."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    return (new_long, size) if width <= height else (size, new_long)


def resize_shorter(img: torch.Tensor, size: int, interpolation: str) -> torch.Tensor:
    """`TF.resize(pil_image, size)` on a (C, H, W) uint8 tensor: shorter side to `size`, unchanged if it fits."""
    hw = shorter_side_size(img.shape[-2], img.shape[-1], size)
    if hw == (img.shape[-2], img.shape[-1]):
        return img
    return resize_like_pil(img, hw, interpolation)


def normalize(batch_u8: torch.Tensor, mean: tuple[float, ...] | None, std: tuple[float, ...] | None) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> float32, as `TF.to_tensor` then `TF.normalize` compute it (same operations, same
    rounding); `mean=None` keeps pixel space [0, 1] (PGD)."""
    x = batch_u8.to(torch.float32).div_(255)
    if mean is None or std is None:
        return x
    m = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)


@dataclass(frozen=True)
class TensorRecipe:
    """The tensor version of one CPU evaluation transform (see `attnprobe.data.transforms`, `data.imagenet_c`).

    Per image: `resize` the shorter side (torchvision's size rule, Pillow's resampling), centre-`crop`, then `fit`:
    resize + crop to `fit` x `fit` only if the image is not already that size (released ImageNet-C files). Per
    batch: `finish` normalises with `mean`/`std` (or only scales to [0, 1] when they are None).
    """

    interpolation: str
    resize: int | None = None
    crop: int | None = None
    fit: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @classmethod
    def from_preprocessing(cls, pre: Any, *, resize: bool, crop: bool, fit: bool = True,
                           normalise: bool = True) -> TensorRecipe:
        """The recipe of a model's `Preprocessing` (`resize`: shorter side to input_size / crop_pct)."""
        from attnprobe.data.transforms import resize_size

        size = int(pre.input_size)
        return cls(interpolation=str(pre.interpolation), resize=resize_size(pre) if resize else None,
                   crop=size if crop else None, fit=size if fit else None,
                   mean=tuple(float(m) for m in pre.mean) if normalise else None,
                   std=tuple(float(s) for s in pre.std) if normalise else None)

    @property
    def supported(self) -> bool:
        """Whether the tensor path can reproduce this transform (Pillow filters only; not nearest)."""
        return self.interpolation in PIL_FILTERS

    def geometry(self, img: torch.Tensor) -> torch.Tensor:
        """(3, H, W) uint8 -> (3, S, S) uint8: the transform's resize and crop."""
        if self.resize is not None:
            img = resize_shorter(img, self.resize, self.interpolation)
        if self.crop is not None:
            img = TF.center_crop(img, [self.crop, self.crop])
        if self.fit is not None and tuple(img.shape[-2:]) != (self.fit, self.fit):
            img = TF.center_crop(resize_shorter(img, self.fit, self.interpolation), [self.fit, self.fit])
        return img

    def finish(self, batch_u8: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) uint8 -> the model input (float32)."""
        return normalize(batch_u8, self.mean, self.std)
