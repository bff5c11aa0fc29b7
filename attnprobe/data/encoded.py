"""Image files as encoded bytes, for the device input path: loader workers only read files, the device decodes.

`EncodedImages` wraps an `ImageFolderDataset` (same samples, same fingerprint, same targets) and yields
`(EncodedImage, target, ok)`. A worker reads the file and looks at its JPEG header (no decoding): a plain JPEG
(baseline or progressive, 8-bit, grey or YCbCr, ending with its EOI marker) travels as bytes and is decoded in
batches on the device (`attnprobe.engine.device_input`); anything else (PNG, CMYK JPEG, a truncated file, ...) is
decoded by PIL in the worker, exactly as on the CPU path, and travels as uint8 pixels. With `in_worker=True` every
file is decoded by PIL in the worker (exact everywhere; the device still resizes and normalises). An unreadable file
gives `ok=False`, as on the CPU path.

`collate` makes one `EncodedBatch` of a batch's items (a DataLoader `collate_fn`; other items go to torch's default
collate, so one loader can serve cells of both kinds).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

__all__ = ["EncodedBatch", "EncodedImage", "EncodedImages", "collate", "device_decodable_jpeg"]

_SOF_DEVICE = {0xC0, 0xC1, 0xC2}  # baseline, extended sequential, progressive (Huffman)
_NO_LENGTH = {0x01, *range(0xD0, 0xDA)}  # TEM, RSTn, SOI, EOI


def device_decodable_jpeg(data: bytes | memoryview, progressive: bool = True) -> bool:
    """Whether `decode_jpeg` gives this file's pixels as PIL would: an 8-bit Huffman JPEG with 1 or 3 components
    (grey or YCbCr), complete (ends with EOI). Only the markers before the first scan are read.

    Args:
        data: the file's bytes.
        progressive: accept progressive JPEGs (the CUDA decoder takes a slow path for them).
    """
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != 0xD8 or data[n - 2] != 0xFF or data[n - 1] != 0xD9:
        return False
    pos, sof, adobe_rgb = 2, None, False
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return False
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _NO_LENGTH:
            pos += 2
            continue
        length = (data[pos + 2] << 8) | data[pos + 3]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if pos + 10 > n:
                return False
            sof = (marker, data[pos + 4], data[pos + 9])  # (type, bits per sample, components)
        elif marker == 0xEE and bytes(data[pos + 4:pos + 9]) == b"Adobe" and pos + 15 < n:
            adobe_rgb = data[pos + 15] == 0  # transform 0: RGB or CMYK stored without colour transform
        elif marker == 0xDA:  # start of scan: the header is complete
            break
        pos += 2 + length
    if sof is None:
        return False
    kind, bits, comps = sof
    if kind not in _SOF_DEVICE or (kind == 0xC2 and not progressive) or bits != 8 or comps not in (1, 3):
        return False
    return not (comps == 3 and adobe_rgb)


@dataclass
class EncodedImage:
    """One sample for the device path: the file's bytes, or pixels PIL decoded in the worker (never both)."""

    index: int  # the sample's index in its dataset (per-image seeds of later stages)
    data: torch.Tensor | None = None  # (nbytes,) uint8, a JPEG the device decodes
    pixels: torch.Tensor | None = None  # (3, H, W) uint8, decoded by PIL in the worker


@dataclass
class EncodedBatch:
    """The `EncodedImage`s of one batch, in order."""

    images: list[EncodedImage]

    def __len__(self) -> int:
        return len(self.images)

    @property
    def index(self) -> list[int]:
        return [im.index for im in self.images]

    def pin_memory(self) -> EncodedBatch:
        """Pin decoded pixels for an asynchronous copy (the DataLoader calls this with `pin_memory=True`)."""
        for im in self.images:
            if im.pixels is not None:
                im.pixels = im.pixels.pin_memory()
        return self


def collate(items: Sequence[Any]) -> Any:
    """DataLoader `collate_fn`: `(EncodedImage, target, ok)` items -> `(EncodedBatch, targets, oks)`; anything
    else -> torch's default collate."""
    if items and isinstance(items[0], tuple) and items[0] and isinstance(items[0][0], EncodedImage):
        return (EncodedBatch([it[0] for it in items]), *default_collate([it[1:] for it in items]))
    return default_collate(items)


class EncodedImages(Dataset):
    """An `ImageFolderDataset` as encoded files (see the module docstring); targets and fingerprint are its own.

    Args:
        folder: the dataset (its `load`/`prepare` hooks must be the plain ones: pixels untouched before the
            transform).
        recipe: the tensor version of its transform (`attnprobe.data.tensor_transforms.TensorRecipe`).
        progressive: let the device decode progressive JPEGs (else PIL decodes them in the worker).
        in_worker: decode every file with PIL in the worker (only the transform runs on the device).
        stages: uint8 batch stages the device runs between the recipe's geometry and its normalisation
            (`attnprobe.engine.device_input.U8Stage`), e.g. corrupting on the device; a dataset that corrupts on
            the fly returns them from its own `encoded()`.
    """

    def __init__(self, folder: Any, recipe: Any, progressive: bool = True, in_worker: bool = False,
                 stages: Sequence[Any] = ()) -> None:
        self.folder, self.recipe = folder, recipe
        self.progressive, self.in_worker = progressive, in_worker
        self.stages = list(stages)

    def __len__(self) -> int:
        return len(self.folder)

    @property
    def fingerprint(self) -> str:
        return self.folder.fingerprint

    def sample_name(self, i: int) -> str:
        return self.folder.sample_name(i)

    def read(self, i: int) -> EncodedImage:
        """The sample's bytes (a device-decodable JPEG) or its PIL-decoded pixels; OSError etc. if unreadable."""
        path = self.folder.root / self.folder.samples[i][0]
        with open(path, "rb") as f:
            raw = f.read()
        if not self.in_worker and device_decodable_jpeg(raw, self.progressive):
            return EncodedImage(i, data=torch.frombuffer(bytearray(raw), dtype=torch.uint8))
        from PIL import Image

        with Image.open(io.BytesIO(raw)) as im:  # NOTE: as `load_rgb` does, from the bytes already read
            im.load()
            img = im.convert("RGB")
        return EncodedImage(i, pixels=torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1))

    def __getitem__(self, i: int) -> tuple[Any, ...]:
        target = self.folder.target(i)
        try:
            return self.read(i), target, True
        except (OSError, ValueError, SyntaxError):  # PIL raises these for truncated or non-image files
            return EncodedImage(i), target, False
