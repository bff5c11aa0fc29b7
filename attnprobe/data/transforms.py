"""Evaluation preprocessing built from a model card's `Preprocessing` (resize, centre crop, normalise)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

if TYPE_CHECKING:
    from attnprobe.zoo import Preprocessing

_INTERPOLATION = {
    "bicubic": InterpolationMode.BICUBIC,
    "bilinear": InterpolationMode.BILINEAR,
    "nearest": InterpolationMode.NEAREST,
    "lanczos": InterpolationMode.LANCZOS,
}


def interpolation_mode(name: str) -> InterpolationMode:
    """torchvision interpolation mode for a card's interpolation name."""
    try:
        return _INTERPOLATION[name]
    except KeyError:
        from attnprobe.errors import UserError

        raise UserError(f"unknown interpolation {name!r} in model card; use one of {sorted(_INTERPOLATION)}") from None


def resize_size(pre: Preprocessing) -> int:
    """Shorter-side size before the centre crop, as timm computes it: floor(input_size / crop_pct)."""
    return int(math.floor(pre.input_size / pre.crop_pct))


def resize_and_crop(image: Image.Image, pre: Preprocessing) -> Image.Image:
    """Resize the shorter side to `input_size / crop_pct` and centre-crop `input_size` (PIL in, PIL out)."""
    image = TF.resize(image.convert("RGB"), resize_size(pre), interpolation=interpolation_mode(pre.interpolation))
    return TF.center_crop(image, [pre.input_size, pre.input_size])


def normalize_transform(pre: Preprocessing) -> Callable[[Image.Image], torch.Tensor]:
    """To tensor + normalise only, for images already at the model's input size (e.g. ImageNet-C files)."""

    def apply(image: Image.Image) -> torch.Tensor:
        return TF.normalize(TF.to_tensor(image.convert("RGB")), list(pre.mean), list(pre.std))

    return apply


def eval_transform(pre: Preprocessing) -> Callable[[Image.Image], torch.Tensor]:
    """The standard evaluation transform of a model: resize, centre crop, to tensor, normalise."""
    norm = normalize_transform(pre)

    def apply(image: Image.Image) -> torch.Tensor:
        return norm(resize_and_crop(image, pre))

    return apply
