"""The two recipes and their per-severity parameters.

* ``"imagenet-c"`` follows `make_imagenet_c.py` (hendrycks/robustness), the code that generated the released
  ImageNet-C (224x224 images after Resize(256) + CenterCrop(224)).
* ``"imagecorruptions"`` follows the `imagecorruptions` package (the recipe of the released Cityscapes-C and of
  FAN's ImageNet-C scripts).

The severity tables are the same in both; the recipes differ in a few algorithms (`Recipe`):

=================  ==========================================  ===========================================
corruption         imagenet-c                                  imagecorruptions
=================  ==========================================  ===========================================
elastic_transform  random affine (3 points moved by up to       no affine; displacement field sigma 1% of
                   0.02-0.2 x side), then a displacement field  each side, alpha 12.5-30, drawn on
                   (sigma, alpha in units of the side)          +-0.5% of the height
frost              one of 5 pictures, cropped at their own      one of 6 pictures, always enlarged 1.1x
                   size                                         (bicubic) before cropping
pixelate           box down, box up (PIL; the same pixels as   box down, nearest up (PIL)
                   nearest, except at ties)
motion_blur        ImageMagick: rounded to the nearest level    NumPy kernel: truncated
snow               flakes quantised to 8 bits before the blur,  blur in float; zoomed field blurred before
                   zoomed field trimmed to the image centre     its top-left crop
zoom_blur          zoomed crops trimmed to the centre           zoomed crops cut at the top-left
=================  ==========================================  ===========================================

(At 224x224 the two zoom trims coincide, as do both snow crops; they differ by a pixel at other sizes.)

How the ``imagenet-c`` recipe generalises beyond 224x224 (the original code only runs at 224): every parameter in
pixels (noise, blur radii and sigmas, glass-blur displacements, motion-blur length, zoom factors, snow, spatter,
JPEG quality, pixelation factor) is kept, as `imagecorruptions` does; the size-bound parts follow the image:
glass blur shuffles the whole image (minus the border), fog's plasma map is the next power of two >= the longer
side (256 at 224, as the original) and cropped top-left, frost crops the picture at its own size and enlarges it
(bicubic, 1.1x margin, as `imagecorruptions`) only when the image is larger than the picture, and elastic
transform's constants, written as multiples of 244 in the original (a typo for the side 224, the authors note),
become multiples of ``min(H, W) * 244 / 224``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import numpy as np

from attnprobe.errors import UserError

__all__ = ["RECIPES", "Recipe", "get_recipe", "zoom_factors"]

RECIPES = ("imagenet-c", "imagecorruptions")


@dataclass(frozen=True)
class Recipe:
    """What differs between the two recipes (see the module docstring)."""

    name: str
    frost_pictures: int  # frost picks uniformly among the first N of the 6 pictures
    frost_always_enlarge: bool  # imagecorruptions enlarges every picture 1.1x; imagenet-c only when too small
    pixelate_up: str  # "box" or "nearest"
    elastic: str  # "imagenet-c" or "imagecorruptions"
    round_motion: bool  # ImageMagick rounds its motion blur; the NumPy kernel truncates
    snow_quantise_flakes: bool  # imagenet-c writes the flakes as an 8-bit PNG before ImageMagick blurs them
    center_trim: bool  # clipped zoom: trim the enlarged crop to the centre (imagenet-c) or cut top-left


_RECIPES = {
    "imagenet-c": Recipe("imagenet-c", frost_pictures=5, frost_always_enlarge=False, pixelate_up="box",
                         elastic="imagenet-c", round_motion=True, snow_quantise_flakes=True, center_trim=True),
    "imagecorruptions": Recipe("imagecorruptions", frost_pictures=6, frost_always_enlarge=True,
                               pixelate_up="nearest", elastic="imagecorruptions", round_motion=False,
                               snow_quantise_flakes=False, center_trim=False),
}


def get_recipe(name: str) -> Recipe:
    """The `Recipe` called `name`, else a `UserError` naming the choices."""
    if isinstance(name, str) and name in _RECIPES:
        return _RECIPES[name]
    close = difflib.get_close_matches(str(name), RECIPES, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise UserError(f"unknown corruption recipe {name!r}; {hint}choose one of: {', '.join(RECIPES)}")


# --- severity tables (index = severity - 1) ---------------------------------------------------------------------

GAUSSIAN_NOISE_STD = (0.08, 0.12, 0.18, 0.26, 0.38)
SHOT_NOISE_PHOTONS = (60, 25, 12, 5, 3)
IMPULSE_NOISE_AMOUNT = (0.03, 0.06, 0.09, 0.17, 0.27)
SPECKLE_NOISE_STD = (0.15, 0.2, 0.35, 0.45, 0.6)

GAUSSIAN_BLUR_SIGMA = (1, 2, 3, 4, 6)
GLASS_BLUR = ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2))  # (sigma, max shift, iterations)
DEFOCUS_BLUR = ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5))  # (disk radius, anti-alias sigma)
MOTION_BLUR = ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15))  # (radius, sigma)
ZOOM_BLUR = ((1.11, 0.01), (1.16, 0.01), (1.21, 0.02), (1.26, 0.02), (1.31, 0.03))  # arange(1, stop, step)

# (flake mean, flake std, zoom, threshold, blur radius, blur sigma, image weight)
SNOW = ((0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7), (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
        (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65), (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55))
FROST = ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75))  # (image weight, frost weight)
FOG = ((1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4))  # (fog weight, plasma decay)
# (liquid mean, liquid std, liquid sigma, threshold, intensity / mud sigma, mud?)
SPATTER = ((0.65, 0.3, 4, 0.69, 0.6, 0), (0.65, 0.3, 3, 0.68, 0.6, 0), (0.65, 0.3, 2, 0.68, 0.5, 0),
           (0.65, 0.3, 1, 0.65, 1.5, 1), (0.67, 0.4, 1, 0.65, 1.5, 1))

CONTRAST = (0.4, 0.3, 0.2, 0.1, 0.05)
BRIGHTNESS = (0.1, 0.2, 0.3, 0.4, 0.5)
SATURATE = ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2))  # (saturation factor, offset)
JPEG_QUALITY = (25, 18, 15, 10, 7)
PIXELATE = (0.6, 0.5, 0.4, 0.3, 0.25)
# imagenet-c: (alpha, sigma, affine shift) in units of the side (244 at 224 px)
ELASTIC_IMAGENET_C = ((2, 0.7, 0.1), (2, 0.08, 0.2), (0.05, 0.01, 0.02), (0.07, 0.01, 0.02), (0.12, 0.01, 0.02))
ELASTIC_IMAGENET_C_SIDE = 244 / 224
# imagecorruptions: alpha; sigma = 1% of each side, field drawn on +-0.5% of the height
ELASTIC_IMAGECORRUPTIONS_ALPHA = (250 * 0.05, 250 * 0.065, 250 * 0.085, 250 * 0.1, 250 * 0.12)


def zoom_factors(severity: int) -> list[float]:
    """The zoom factors of zoom blur, exactly the floats `np.arange(1, stop, step)` gives (1.0 first)."""
    stop, step = ZOOM_BLUR[severity - 1]
    return [float(z) for z in np.arange(1, stop, step)]
