"""Segmentation datasets: pairs of (image, label map) files read through the official test pipeline.

Shared by Cityscapes, Cityscapes-C (released tree and on the fly) and ACDC (`attnprobe.data.cityscapes`,
`attnprobe.data.acdc`). A dataset follows the evaluation engine's contract (`len`, `ds[i]`, `sample_name`,
`fingerprint`):

    x, label, ok = ds[i]
    # x      float32 (3, H', W'): the normalised network input (output="normalized", the default), or
    #        uint8 (3, H', W') RGB, resized, not normalised (output="uint8": normalise on the device), or
    #        uint8 (3, H, W) RGB at the file's size (output="native": corrupt/resize/normalise on the device)
    # label  uint8 (H, W) trainIds (0..18, 255 = ignore) at the label file's size (test splits: all 255)
    # ok     False for an unreadable image or label file: x is zeros and label all 255, of the right shapes

Samples are sorted by relative path; `limit` keeps an evenly spaced subset. Sizes and label formats are checked from
the file headers when the dataset is built (a label map of another size than its image, or a colour PNG given as a
label map, is a `UserError` before any compute); a file whose header cannot be read is left for `ds[i]` to report
as unreadable (`ok=False`), so one bad file is skipped and counted, not fatal (the engine's `strict` makes it fatal).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from attnprobe.data.folders import dataset_fingerprint, limit_samples
from attnprobe.data.seg_transforms import LABEL_MODES, SegTestPipeline, label_id_lut, probe_image, read_bgr, read_label
from attnprobe.errors import UserError

__all__ = [
    "OUTPUTS",
    "CorruptionBackend",
    "SegSample",
    "SegmentationDataset",
    "check_sizes",
    "describe_some",
    "pair_files",
    "walk_suffix",
]

#: What `ds[i]` returns as its input, see the module docstring.
OUTPUTS = ("normalized", "uint8", "native")
#: Signature of a corruption backend: (BGR uint8 (H, W, 3), corruption, severity, seed) -> BGR uint8 (H, W, 3).
CorruptionBackend = Callable[[np.ndarray, str, int, int], np.ndarray]


@dataclass(frozen=True)
class SegSample:
    """One image and its label map.

    Attributes:
        image: image path relative to the dataset's image root (also the sample's stable id).
        label: label path relative to the label root, or None (test split: labels hidden).
        label_ids: the label file holds Cityscapes labelIds (converted to trainIds when read), not trainIds.
        size: (height, width) from the file headers; None when no header could be read.
    """

    image: str
    label: str | None
    label_ids: bool = False
    size: tuple[int, int] | None = None


def describe_some(names: Sequence[str], n: int = 3) -> str:
    """'a, b, c and 7 more' for error messages."""
    shown = ", ".join(names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


def walk_suffix(root: Path, suffix: str) -> dict[str, str]:
    """Every file under `root` (recursively, hidden entries skipped) whose name ends with `suffix`.

    Returns:
        key -> path relative to `root` (POSIX separators), where key is the relative path without the suffix.
    """
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        for name in filenames:
            if name.endswith(suffix) and not name.startswith("."):
                rel = name if rel_dir == "." else f"{rel_dir}/{name}"
                out[rel[: -len(suffix)]] = rel
    return out


def pair_files(images: dict[str, str], labels: dict[str, str], what: str, image_hint: str,
               label_hint: str) -> list[tuple[str, str]]:
    """Pair images and labels by their common key; any image or label left alone is a `UserError`.

    Args:
        images: key -> image relative path.
        labels: key -> label relative path.
        what: the dataset, for messages (e.g. "Cityscapes val").
        image_hint: where images are expected, for messages.
        label_hint: where labels are expected, for messages.
    """
    lonely_images = sorted(images[k] for k in images.keys() - labels.keys())
    if lonely_images:
        raise UserError(f"{what}: {len(lonely_images)} image(s) have no label map ({describe_some(lonely_images)}); "
                        f"expected {label_hint}")
    lonely_labels = sorted(labels[k] for k in labels.keys() - images.keys())
    if lonely_labels:
        raise UserError(f"{what}: {len(lonely_labels)} label map(s) have no image ({describe_some(lonely_labels)}); "
                        f"expected {image_hint}; the image and label trees do not match")
    return [(images[k], labels[k]) for k in sorted(images, key=lambda k: images[k])]


def check_sizes(image_root: Path, label_root: Path | None, pairs: Sequence[tuple[str, str | None, bool]],
                what: str, probe_images: bool = True) -> list[SegSample]:
    """Read the headers of every image (and label) file and build the samples.

    Args:
        image_root: folder the image paths are relative to.
        label_root: folder the label paths are relative to.
        pairs: (image, label or None, label holds labelIds) per sample.
        what: the dataset, for messages.
        probe_images: also read image headers (labels alone are enough when the images are known to have the label's
            size, e.g. corrupted copies of checked images).

    Raises:
        UserError: a label map is not an 8-bit single-channel image, or differs in size from its image.
    """
    out: list[SegSample] = []
    for image, label, label_ids in pairs:
        label_size = None
        if label is not None and label_root is not None:
            head = probe_image(label_root / label)
            if head is not None:
                label_size, mode = head
                if mode not in LABEL_MODES:
                    raise UserError(f"{what}: label map {label_root / label} is a {mode} image; expected an 8-bit "
                                    f"trainId PNG (pixel = class id, 255 = ignore), not a colour visualisation")
        image_size = None
        if probe_images:
            head = probe_image(image_root / image)
            image_size = head[0] if head is not None else None
        if label_size is not None and image_size is not None and label_size != image_size:
            raise UserError(f"{what}: label map {label} is {label_size[1]}x{label_size[0]} but its image {image} is "
                            f"{image_size[1]}x{image_size[0]}; label maps must have their image's size")
        out.append(SegSample(image, label, label_ids, label_size or image_size))
    return out


_WORKER_THREADS_SET = False


def _one_cv2_thread_in_workers() -> None:
    """One OpenCV thread per DataLoader worker process.

    NOTE: OpenCV starts a thread per core for every resize in every worker: 8 workers on 8 cores would run 64 threads.
    """
    global _WORKER_THREADS_SET
    if not _WORKER_THREADS_SET and torch.utils.data.get_worker_info() is not None:
        import cv2

        cv2.setNumThreads(1)
        _WORKER_THREADS_SET = True


class SegmentationDataset(Dataset):
    """Image/label pairs through the official test pipeline (see the module docstring).

    Args:
        image_root: folder the samples' image paths are relative to.
        label_root: folder the samples' label paths are relative to (None: no labels).
        samples: the sorted samples (`check_sizes` builds them).
        kind: dataset kind, part of the fingerprint (e.g. "cityscapes_val").
        pipeline: the test pipeline (default: the official one).
        output: "normalized", "uint8" or "native" (see the module docstring).
        limit: keep an evenly spaced subset of this many samples.
        params: recipe parameters that change the pixels (part of the fingerprint).
        fingerprint_root: the folder named in the fingerprint instead of `image_root` (a Cityscapes-C tree's root,
            so that every cell of one tree shares one dataset id; the cell itself is in the store key).
    """

    def __init__(self, image_root: str | Path, label_root: str | Path | None, samples: Sequence[SegSample], *,
                 kind: str, pipeline: SegTestPipeline | None = None, output: str = "normalized",
                 limit: int | None = None, params: dict[str, Any] | None = None,
                 fingerprint_root: str | Path | None = None) -> None:
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        if not samples:
            raise UserError(f"{kind}: no images to evaluate")
        self.image_root = Path(image_root).expanduser()
        self.label_root = Path(label_root).expanduser() if label_root is not None else None
        self.samples: list[SegSample] = limit_samples(list(samples), limit)  # type: ignore[arg-type]
        self.kind = kind
        self.pipeline = pipeline or SegTestPipeline()
        self.output = output
        self.params = dict(params or {})
        self.fingerprint_root = Path(fingerprint_root).expanduser() if fingerprint_root is not None else self.image_root
        sizes = Counter(s.size for s in self.samples if s.size is not None)
        self.common_size: tuple[int, int] = sizes.most_common(1)[0][0] if sizes else (1024, 2048)
        self._fingerprint: str | None = None

    # -- the engine's contract ----------------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """A stable id of the files (and recipe): same files, same id; any change, another id."""
        if self._fingerprint is None:
            listing = [(s.image, s.label or "") for s in self.samples]
            self._fingerprint = dataset_fingerprint(self.kind, self.fingerprint_root, listing, self.params)
        return self._fingerprint

    @property
    def has_labels(self) -> bool:
        """False for a test split whose labels are hidden (the label maps are then all 255)."""
        return self.label_root is not None and all(s.label is not None for s in self.samples)

    def preprocessing_key(self) -> str:
        """The pipeline's id, for the store's preprocessing field."""
        return self.pipeline.key()

    def __len__(self) -> int:
        return len(self.samples)

    def sample_name(self, i: int) -> str:
        return str(self.image_root / self.samples[i].image)

    def image_id(self, i: int) -> str:
        """The sample's stable id (its image path relative to the image root), e.g. for corruption seeds."""
        return self.samples[i].image

    def native_size(self, i: int) -> tuple[int, int]:
        """(height, width) of sample i's files (from the headers; the dataset's usual size when unreadable)."""
        return self.samples[i].size or self.common_size

    def input_size(self, i: int) -> tuple[int, int]:
        """(height, width) of the network input of sample i."""
        h, w = self.native_size(i)
        return (h, w) if self.output == "native" else self.pipeline.output_size(h, w)

    # -- reading ------------------------------------------------------------------------------------------------
    def load_image(self, i: int) -> np.ndarray:
        """Sample i's image as BGR uint8 (H, W, 3), before `prepare` and the pipeline."""
        return read_bgr(self.image_root / self.samples[i].image)

    def load_label(self, i: int, size: tuple[int, int] | None = None) -> np.ndarray:
        """Sample i's label map as uint8 trainIds (H, W); all 255 (of `size`) when the split has no labels."""
        s = self.samples[i]
        if s.label is None or self.label_root is None:
            return np.full(size or self.native_size(i), 255, dtype=np.uint8)
        return read_label(self.label_root / s.label, label_id_lut() if s.label_ids else None)

    def prepare(self, bgr: np.ndarray, i: int) -> np.ndarray:
        """Hook between decoding and the pipeline (e.g. corrupting on the fly); identity here."""
        return bgr

    def transform(self, bgr: np.ndarray) -> torch.Tensor:
        """BGR uint8 image -> the network input of `output`."""
        if self.output == "native":
            return self.pipeline.to_uint8_rgb(bgr, resize=False)
        x = self.pipeline.to_uint8_rgb(bgr)
        return x if self.output == "uint8" else self.pipeline.normalize(x)

    def blank(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero input and all-ignore label of sample i's shapes, stood in for an unreadable sample."""
        h, w = self.input_size(i)
        dtype = torch.float32 if self.output == "normalized" else torch.uint8
        return torch.zeros(3, h, w, dtype=dtype), torch.full(self.native_size(i), 255, dtype=torch.uint8)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
        _one_cv2_thread_in_workers()
        try:
            bgr = self.load_image(i)
            label = self.load_label(i, size=bgr.shape[:2])
        except (OSError, ValueError, SyntaxError):  # missing, truncated or undecodable file
            x, y = self.blank(i)
            return x, y, False
        if bgr.shape[:2] != label.shape:
            raise UserError(f"label map {self.samples[i].label} is {label.shape[1]}x{label.shape[0]} but its image "
                            f"{self.sample_name(i)} is {bgr.shape[1]}x{bgr.shape[0]}; label maps must have their "
                            f"image's size")
        return self.transform(self.prepare(bgr, i)), torch.from_numpy(np.ascontiguousarray(label)), True
