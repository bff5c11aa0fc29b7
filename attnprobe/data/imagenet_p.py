"""ImageNet-P sources: the released video tree, or sequences regenerated on the fly from clean images.

Released layout (hendrycks/robustness `ImageNet-P/test.py`):

    <root>/<perturbation>/<wnid>/<ILSVRC2012_val_XXXXXXXX>.mp4          difficulty 1, and every non-noise difficulty
    <root>/<noise>_2/<wnid>/...mp4, <root>/<noise>_3/<wnid>/...mp4    noise perturbations at difficulty 2 / 3

The videos are 224x224, 31 frames (41 for translate), 1 fps; frames are read one at a time and are not resized.

Both sources expose the same small interface (`items`, `frames(item)`, `fingerprint`, `regenerated`) so the
evaluation driver does not care where frames come from. Labels come from the canonical 1000-wnid order, never
from the folders that happen to be present.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from attnprobe.data.folders import dataset_fingerprint, limit_samples, load_rgb, scan_class_folders
from attnprobe.data.imagenet_p_generate import NOISE_LEVELS, PERTURBATIONS, num_frames, perturbation_frames
from attnprobe.data.video import iter_frames
from attnprobe.errors import UserError

__all__ = [
    "VideoItem",
    "ImageNetPDataset",
    "ReleasedVideos",
    "RegeneratedVideos",
    "perturbation_folder",
    "available_perturbations",
    "check_perturbations",
    "list_class_files",
]

@dataclass(frozen=True)
class VideoItem:
    """One ImageNet-P sample: a video (released) or a clean image to perturb (regenerated).

    Attributes:
        id: `<wnid>/<file stem>`, unique within a perturbation; seeds regeneration.
        label: index in the canonical 1000-class order.
        path: the .mp4 (released) or the clean image (regenerated).
    """

    id: str
    label: int
    path: Path


def check_perturbations(names: list[str] | tuple[str, ...]) -> list[str]:
    """Validate perturbation names (one-line error with the choices for a typo)."""
    for n in names:
        if n not in PERTURBATIONS:
            raise UserError(f"unknown ImageNet-P perturbation {n!r}; choose from: {', '.join(PERTURBATIONS)}")
    return list(names)


def perturbation_folder(root: str | Path, perturbation: str, difficulty: int = 1) -> Path:
    """The folder that holds `perturbation` at `difficulty`: `<name>_<d>` only for noises at d = 2 or 3."""
    check_perturbations([perturbation])
    if int(difficulty) not in (1, 2, 3):
        raise UserError(f"difficulty must be 1, 2 or 3, got {difficulty!r}; pass --difficulty 1, 2 or 3")
    name = f"{perturbation}_{int(difficulty)}" if (perturbation in NOISE_LEVELS and difficulty > 1) else perturbation
    return Path(root) / name


def available_perturbations(root: str | Path, difficulty: int = 1) -> list[str]:
    """Perturbations whose folder for `difficulty` exists under `root`, in the canonical order."""
    return [p for p in PERTURBATIONS if perturbation_folder(root, p, difficulty).is_dir()]


def _wnid_index() -> dict[str, int]:
    from attnprobe import protocol

    return {w: i for i, w in enumerate(protocol.imagenet_wnids())}


def list_class_files(folder: Path, extensions: tuple[str, ...]) -> list[VideoItem]:
    """Sorted `<wnid>/<file>` samples below `folder` with canonical labels.

    Raises:
        UserError: if `folder` is missing, holds a sub-folder that is not an ImageNet wnid, or holds no samples.
    """
    if not folder.is_dir():
        raise UserError(f"folder not found: {folder}; check the --data / --clean path")
    index = _wnid_index()
    items: list[VideoItem] = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        if sub.name not in index:
            raise UserError(f"{sub} is not named after an ImageNet-1k wnid (e.g. n01440764); "
                            f"point --data at the folder whose sub-folders are wnids")
        for f in sorted(sub.iterdir()):
            if f.is_file() and f.suffix.lower() in extensions:
                items.append(VideoItem(id=f"{sub.name}/{f.stem}", label=index[sub.name], path=f))
    if not items:
        kinds = "/".join(extensions)
        raise UserError(f"no {kinds} files found in {folder}/<wnid>/; check the path")
    return items


class ReleasedVideos:
    """The released ImageNet-P videos of one perturbation and difficulty.

    Args:
        root: the ImageNet-P root (holding `gaussian_noise/`, `translate/`, ...).
        perturbation: folder name without the `_2`/`_3` suffix.
        difficulty: 1, 2 or 3.
        limit: keep an evenly spaced subset of this many videos.
    """

    regenerated = False

    def __init__(self, root: str | Path, perturbation: str, difficulty: int = 1, limit: int | None = None) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise UserError(f"ImageNet-P root not found: {self.root}; pass --data pointing at the extracted ImageNet-P")
        self.perturbation = perturbation
        self.difficulty = int(difficulty)
        self.folder = perturbation_folder(self.root, perturbation, difficulty)
        if not self.folder.is_dir():
            have = available_perturbations(self.root, self.difficulty)
            hint = f"folders present: {', '.join(have)}" if have else "no ImageNet-P folders found there"
            raise UserError(f"missing {self.folder}; {hint}. Download that perturbation or drop --perturbation "
                            f"{perturbation}")
        self.expected_frames = num_frames(perturbation)
        self.limit = limit

    @cached_property
    def items(self) -> list[VideoItem]:
        return _limit(list_class_files(self.folder, (".mp4",)), self.limit)

    @cached_property
    def fingerprint(self) -> str:
        """Dataset id for the results store: folder, file list and limit (see `folders.dataset_fingerprint`)."""
        return dataset_fingerprint("imagenet_p", self.folder, [(it.id, it.label) for it in self.items],
                                   {"limit": self.limit})

    def frames(self, item: VideoItem) -> Iterator[np.ndarray]:
        """(224, 224, 3) uint8 frames of one video, decoded one at a time, not resized."""
        return iter_frames(item.path)


class RegeneratedVideos:
    """ImageNet-P sequences generated on the fly from a clean ImageNet folder (`<clean>/<wnid>/<image>`).

    Results must be labelled "regenerated": see `attnprobe.data.imagenet_p_generate` for what differs from
    the released videos.

    Args:
        clean: clean validation folder.
        perturbation: one of the 14 perturbations.
        difficulty: 1, 2 or 3 (noise strength for noises; only the pairing otherwise).
        limit: keep an evenly spaced subset of this many clean images.
    """

    regenerated = True

    def __init__(self, clean: str | Path, perturbation: str, difficulty: int = 1, limit: int | None = None) -> None:
        self.clean = Path(clean).expanduser()
        check_perturbations([perturbation])
        if int(difficulty) not in (1, 2, 3):
            raise UserError(f"difficulty must be 1, 2 or 3, got {difficulty!r}; pass --difficulty 1, 2 or 3")
        self.perturbation = perturbation
        self.difficulty = int(difficulty)
        self.expected_frames = num_frames(perturbation)
        self.folder = perturbation_folder(self.clean, perturbation, difficulty)  # only for naming
        self.limit = limit

    @cached_property
    def items(self) -> list[VideoItem]:
        samples = limit_samples(scan_class_folders(self.clean, "clean image folder"), self.limit)
        return [VideoItem(id=str(Path(rel).with_suffix("")), label=label, path=self.clean / rel)
                for rel, label in samples]

    @cached_property
    def fingerprint(self) -> str:
        """Dataset id: clean file list, limit and the recipe (the sequences depend on the noise level)."""
        from attnprobe.data.imagenet_p_generate import NOISE_LEVELS

        level = NOISE_LEVELS.get(self.perturbation, {}).get(self.difficulty)
        return dataset_fingerprint("imagenet_p_regenerated", self.clean, [(it.id, it.label) for it in self.items],
                                   {"limit": self.limit, "perturbation": self.perturbation, "noise_level": level,
                                    "recipe": "attnprobe-1"})

    def frames(self, item: VideoItem) -> Iterator[np.ndarray]:
        """The regenerated sequence of one clean image, frame by frame (deterministic per image id)."""
        try:
            img = load_rgb(item.path)
        except (OSError, ValueError, SyntaxError) as e:
            raise UserError(f"cannot read image {item.path} ({e}); replace or delete the file") from None
        return perturbation_frames(img, self.perturbation, self.difficulty, image_id=item.id)


def _limit(items: list[VideoItem], limit: int | None) -> list[VideoItem]:
    picked = limit_samples([(it.id, it.label) for it in items], limit)
    if len(picked) == len(items):
        return items
    by_id = {it.id: it for it in items}
    return [by_id[i] for i, _ in picked]


class ImageNetPDataset(Dataset):
    """Map-style dataset over a released or regenerated source for the evaluation loop (`attnprobe.engine`).

    Item `i` is `(frames, target, ok)`: `frames` is a (T, H, W, 3) uint8 tensor holding one whole video (uint8 keeps
    a 31-frame 224x224 video at 4.7 MB; normalisation happens on the device, frame batch by frame batch);
    `target` is `[label, noise, difficulty]` so one scoring function serves cells of different perturbations;
    `ok=False` marks a video that cannot be read or has the wrong number of frames (it is skipped and counted).

    Args:
        source: a `ReleasedVideos` or `RegeneratedVideos`.
        frame_size: (H, W) every frame must have (videos of another size are skipped, since they cannot share a
            batch); default: the size of the first video's first frame (224x224 for ImageNet-P).
    """

    def __init__(self, source: ReleasedVideos | RegeneratedVideos, frame_size: tuple[int, int] | None = None) -> None:
        from attnprobe.robustness.imagenet_p import is_noise_perturbation

        self.source = source
        self.items = source.items
        self.frame_size = frame_size if frame_size is not None else self._probe_size()
        self._meta = [int(is_noise_perturbation(source.perturbation)), int(source.difficulty)]

    @property
    def fingerprint(self) -> str:
        return self.source.fingerprint

    def __len__(self) -> int:
        return len(self.items)

    def sample_name(self, i: int) -> str:
        return str(self.items[i].path)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
        item = self.items[i]
        target = torch.tensor([item.label, *self._meta], dtype=torch.long)
        t = self.source.expected_frames
        try:
            frames = list(self.source.frames(item))
        except UserError:
            frames = []
        want = (*self.frame_size, 3)
        ok = len(frames) == t and all(f.shape == want for f in frames)
        if not ok:
            h, w = self.frame_size
            return torch.zeros(t, h, w, 3, dtype=torch.uint8), target, False
        return torch.from_numpy(np.stack(frames)), target, True

    def _probe_size(self) -> tuple[int, int]:
        for item in self.items[:10]:  # the first readable video decides
            try:
                first = next(iter(self.source.frames(item)), None)
            except UserError:
                continue
            if first is not None:
                return int(first.shape[0]), int(first.shape[1])
        raise UserError(f"none of the first videos in {self.source.folder} can be read; check the files")
