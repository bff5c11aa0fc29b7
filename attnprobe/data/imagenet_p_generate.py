"""Regenerate ImageNet-P perturbation sequences from clean images, following `make_imagenet_p.py`.

The parameters come from `protocol/imagenet_p_perturbations.json` (hendrycks/robustness
`ImageNet-P/create_p/make_imagenet_p.py`). Every sequence starts from the clean image resized so that its
shorter side is 256 (bilinear) and center-cropped to 224x224, exactly as the released videos were made.

These are *regenerated* sequences, not the released videos, and results on them must be labelled so:

* the random draws differ (the original script used an unseeded global NumPy state; here every sequence has
  its own generator, seeded from a SHA-256 of (perturbation, difficulty, image id), so a rerun, another
  machine or another rank gives identical frames);
* frames go to the model uncompressed; the released frames went through x264 (`-crf 20`, or `-tune grain`
  for the noises), which itself perturbs the pixels slightly;
* ImageMagick's motion blur (`motion_blur`, `snow`) is re-implemented in NumPy (same one-sided Gaussian kernel,
  `width = 2 * radius + 1`, same offset rounding, edge pixels repeated) and may differ by rounding;
* geometric transforms (`translate`, `rotate`, `scale`, `shear`, `zoom_blur`) use today's
  `torchvision.transforms.functional.affine`, whose centre and shear conventions changed slightly since the
  torchvision 0.2 used in 2018; `tilt` and `spatter` use OpenCV as the original did.

Frames are produced lazily (a generator), so a sequence never has to be held in memory as a whole.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator

import numpy as np
from PIL import Image

from attnprobe.errors import UserError

__all__ = [
    "PERTURBATIONS",
    "NOISE_LEVELS",
    "APPROXIMATIONS",
    "num_frames",
    "sequence_seed",
    "prepare_image",
    "perturbation_frames",
    "motion_blur_magick",
]

#: All 14 ImageNet-P perturbations (10 test + 4 validation).
PERTURBATIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "motion_blur", "zoom_blur", "snow", "brightness", "translate", "rotate",
    "tilt", "scale", "speckle_noise", "gaussian_blur", "spatter", "shear",
)

#: Noise strength per difficulty (folders `<name>`, `<name>_2`, `<name>_3`): std, Poisson rate, speckle std.
NOISE_LEVELS: dict[str, dict[int, float]] = {
    "gaussian_noise": {1: 0.03, 2: 0.05, 3: 0.08},
    "shot_noise": {1: 300.0, 2: 120.0, 3: 60.0},
    "speckle_noise": {1: 0.05, 2: 0.10, 3: 0.15},
}

#: What differs from the released videos beyond random draws and video compression (shown by the CLI).
APPROXIMATIONS: dict[str, str] = {
    "motion_blur": "ImageMagick motion blur re-implemented in NumPy",
    "snow": "ImageMagick motion blur of the snow layer re-implemented in NumPy",
    "translate": "torchvision affine (nearest) of today, not torchvision 0.2",
    "rotate": "torchvision affine (bilinear) of today, not torchvision 0.2",
    "scale": "torchvision affine (bilinear) of today, not torchvision 0.2",
    "shear": "torchvision affine shear of today (the 0.2 shear matrix differed)",
    "zoom_blur": "torchvision affine zoom of today, not torchvision 0.2",
}

_SIZE = 224
_RESIZE = 256


def num_frames(perturbation: str) -> int:
    """Frames per sequence: 41 for `translate`, 31 for every other perturbation."""
    _check(perturbation)
    return 41 if perturbation == "translate" else 31


def _check(perturbation: str) -> None:
    if perturbation not in PERTURBATIONS:
        raise UserError(f"unknown ImageNet-P perturbation {perturbation!r}; choose one of: {', '.join(PERTURBATIONS)}")


def sequence_seed(image_id: str, perturbation: str, difficulty: int = 1) -> int:
    """A stable 63-bit seed for one sequence (SHA-256, not Python's per-process salted `hash`)."""
    digest = hashlib.sha256(f"imagenet_p|{perturbation}|{int(difficulty)}|{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def prepare_image(img: Image.Image) -> Image.Image:
    """Clean image → RGB, shorter side resized to 256 (bilinear), as `make_imagenet_p.py` did before cropping."""
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    return TF.resize(img.convert("RGB"), _RESIZE, interpolation=InterpolationMode.BILINEAR)


def _crop(img: Image.Image) -> Image.Image:
    import torchvision.transforms.functional as TF

    return TF.center_crop(img, [_SIZE, _SIZE])


def _to_uint8(x: np.ndarray) -> np.ndarray:
    # NOTE: the original script truncates (np.uint8(255 * x) / Tensor.mul(255).byte()), it does not round.
    return np.uint8(np.clip(x, 0, 1) * 255)


def _affine(img: Image.Image, angle: float = 0.0, translate: tuple[int, int] = (0, 0), scale: float = 1.0,
            shear: float = 0.0, bilinear: bool = True) -> np.ndarray:
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    mode = InterpolationMode.BILINEAR if bilinear else InterpolationMode.NEAREST
    out = TF.affine(img, angle=angle, translate=list(translate), scale=scale, shear=[shear, 0.0], interpolation=mode)
    return np.asarray(_crop(out))


def motion_blur_magick(x: np.ndarray, radius: float, sigma: float, angle: float) -> np.ndarray:
    """ImageMagick-style motion blur: a one-sided Gaussian smear along `angle` degrees.

    Output pixel (y, x) is `sum_i k_i * img(y + dy_i, x + dx_i)` for `i = 0 .. 2 * radius`, with
    `k_i ∝ exp(-i^2 / (2 sigma^2))`, `dx_i = ceil(i cos(angle) - 0.5)`, `dy_i = ceil(i sin(angle) - 0.5)`
    and edge pixels repeated beyond the border (ImageMagick's default virtual pixels).

    Args:
        x: (H, W) or (H, W, C) array.
        radius: kernel radius in pixels.
        sigma: Gaussian sigma in pixels.
        angle: direction in degrees.

    Returns:
        float64 array of the same shape.
    """
    width = int(2 * round(radius) + 1)
    k = np.exp(-(np.arange(width, dtype=np.float64) ** 2) / (2 * sigma * sigma))
    k /= k.sum()
    h, w = x.shape[:2]
    ca, sa = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    # edge padding once, then every shifted copy is a slice (same as clamping the indices, much faster)
    pad = width
    xp = np.pad(np.asarray(x, dtype=np.float64), [(pad, pad), (pad, pad)] + [(0, 0)] * (x.ndim - 2), mode="edge")
    out = np.zeros(x.shape, dtype=np.float64)
    for i in range(width):
        dx, dy = math.ceil(i * ca - 0.5), math.ceil(i * sa - 0.5)
        out += k[i] * xp[pad + dy:pad + dy + h, pad + dx:pad + dx + w]
    return out


def _clipped_zoom(img: np.ndarray, zoom: float) -> np.ndarray:
    from scipy.ndimage import zoom as scizoom

    h = img.shape[0]
    ch = int(np.ceil(h / zoom))
    top = (h - ch) // 2
    out = scizoom(img[top:top + ch, top:top + ch], (zoom, zoom, 1), order=1)
    trim = (out.shape[0] - h) // 2
    return out[trim:trim + h, trim:trim + h]


def _cv2():  # noqa: ANN202
    try:
        import cv2
    except ImportError:  # pragma: no cover - opencv comes with imagecorruptions
        raise UserError("tilt and spatter need OpenCV; install it with `pip install opencv-python-headless`") from None
    return cv2


# -- one generator per perturbation; each yields (224, 224, 3) uint8 frames --------------------------------------

def _noise(img: Image.Image, name: str, difficulty: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    crop = np.asarray(_crop(img))
    yield crop
    x = crop / 255.0
    level = NOISE_LEVELS[name][difficulty]
    for _ in range(1, 31):
        if name == "gaussian_noise":
            z = x + level * rng.standard_normal(x.shape)
        elif name == "shot_noise":
            z = rng.poisson(x * level) / level
        else:  # speckle_noise
            z = x + x * rng.normal(scale=level, size=x.shape)
        yield _to_uint8(z)


def _motion_blur(img: Image.Image, rng: np.random.Generator) -> Iterator[np.ndarray]:
    crop = np.asarray(_crop(img)).astype(np.float64)
    for i in range(31):
        yield np.uint8(np.clip(np.round(motion_blur_magick(crop, 10, 3, (i - 30) * 4)), 0, 255))


def _zoom_blur(img: Image.Image, rng: np.random.Generator) -> Iterator[np.ndarray]:
    crop = np.asarray(_crop(img))
    yield crop
    total = crop / 255.0
    for i in range(1, 31):
        total = total + _affine(img, scale=1 + 0.004 * i) / 255.0
        yield _to_uint8(total / (i + 1))


def _snow(img: Image.Image, rng: np.random.Generator) -> Iterator[np.ndarray]:
    x = np.asarray(_crop(img)) / 255.0
    layer = rng.normal(size=(_SIZE, _SIZE), loc=0.05, scale=0.3)
    layer = _clipped_zoom(layer[..., None], 3)
    layer[layer < 0.5] = 0
    layer = (np.clip(layer.squeeze(-1), 0, 1) * 255).astype(np.uint8)  # the original saved it as an 8-bit PNG
    gray = (x @ np.array([0.299, 0.587, 0.114]))[..., None]
    base = 0.85 * x + 0.15 * np.maximum(x, gray * 1.5 + 0.5)
    for i in range(31):
        moving = np.round(motion_blur_magick(layer.astype(np.float64), 14, 4, i * 4 - 150)) / 255.0
        moving = moving[..., None]
        yield _to_uint8(base + moving + np.rot90(moving, k=2))


def _brightness(img: Image.Image, rng: np.random.Generator) -> Iterator[np.ndarray]:
    from skimage.color import hsv2rgb, rgb2hsv

    hsv = rgb2hsv(np.asarray(_crop(img)) / 255.0)
    for i in range(31):
        z = hsv.copy()
        z[..., 2] = np.clip(z[..., 2] + (i - 15) * 2 / 100.0, 0, 1)
        yield _to_uint8(hsv2rgb(z))


def _translate(img: Image.Image, rng: np.random.Generator) -> Iterator[np.ndarray]:
    for i in range(41):
        yield _affine(img, translate=(i - 20, 0), bilinear=False)


def _rotate(img: Image.Image, rng: np.random.Generator) -> Iterator[np.ndarray]:
    for i in range(31):
        yield _affine(img, angle=i - 15)


def _scale(img: Image.Image, rng: np.random.Generator) -> Iterator[np.ndarray]:
    for i in range(31):
        yield _affine(img, scale=(i * 2.5 + 40) / 100.0)


def _shear(img: Image.Image, rng: np.random.Generator) -> Iterator[np.ndarray]:
    for i in range(31):
        yield _affine(img, shear=i - 15)


def _tilt(img: Image.Image, rng: np.random.Generator) -> Iterator[np.ndarray]:
    cv2 = _cv2()
    x = np.asarray(img)
    h, w = x.shape[:2]
    f = math.sqrt(w ** 2 + h ** 2)
    p1 = np.array([[1, 0, -w / 2], [0, 1, -h / 2], [0, 0, 1], [0, 0, 1]])
    t = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, f], [0, 0, 0, 1]])
    p2 = np.array([[f, 0, w / 2, 0], [0, f, h / 2, 0], [0, 0, 1, 0]])
    for i in range(31):
        a = math.radians(i - 15)  # phi = theta
        c, s = math.cos(a), math.sin(a)
        rx = np.array([[1, 0, 0, 0], [0, c, -s, 0], [0, s, c, 0], [0, 0, 0, 1]])
        ry = np.array([[c, 0, -s, 0], [0, 1, 0, 0], [s, 0, c, 0], [0, 0, 0, 1]])
        warped = cv2.warpPerspective(x, p2 @ t @ rx @ ry @ p1, (w, h))
        yield np.asarray(_crop(Image.fromarray(warped)))


def _gaussian_blur(img: Image.Image, rng: np.random.Generator) -> Iterator[np.ndarray]:
    from skimage.filters import gaussian

    x = np.asarray(_crop(img)) / 255.0
    for i in range(31):
        yield _to_uint8(gaussian(x, sigma=0.25 + 0.035 * i, channel_axis=-1, truncate=6.0))


def _spatter(img: Image.Image, rng: np.random.Generator) -> Iterator[np.ndarray]:
    from skimage.filters import gaussian

    cv2 = _cv2()
    x = np.asarray(_crop(img)).astype(np.float32) / 255.0
    liquid = gaussian(rng.normal(size=x.shape[:2], loc=0.65, scale=0.27), sigma=3.7)
    liquid[liquid < 0.69] = 0
    # pale turquoise, in the channel order the original applied it (it treated RGB arrays as BGR)
    color = np.array([175, 238, 238], dtype=np.float32) / 255.0
    ker = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])
    drip = np.array([0.05, 0.1, 0.15, 0.7])
    for _ in range(31):
        layer = (liquid * 255).astype(np.uint8)
        dist = 255 - cv2.Canny(layer, 50, 150)
        dist = cv2.distanceTransform(dist, cv2.DIST_L2, 5)
        _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
        dist = cv2.blur(dist, (3, 3)).astype(np.uint8)
        dist = cv2.equalizeHist(dist)
        dist = cv2.filter2D(dist, cv2.CV_8U, ker)
        dist = cv2.blur(dist, (3, 3)).astype(np.float32)
        m = layer * dist
        m = m / max(float(m.max()), 1e-12) * 0.6
        yield _to_uint8(x + m[..., None] * color)
        # the liquid runs down: each column is convolved with a short one-sided kernel
        liquid = np.apply_along_axis(lambda col: np.convolve(col, drip, mode="same"), 0, liquid)


_GENERATORS: dict[str, Callable[[Image.Image, np.random.Generator], Iterator[np.ndarray]]] = {
    "motion_blur": _motion_blur, "zoom_blur": _zoom_blur, "snow": _snow, "brightness": _brightness,
    "translate": _translate, "rotate": _rotate, "scale": _scale, "shear": _shear, "tilt": _tilt,
    "gaussian_blur": _gaussian_blur, "spatter": _spatter,
}


def perturbation_frames(image: Image.Image, perturbation: str, difficulty: int = 1, image_id: str = "",
                        seed: int | None = None) -> Iterator[np.ndarray]:
    """Lazily generate one regenerated ImageNet-P sequence from a clean image.

    Args:
        image: the clean image (any size; it is converted to RGB, resized to 256 and center-cropped to 224).
        perturbation: one of `PERTURBATIONS`.
        difficulty: 1, 2 or 3; selects the noise strength for the three noises (their `_2`/`_3` folders) and
            does not change the sequence of any other perturbation (there it only changes which frames are
            compared, see `attnprobe.robustness.imagenet_p`).
        image_id: stable identifier of the image (e.g. `ILSVRC2012_val_00000001`) that seeds the random draws.
        seed: explicit seed instead of the one derived from `image_id`.

    Yields:
        `num_frames(perturbation)` frames, (224, 224, 3) uint8 RGB.
    """
    _check(perturbation)
    if int(difficulty) not in (1, 2, 3):
        raise UserError(f"difficulty must be 1, 2 or 3, got {difficulty!r}; pass --difficulty 1, 2 or 3")
    rng = np.random.default_rng(sequence_seed(image_id, perturbation, difficulty) if seed is None else seed)
    img = prepare_image(image)
    if perturbation in NOISE_LEVELS:
        yield from _noise(img, perturbation, int(difficulty), rng)
    else:
        yield from _GENERATORS[perturbation](img, rng)
