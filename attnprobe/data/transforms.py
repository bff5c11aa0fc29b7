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
    from attnprobe.data.tensor_transforms import TensorRecipe
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


class NormalizeTransform:
    """To tensor + normalise only, for images already at the model's input size (e.g. ImageNet-C files).

    A class rather than a closure so that DataLoader workers can pickle it (spawned processes on macOS/Windows).
    """

    def __init__(self, pre: Preprocessing) -> None:
        self.mean, self.std = list(pre.mean), list(pre.std)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return TF.normalize(TF.to_tensor(image.convert("RGB")), self.mean, self.std)

    def tensor_recipe(self) -> TensorRecipe:
        """The same transform on uint8 tensors (the device input path)."""
        from attnprobe.data.tensor_transforms import TensorRecipe

        return TensorRecipe("bicubic", mean=tuple(self.mean), std=tuple(self.std))


class EvalTransform:
    """The standard evaluation transform of a model: resize, centre crop, to tensor, normalise (picklable)."""

    def __init__(self, pre: Preprocessing) -> None:
        self.pre = pre
        self.normalize = NormalizeTransform(pre)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.normalize(resize_and_crop(image, self.pre))

    def tensor_recipe(self) -> TensorRecipe:
        """The same transform on uint8 tensors (the device input path)."""
        from attnprobe.data.tensor_transforms import TensorRecipe

        return TensorRecipe.from_preprocessing(self.pre, resize=True, crop=True, fit=False)


def normalize_transform(pre: Preprocessing) -> Callable[[Image.Image], torch.Tensor]:
    """To tensor + normalise only (see `NormalizeTransform`)."""
    return NormalizeTransform(pre)


def eval_transform(pre: Preprocessing) -> Callable[[Image.Image], torch.Tensor]:
    """Resize, centre crop, to tensor, normalise (see `EvalTransform`)."""
    return EvalTransform(pre)
