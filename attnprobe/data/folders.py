"""ImageNet-style image folders (`<root>/<wnid>/<image>`) labelled by the canonical 1000-wnid order.

Labels always come from `attnprobe.protocol.imagenet_wnids()` (the logit order of every ImageNet-1k model), never
from the folders that happen to be present: a folder holding 10 classes is scored against the right 10 of the
1000 logits. Samples are kept sorted by relative path, so chunk boundaries and `--limit` subsets are reproducible.

Each item is `(image tensor, label, ok)`; an unreadable file gives a zero image with `ok=False`, which the
evaluation loop leaves out of the scoring and counts as skipped (see `attnprobe.engine`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from attnprobe.errors import UserError

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFolderDataset",
    "canonical_labels",
    "dataset_fingerprint",
    "limit_samples",
    "load_rgb",
    "scan_class_folders",
]

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")

Samples = list[tuple[str, int]]  # (path relative to the root, canonical label), sorted by path

_FINGERPRINTS: dict[tuple, tuple[Sequence[tuple[str, int]], str]] = {}


@lru_cache(maxsize=1)
def canonical_labels() -> dict[str, int]:
    """wnid -> logit index, from the canonical ImageNet-1k order."""
    from attnprobe.protocol import imagenet_wnids

    return {w: i for i, w in enumerate(imagenet_wnids())}


def scan_class_folders(root: str | Path, what: str = "image folder") -> Samples:
    """List `<root>/<wnid>/<image>` files with their canonical labels, sorted by relative path.

    Args:
        root: the folder holding one sub-folder per class, named by its wnid (e.g. `n01440764`).
        what: how to call the folder in error messages.

    Raises:
        UserError: the root is missing, a sub-folder is not an ImageNet-1k wnid, or there are no images.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"{what} {root} does not exist or is not a folder; pass the folder that holds the "
                        f"<wnid>/ class folders")
    labels = canonical_labels()
    samples: Samples = []
    loose = 0
    with os.scandir(root) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            if not entry.is_dir():
                loose += entry.name.lower().endswith(IMAGE_EXTENSIONS)
                continue
            if entry.name not in labels:
                raise UserError(f"folder '{entry.name}' in {root} is not an ImageNet-1k wnid; the {what} must hold "
                                f"one folder per class named by its wnid (e.g. n01440764)")
            label = labels[entry.name]
            with os.scandir(entry.path) as files:
                names = sorted(f.name for f in files if f.name.lower().endswith(IMAGE_EXTENSIONS)
                               and not f.name.startswith("."))
            samples.extend((f"{entry.name}/{n}", label) for n in names)
    if not samples:
        hint = (f" ({loose} images lie directly in it: sort them into <wnid>/ class folders)" if loose else "")
        raise UserError(f"{what} {root} holds no images in <wnid>/ class folders{hint}")
    return samples


def limit_samples(samples: Samples, limit: int | None) -> Samples:
    """An evenly spaced, deterministic subset of `limit` samples (all of them when `limit` is None or larger).

    Evenly spaced rather than the first `limit`, so a quick check still covers many classes.
    """
    if limit is None or limit >= len(samples):
        return samples
    if limit < 1:
        raise UserError(f"--limit must be at least 1, got {limit}")
    n = len(samples)
    return [samples[(i * n) // limit] for i in range(limit)]


def dataset_fingerprint(kind: str, root: str | Path, samples: Sequence[tuple[str, int]],
                        params: dict[str, Any] | None = None) -> str:
    """A stable id for a dataset: its kind, resolved root, recipe parameters and sorted file list.

    The same files under the same path give the same id on every run and rank; any added, removed or renamed file,
    another `--limit` or another recipe gives another id, so stored counts are never mixed across datasets.
    """
    # NOTE: the 75 cells of a run usually share one 50k-entry sample list; hash it once, not 75 times.
    resolved = str(Path(root).expanduser().resolve())
    memo_key = (kind, resolved, json.dumps(params or {}, sort_keys=True, default=str), id(samples), len(samples))
    hit = _FINGERPRINTS.get(memo_key)
    if hit is not None and hit[0] is samples:
        return hit[1]
    h = hashlib.sha256()
    h.update(kind.encode())
    h.update(b"\0" + resolved.encode())
    h.update(b"\0" + json.dumps(params or {}, sort_keys=True, default=str).encode())
    for rel, label in samples:
        h.update(b"\0" + rel.encode() + b"\t" + str(label).encode())
    out = f"{kind}:{h.hexdigest()[:16]}"
    if len(_FINGERPRINTS) > 64:
        _FINGERPRINTS.clear()
    _FINGERPRINTS[memo_key] = (samples, out)
    return out


def load_rgb(path: str | Path) -> Any:
    """Open an image file as an RGB PIL image (fully decoded, so errors surface here)."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        return im.convert("RGB")


class ImageFolderDataset(Dataset):
    """Images of an ImageNet-style folder with canonical labels.

    Args:
        root: the folder holding `<wnid>/` class folders.
        transform: PIL image -> tensor (e.g. `attnprobe.data.transforms.eval_transform(pre)`).
        samples: the sorted `(relative path, label)` list; scanned from `root` when omitted.
        limit: keep an evenly spaced subset of this many samples.
        kind: dataset kind used in the fingerprint (e.g. `"imagenet_val"`, `"imagenet_c"`).
        params: recipe parameters that change the pixels (part of the fingerprint).
        fingerprint_root: the folder named in the fingerprint instead of `root` (the ImageNet-C tree root, so that
            every cell of one tree shares one dataset id; the cell itself is in the store key).
    """

    def __init__(self, root: str | Path, transform: Callable[[Any], torch.Tensor],
                 samples: Samples | None = None, limit: int | None = None, kind: str = "folder",
                 params: dict[str, Any] | None = None, fingerprint_root: str | Path | None = None) -> None:
        self.root = Path(root).expanduser()
        self.fingerprint_root = Path(fingerprint_root).expanduser() if fingerprint_root is not None else self.root
        self.transform = transform
        self.samples = limit_samples(samples if samples is not None else scan_class_folders(self.root), limit)
        self.kind = kind
        self.params = dict(params or {})
        self._fingerprint: str | None = None
        self._blank: torch.Tensor | None = None

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = dataset_fingerprint(self.kind, self.fingerprint_root, self.samples, self.params)
        return self._fingerprint

    @property
    def classes(self) -> list[int]:
        """Canonical labels present, sorted."""
        return sorted({label for _, label in self.samples})

    def __len__(self) -> int:
        return len(self.samples)

    def sample_name(self, i: int) -> str:
        return str(self.root / self.samples[i][0])

    def load(self, i: int) -> Any:
        """The decoded PIL image of sample `i` (before `prepare` and the transform)."""
        return load_rgb(self.root / self.samples[i][0])

    def prepare(self, img: Any, i: int) -> Any:
        """Hook between decoding and the transform (e.g. corrupting on the fly); identity here."""
        return img

    def blank(self) -> torch.Tensor:
        """A zero input of the right shape, stood in for an unreadable image."""
        if self._blank is None:
            from PIL import Image

            self._blank = torch.zeros_like(self.transform(Image.new("RGB", (256, 256))))
        return self._blank

    def target(self, i: int) -> Any:
        """The target of sample `i`: its canonical label (subclasses may return more, e.g. PGD's sample index)."""
        return self.samples[i][1]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Any, bool]:
        target = self.target(i)
        try:
            img = self.load(i)
        except (OSError, ValueError, SyntaxError):  # PIL raises these for truncated or non-image files
            return self.blank(), target, False
        return self.transform(self.prepare(img, i)), target, True

    def encoded(self, progressive: bool = True, in_worker: bool = False) -> Dataset | None:
        """This dataset for the device input path (`attnprobe.data.encoded.EncodedImages`: files as bytes, decoded
        and transformed on the device with the same result; `in_worker`: decoded by PIL in the loader workers,
        transformed on the device), or None when its pixels need the CPU (a `load` or `prepare` hook such as
        corrupting on the fly, or a transform without a tensor version)."""
        recipe_of = getattr(self.transform, "tensor_recipe", None)
        plain = type(self).load is ImageFolderDataset.load and type(self).prepare is ImageFolderDataset.prepare
        if recipe_of is None or not plain:
            return None
        recipe = recipe_of()
        if not recipe.supported:
            return None
        from attnprobe.data.encoded import EncodedImages

        return EncodedImages(self, recipe, progressive=progressive, in_worker=in_worker)
