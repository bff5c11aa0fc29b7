"""Image sources for the diagnostics: a folder, explicit files, or the bundled samples, each with stable ids.

An `ImageSet` is a dataset id (the `dataset` column of the results store) and an ordered list of `ImageRecord`s.
Ids are stable across runs and machines (a file's path relative to the data root, or a sample name), so a rerun
finds what is already stored and baseline and TAP/ADL models are compared on exactly the same images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from attnprobe.errors import UserError

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from attnprobe.zoo import Preprocessing

__all__ = ["IMAGE_EXTENSIONS", "ImageRecord", "ImageSet", "evenly_spaced", "image_files", "image_folder",
           "load_rgb", "model_input_u8", "normalize_u8"]

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class ImageRecord:
    """One image: its stable `id` and where it comes from (a file path; subclasses load other sources)."""

    id: str
    source: str

    def load(self) -> Image.Image:
        """The image as an RGB PIL image."""
        return load_rgb(self.source)


@dataclass
class ImageSet:
    """An ordered set of images with the dataset id under which their results are stored."""

    dataset: str
    records: list[ImageRecord] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.records]


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image file as RGB; a missing or unreadable file is a `UserError`."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise UserError(f"image file not found: {p}; check the path")
    try:
        with Image.open(p) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"cannot read image {p} ({e}); pass a JPEG/PNG file") from None


def evenly_spaced(count: int, n: int | None) -> list[int]:
    """Indices of `n` items spread evenly over `count` (all when `n` is None or >= count)."""
    if n is None or n >= count:
        return list(range(count))
    if n < 1:
        raise UserError(f"--n must be at least 1, got {n}")
    return sorted({int(round(i)) for i in np.linspace(0, count - 1, n)})


def image_folder(root: str | Path, n: int | None = None) -> ImageSet:
    """Images under `root` (recursively), sorted by relative path; `n` picks an evenly spaced subset.

    Ids are the posix paths relative to `root`; the dataset id is `folder:<absolute root>`.
    """
    root_p = Path(root).expanduser()
    if not root_p.is_dir():
        raise UserError(f"--data {root}: not a directory; pass a folder of images (searched recursively)")
    root_p = root_p.resolve()
    files = sorted((p for p in root_p.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()),
                   key=lambda p: p.relative_to(root_p).as_posix())
    if not files:
        raise UserError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root_p}")
    files = [files[i] for i in evenly_spaced(len(files), n)]
    return ImageSet(dataset=f"folder:{root_p.as_posix()}",
                    records=[ImageRecord(id=p.relative_to(root_p).as_posix(), source=str(p)) for p in files])


def image_files(paths: Sequence[str | Path]) -> ImageSet:
    """Explicit image files, in the given order; ids are their absolute paths, the dataset id is `files`."""
    records, seen = [], set()
    for path in paths:
        p = Path(path).expanduser()
        if not p.is_file():
            raise UserError(f"image file not found: {path}; check the path")
        pid = p.resolve().as_posix()
        if pid not in seen:
            seen.add(pid)
            records.append(ImageRecord(id=pid, source=str(p)))
    return ImageSet(dataset="files", records=records)


def model_input_u8(image: Image.Image, pre: Preprocessing) -> np.ndarray:
    """Resize + centre-crop as the model's evaluation transform does, as (S, S, 3) uint8 (before normalising).

    Corruptions are applied to this array (the ImageNet-C recipe), then `normalize_u8` makes the model input.
    """
    from attnprobe.data.transforms import resize_and_crop

    return np.asarray(resize_and_crop(image, pre), dtype=np.uint8)


def normalize_u8(batch: np.ndarray, pre: Preprocessing) -> torch.Tensor:
    """(B, S, S, 3) uint8 → (B, 3, S, S) float normalised with the model's mean/std (as `eval_transform`)."""
    import torch

    x = torch.from_numpy(np.array(batch, dtype=np.uint8)).permute(0, 3, 1, 2).float().div_(255.0)  # (B, 3, S, S)
    mean = torch.tensor(pre.mean, dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.tensor(pre.std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - mean) / std
