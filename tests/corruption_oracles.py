"""Per-image NumPy/SciPy/OpenCV oracles of the ``imagenet-c`` recipe where it differs from `imagecorruptions`.

Written for the tests from the algorithm of hendrycks/robustness `ImageNet-C/create_c/make_imagenet_c.py` (the code
that generated the released ImageNet-C), at 224x224. ImageMagick (its motion blur) is not available here: the
oracle uses ImageMagick's kernel (the one `imagecorruptions` re-implements) and rounds to 8 bits as ImageMagick
does. Each oracle takes an (H, W, 3) uint8 image and a `numpy.random.Generator`, and returns (H, W, 3) uint8.
"""

from __future__ import annotations

import importlib.resources
import math

import cv2
import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter, map_coordinates, zoom

_SNOW = ((0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7), (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
         (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65), (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55))
_MOTION = ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15))
_FROST = ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75))
_ELASTIC = ((2, 0.7, 0.1), (2, 0.08, 0.2), (0.05, 0.01, 0.02), (0.07, 0.01, 0.02), (0.12, 0.01, 0.02))
_PIXELATE = (0.6, 0.5, 0.4, 0.3, 0.25)


def _motion(layer: np.ndarray, radius: int, sigma: float, angle: float) -> np.ndarray:
    """ImageMagick's motion blur of a float (H, W[, C]) array: half-Gaussian taps along the angle, edges repeated."""
    width = 2 * radius + 1
    k = np.exp(-(np.arange(width) ** 2) / (2 * sigma * sigma))
    k /= k.sum()
    h, w = layer.shape[:2]
    out = np.zeros(layer.shape, dtype=np.float64)
    for i in range(width):
        dy = math.ceil(i * math.sin(math.radians(angle)) - 0.5)
        dx = math.ceil(i * math.cos(math.radians(angle)) - 0.5)
        rows = np.clip(np.arange(h) + dy, 0, h - 1)
        cols = np.clip(np.arange(w) + dx, 0, w - 1)
        out += k[i] * layer[rows][:, cols]
    return out


def motion_blur(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    radius, sigma = _MOTION[severity - 1]
    out = _motion(img.astype(np.float64), radius, sigma, rng.uniform(-45, 45))
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _clipped_zoom(layer: np.ndarray, factor: float) -> np.ndarray:
    h = layer.shape[0]
    crop = int(np.ceil(h / factor))
    top = (h - crop) // 2
    big = zoom(layer[top:top + crop, top:top + crop], factor, order=1)
    trim = (big.shape[0] - h) // 2
    return big[trim:trim + h, trim:trim + h]


def snow(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    loc, scale, factor, threshold, radius, sigma, keep = _SNOW[severity - 1]
    x = img.astype(np.float32) / 255.0
    flakes = _clipped_zoom(rng.normal(loc, scale, size=x.shape[:2]), factor)
    flakes[flakes < threshold] = 0
    flakes8 = (np.clip(flakes, 0, 1) * 255).astype(np.uint8)  # the 8-bit PNG handed to ImageMagick
    blurred = np.clip(np.round(_motion(flakes8.astype(np.float64), radius, sigma, rng.uniform(-135, -45))), 0, 255)
    flakes = (blurred / 255.0)[..., None]
    grey = cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)[..., None]
    x = keep * x + (1 - keep) * np.maximum(x, grey * 1.5 + 0.5)
    return (np.clip(x + flakes + np.rot90(flakes, k=2), 0, 1) * 255).astype(np.uint8)


def frost(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    keep, weight = _FROST[severity - 1]
    name = ["frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg"][rng.integers(5)]
    with importlib.resources.as_file(importlib.resources.files("imagecorruptions") / "frost" / name) as path:
        picture = cv2.imread(str(path))
    h, w = img.shape[:2]
    top, left = rng.integers(0, picture.shape[0] - h), rng.integers(0, picture.shape[1] - w)
    crop = picture[top:top + h, left:left + w][..., ::-1]
    return np.clip(keep * img.astype(np.float64) + weight * crop, 0, 255).astype(np.uint8)


def elastic_transform(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    alpha, sigma, shift = (244 * c for c in _ELASTIC[severity - 1])
    x = img.astype(np.float32) / 255.0
    h, w = x.shape[:2]
    centre = np.float32([h, w]) // 2
    third = min(h, w) // 3
    pts1 = np.float32([centre + third, [centre[0] + third, centre[1] - third], centre - third])
    pts2 = pts1 + rng.uniform(-shift, shift, size=pts1.shape).astype(np.float32)
    x = cv2.warpAffine(x, cv2.getAffineTransform(pts1, pts2), (w, h), borderMode=cv2.BORDER_REFLECT_101)
    dx = (gaussian_filter(rng.uniform(-1, 1, size=(h, w)), sigma, mode="reflect", truncate=3) * alpha)
    dy = (gaussian_filter(rng.uniform(-1, 1, size=(h, w)), sigma, mode="reflect", truncate=3) * alpha)
    rows = np.arange(h)[:, None] + dy.astype(np.float32)
    cols = np.arange(w)[None, :] + dx.astype(np.float32)
    out = np.stack([map_coordinates(x[..., c], [rows, cols], order=1, mode="reflect") for c in range(3)], -1)
    return (np.clip(out, 0, 1) * 255).astype(np.uint8)


def pixelate(img: np.ndarray, severity: int, rng: np.random.Generator | None = None) -> np.ndarray:
    c = _PIXELATE[severity - 1]
    h, w = img.shape[:2]
    small = Image.fromarray(img).resize((int(w * c), int(h * c)), Image.BOX)
    return np.asarray(small.resize((w, h), Image.BOX))


ORACLES = {"motion_blur": motion_blur, "snow": snow, "frost": frost, "elastic_transform": elastic_transform,
           "pixelate": pixelate}
