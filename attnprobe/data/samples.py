"""A few real photographs bundled with scikit-image, so diagnostics show real output without any download.

    from attnprobe.data.samples import sample_images
    images = sample_images()          # an ImageSet of 4 photos: chelsea (a cat), coffee, astronaut, rocket

The names are stable ids in the results store (dataset `skimage-samples`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from attnprobe.data.images import ImageRecord, ImageSet
from attnprobe.errors import UserError

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["SAMPLE_DATASET", "SAMPLES", "SampleRecord", "load_sample", "sample_images", "sample_names"]

SAMPLE_DATASET = "skimage-samples"

#: name → description; every one ships inside scikit-image (no download) and is a colour photograph.
SAMPLES: dict[str, str] = {
    "chelsea": "a tabby cat (ImageNet classes 281-285)",
    "coffee": "a cup of coffee (ImageNet class 'espresso' / 'cup')",
    "astronaut": "astronaut Eileen Collins, a portrait",
    "rocket": "a rocket on its launch pad (ImageNet class 'missile' / 'projectile')",
}


def sample_names() -> list[str]:
    """Names of the bundled photographs, in a fixed order."""
    return list(SAMPLES)


def load_sample(name: str) -> Image.Image:
    """One bundled photograph as an RGB PIL image."""
    from PIL import Image

    if name not in SAMPLES:
        raise UserError(f"unknown sample image {name!r}; choose one of: {', '.join(SAMPLES)}")
    import skimage.data

    try:
        arr = np.asarray(getattr(skimage.data, name)())
    except Exception as e:  # noqa: BLE001 - a trimmed scikit-image install lacks its data files
        raise UserError(f"scikit-image cannot load its sample {name!r} ({e}); pass your own images with --image "
                        "or --data") from None
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    return Image.fromarray(arr[..., :3].astype(np.uint8)).convert("RGB")


@dataclass(frozen=True)
class SampleRecord(ImageRecord):
    """A bundled photograph: `id` is its name, `source` says where it comes from (`skimage.data.<name>`)."""

    def load(self) -> Image.Image:
        return load_sample(self.id)


def sample_images(n: int | None = None) -> ImageSet:
    """The bundled photographs as an `ImageSet` (the first `n` when given)."""
    names = sample_names()[: n if n else None]
    return ImageSet(dataset=SAMPLE_DATASET,
                    records=[SampleRecord(id=name, source=f"skimage.data.{name}") for name in names])
