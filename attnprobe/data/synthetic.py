"""A deterministic synthetic image-classification set, generated in code (no download): "textured shapes".

Ten classes, each a shape filled with its own texture (`TEXTURES`), drawn at a random position, size, rotation and
colour on a cluttered background (multi-octave smooth colour noise plus soft blobs and strokes, a rough stand-in for a
natural scene). A tiny vision transformer learns it on two CPU cores in minutes, and its attention has something to
find: the object covers 10-35 % of the image, the rest is clutter.

Every image is a pure function of ``(seed, split, index)``: the generator is seeded with that triple, so an image
does not depend on which other images were drawn before it, on the number of workers, or on the machine. Labels are
balanced (``index % 10``). Train and val use different split ids, hence different images.

Usage::

    from attnprobe.data.synthetic import SyntheticShapes
    val = SyntheticShapes("val", num_images=1000)       # 64 x 64 by default
    img, label = val[0]                                 # PIL image, int (pass transform= for tensors)
    x, y = val.tensors()                                # uint8 (N, 3, S, S), int64 (N,) -- fast path for training
    write_image_folder(val, "data/shapes/val")          # export as an ImageFolder (class folders of PNGs)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from attnprobe.errors import UserError

__all__ = [
    "CLASSES",
    "TEXTURES",
    "DEFAULT_SIZES",
    "SPLITS",
    "SyntheticShapes",
    "render_image",
    "write_image_folder",
]

#: Class names, in label order. Each class is one shape with one texture family (colours and scales vary).
CLASSES = ("disc", "square", "triangle", "star", "cross", "ring", "hexagon", "crescent", "diamond", "ellipse")

#: The texture of each class, drawn in the image frame (the shape rotates, the texture does not).
TEXTURES = ("horizontal stripes", "checker", "vertical stripes", "dots", "diagonal stripes", "gradient",
            "anti-diagonal stripes", "speckle", "concentric waves", "grid")

#: Default number of images per split.
DEFAULT_SIZES = {"train": 6000, "val": 1000}

#: Split ids mixed into the seed, so that train and val never share an image.
SPLITS = {"train": 1, "val": 2}

#: Version of the generator; part of the fingerprint so that stored results never mix two generators.
GENERATOR_VERSION = 1


# --------------------------------------------------------------------------------------------------------------
# Low-level drawing helpers (numpy, float32 images in [0, 1], shape (S, S, 3))
# --------------------------------------------------------------------------------------------------------------


def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling (align-corners) of a (h, w, c) grid to (size, size, c)."""
    h, w = grid.shape[:2]
    ys = np.linspace(0.0, h - 1.0, size, dtype=np.float32)
    xs = np.linspace(0.0, w - 1.0, size, dtype=np.float32)
    y0 = np.minimum(ys.astype(np.int64), h - 2)
    x0 = np.minimum(xs.astype(np.int64), w - 2)
    fy = (ys - y0)[:, None, None]
    fx = (xs - x0)[None, :, None]
    rows = grid[y0] * (1 - fy) + grid[y0 + 1] * fy  # (size, w, c)
    return rows[:, x0] * (1 - fx) + rows[:, x0 + 1] * fx  # (size, size, c)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Multi-octave colour noise around a random palette, plus soft blobs and strokes (the clutter)."""
    base = rng.uniform(0.15, 0.85, size=3).astype(np.float32)
    img = np.broadcast_to(base, (size, size, 3)).copy()
    amp = 0.35
    for cells in (3, 6, 12, 24):
        img += amp * _upsample(rng.normal(0.0, 1.0, size=(cells, cells, 3)).astype(np.float32), size) * 0.5
        amp *= 0.55
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for _ in range(int(rng.integers(3, 7))):
        colour = rng.uniform(0.0, 1.0, size=3).astype(np.float32)
        cy, cx = rng.uniform(-0.1, 1.1, size=2)
        if rng.random() < 0.5:  # soft elliptical blob
            ry, rx = rng.uniform(0.05, 0.25, size=2)
            d = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
            alpha = np.clip(1.5 - d, 0.0, 1.0) * rng.uniform(0.3, 0.7)
        else:  # stroke: a soft line segment through (cy, cx)
            theta = rng.uniform(0, np.pi)
            dist = np.abs((yy - cy) * np.cos(theta) - (xx - cx) * np.sin(theta))
            along = np.abs((yy - cy) * np.sin(theta) + (xx - cx) * np.cos(theta))
            width = rng.uniform(0.01, 0.04)
            alpha = np.clip(1.0 - dist / width, 0.0, 1.0) * (along < rng.uniform(0.2, 0.6)) * rng.uniform(0.4, 0.8)
        img = img * (1 - alpha[..., None]) + colour * alpha[..., None]
    return img


def _shape_mask(label: int, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Soft coverage (0..1) of the class shape in object coordinates (u, v), unit radius, about 1.5 px soft edge."""
    r = np.sqrt(u * u + v * v)
    a = np.arctan2(v, u)
    if label == 0:  # disc
        d = r - 1.0
    elif label == 1:  # square
        d = np.maximum(np.abs(u), np.abs(v)) - 0.8
    elif label == 2:  # triangle (equilateral, inscribed in the unit circle)
        k = [np.cos(t) * u + np.sin(t) * v for t in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3)]
        d = np.maximum(np.maximum(k[0], k[1]), k[2]) - 0.5
    elif label == 3:  # five-pointed star
        d = r - (0.62 + 0.38 * np.cos(5 * a)) * 1.05
    elif label == 4:  # cross
        d = np.minimum(np.maximum(np.abs(u) - 0.3, np.abs(v) - 0.95), np.maximum(np.abs(u) - 0.95, np.abs(v) - 0.3))
    elif label == 5:  # ring
        d = np.abs(r - 0.72) - 0.28
    elif label == 6:  # hexagon
        k = [np.abs(np.cos(t) * u + np.sin(t) * v) for t in (0.0, np.pi / 3, 2 * np.pi / 3)]
        d = np.maximum(np.maximum(k[0], k[1]), k[2]) - 0.85
    elif label == 7:  # crescent: a disc minus a shifted disc
        d = np.maximum(r - 1.0, 0.8 - np.sqrt((u - 0.45) ** 2 + v * v))
    elif label == 8:  # diamond (rhombus, taller than wide)
        d = np.abs(u) / 0.7 + np.abs(v) - 1.0
    else:  # ellipse
        d = np.sqrt((u / 1.0) ** 2 + (v / 0.55) ** 2) - 1.0
    return d


def _texture(label: int, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Texture value (0..1) of the class in object coordinates (u, v)."""
    freq = rng.uniform(2.5, 4.0)
    phase = rng.uniform(0, 2 * np.pi)
    if label == 0:  # horizontal stripes
        t = np.sin(freq * np.pi * v + phase) > 0
    elif label == 1:  # checker
        t = (np.floor(freq * (u + 2)) + np.floor(freq * (v + 2))) % 2 == 0
    elif label == 2:  # vertical stripes
        t = np.sin(freq * np.pi * u + phase) > 0
    elif label == 3:  # dots
        t = (np.sin(freq * np.pi * u + phase) * np.sin(freq * np.pi * v + phase)) > 0.35
    elif label == 4:  # diagonal stripes
        t = np.sin(freq * np.pi * (u + v) / 1.4 + phase) > 0
    elif label == 5:  # smooth gradient
        return np.clip(0.5 + 0.5 * (u * np.cos(phase) + v * np.sin(phase)), 0.0, 1.0)
    elif label == 6:  # anti-diagonal stripes
        t = np.sin(freq * np.pi * (u - v) / 1.4 + phase) > 0
    elif label == 7:  # speckle (fixed-scale random noise)
        return (rng.random(u.shape) > 0.5).astype(np.float32)
    elif label == 8:  # concentric waves
        t = np.sin(freq * 1.5 * np.pi * np.sqrt(u * u + v * v) + phase) > 0
    else:  # grid lines
        t = (np.abs(np.sin(freq * np.pi * u + phase)) < 0.35) | (np.abs(np.sin(freq * np.pi * v + phase)) < 0.35)
    return t.astype(np.float32)


def render_image(seed: int, split: str, index: int, size: int = 64) -> tuple[np.ndarray, int]:
    """Render one image of the set.

    Args:
        seed: dataset seed.
        split: "train" or "val".
        index: image index within the split.
        size: side length in pixels.

    Returns:
        (uint8 array (size, size, 3), label).
    """
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    label = index % len(CLASSES)
    rng = np.random.default_rng([GENERATOR_VERSION, seed, SPLITS[split], index])
    img = _background(rng, size)
    radius = rng.uniform(0.2, 0.34) * size
    cy, cx = rng.uniform(radius * 0.7, size - radius * 0.7, size=2)
    theta = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dy, dx = (yy - cy) / radius, (xx - cx) / radius
    u = np.cos(theta) * dx + np.sin(theta) * dy  # object coordinates, unit radius
    v = -np.sin(theta) * dx + np.cos(theta) * dy
    coverage = np.clip(0.5 - _shape_mask(label, u, v, rng) * radius / 1.5, 0.0, 1.0)[..., None]
    # Two contrasting colours for the texture, so the object is visible on any background.
    c1 = rng.uniform(0.0, 1.0, size=3).astype(np.float32)
    c2 = np.clip(1.0 - c1 + rng.normal(0.0, 0.15, size=3), 0.0, 1.0).astype(np.float32)
    # NOTE: the texture is drawn in the image frame (only the shape rotates), so its orientation is a class cue that
    # a small patch embedding sees at once; with rotating textures the four stripe classes differ only by shape.
    tex = _texture(label, dx, dy, rng)[..., None]
    obj = c1 * tex + c2 * (1 - tex)
    shade = 1.0 + 0.15 * (dx * rng.normal() + dy * rng.normal())[..., None]  # mild lighting gradient
    img = img * (1 - coverage) + np.clip(obj * shade, 0.0, 1.0) * coverage
    img = img + rng.normal(0.0, 0.015, size=img.shape)  # sensor noise
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), label


class SyntheticShapes(Dataset):
    """The synthetic "textured shapes" set (see the module docstring).

    Args:
        split: "train" or "val".
        num_images: images in the split (default 6000 for train, 1000 for val).
        size: side length in pixels (64-96 is the intended range; any size >= 16 works).
        seed: dataset seed; the same seed always gives the same images.
        transform: optional callable applied to each PIL image in ``__getitem__``.
    """

    classes = CLASSES

    def __init__(self, split: str = "train", num_images: int | None = None, size: int = 64, seed: int = 0,
                 transform: Callable[[Image.Image], Any] | None = None) -> None:
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
        if size < 16:
            raise UserError(f"synthetic image size {size} is too small; use at least 16 (64 is the default)")
        self.split = split
        self.num_images = DEFAULT_SIZES[split] if num_images is None else int(num_images)
        if self.num_images < 1:
            raise UserError(f"num_images must be positive, got {self.num_images}")
        self.size = size
        self.seed = seed
        self.transform = transform
        self.targets = [i % len(CLASSES) for i in range(self.num_images)]
        self._cache: torch.Tensor | None = None

    @property
    def fingerprint(self) -> str:
        """A string that identifies exactly these images (for the results store)."""
        return f"synthetic-shapes-v{GENERATOR_VERSION}:seed={self.seed}:{self.split}:n={self.num_images}:{self.size}px"

    def __len__(self) -> int:
        return self.num_images

    def array(self, index: int) -> np.ndarray:
        """Image ``index`` as a uint8 array (S, S, 3)."""
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} is outside a split of {self.num_images} images")
        if self._cache is not None:
            return self._cache[index].permute(1, 2, 0).numpy()
        return render_image(self.seed, self.split, index, self.size)[0]

    def image(self, index: int) -> Image.Image:
        """Image ``index`` as an RGB PIL image."""
        return Image.fromarray(self.array(index), mode="RGB")

    def sample_name(self, index: int) -> str:
        return f"{self.split}/{CLASSES[self.targets[index]]}/{index:06d}"

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img = self.image(index)
        return (self.transform(img) if self.transform is not None else img), self.targets[index]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images as one uint8 tensor (N, 3, S, S) and the labels (N,); rendered once, then cached."""
        if self._cache is None:
            out = torch.empty(self.num_images, 3, self.size, self.size, dtype=torch.uint8)
            for i in range(self.num_images):
                out[i] = torch.from_numpy(render_image(self.seed, self.split, i, self.size)[0]).permute(2, 0, 1)
            self._cache = out
        return self._cache, torch.tensor(self.targets, dtype=torch.int64)


def write_image_folder(ds: SyntheticShapes, root: str | Path) -> Path:
    """Write a split as an ImageFolder tree ``root/<class>/<index>.png`` (e.g. to inspect it or train elsewhere).

    Returns:
        The root folder.
    """
    root = Path(root)
    for name in CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)
    for i in range(len(ds)):
        ds.image(i).save(root / CLASSES[ds.targets[i]] / f"{i:06d}.png")
    return root
