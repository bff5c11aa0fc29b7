"""The diagnostics' choice of images: `--data DIR`, or `--image FILE ...`, or else the bundled sample photographs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from attnprobe.data.images import ImageSet, image_files, image_folder
from attnprobe.data.samples import sample_images
from attnprobe.errors import UserError

__all__ = ["select_images"]


def select_images(data: str | Path | None = None, images: Sequence[str | Path] | None = None,
                  n: int | None = None) -> ImageSet:
    """The CLI's image choice: `--data DIR`, or `--image FILE ...`, or else the bundled sample photographs."""
    if data is not None and images:
        raise UserError("pass either --data DIR or --image FILE, not both")
    if data is not None:
        return image_folder(data, n)
    if images:
        chosen = image_files(images)
        chosen.records = chosen.records[: n if n else None]
        return chosen
    return sample_images(n)
