"""ImageNet-C data: the released tree, and corruption on the fly of any ImageNet-style folder.

Released tree: `<root>/<corruption>/<severity>/<wnid>/*.JPEG` (also accepted: `<root>/<group>/<corruption>/...`
as the release tarballs are sometimes unpacked, with group = noise/blur/weather/digital/extra). The files are
already 224x224 (Resize 256, CenterCrop 224, corrupt, JPEG quality 85): they only get the model's normalisation,
never a second resize, unless the model's input size differs from the files' (then they are resized to the model
input size and the cell records it).

On the fly: the ImageNet-C recipe applied to a clean folder (or to the bundled photos, `bundled_clean_folder`):
Resize(256) (bilinear, as `make_imagenet_c.py`), CenterCrop(224), corrupt at severity 1-5 with a seed derived from
the image's relative path (`attnprobe.data.corruptions.image_seed`: deterministic per image, independent of
workers, ranks and batch order), JPEG quality-85 round trip (as the released files were saved; can be switched off),
then the model's normalisation.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from attnprobe.data.folders import ImageFolderDataset, Samples, scan_class_folders
from attnprobe.errors import UserError
from attnprobe.protocol import benchmark_corruptions, extra_corruptions, load

__all__ = [
    "ALL_CORRUPTIONS",
    "BUNDLED",
    "BUNDLED_CLASSES",
    "RELEASED_SIZE",
    "ReleasedTree",
    "bundled_clean_folder",
    "CellData",
    "CleanInput",
    "ModelInput",
    "OnTheFlyCorruption",
    "check_corruption_names",
    "check_severities",
    "on_the_fly_cells",
    "released_cells",
    "scan_released_tree",
]

RELEASED_SIZE = 224
ALL_CORRUPTIONS: tuple[str, ...] = tuple(benchmark_corruptions() + extra_corruptions())
_GROUP_DIRS = tuple(load("imagenet_c_corruptions")["categories_as_in_release_tars_UNVERIFIED"])


def check_corruption_names(names: Sequence[str] | None) -> list[str]:
    """Validate corruption names (default: the 15 benchmark corruptions), keeping order and dropping repeats."""
    if not names:
        return benchmark_corruptions()
    out: list[str] = []
    for n in names:
        if n not in ALL_CORRUPTIONS:
            close = [c for c in ALL_CORRUPTIONS if n.replace("-", "_").lower() == c or n.lower() in c]
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(f"unknown corruption '{n}'{hint}; choose from: {', '.join(ALL_CORRUPTIONS)}")
        if n not in out:
            out.append(n)
    return out


def check_severities(severities: Sequence[int] | None) -> list[int]:
    """Validate severities (default 1-5)."""
    if not severities:
        return [1, 2, 3, 4, 5]
    bad = [s for s in severities if s not in (1, 2, 3, 4, 5)]
    if bad:
        raise UserError(f"severity {bad[0]} does not exist; ImageNet-C severities are 1 to 5")
    return sorted(set(severities))


class ModelInput:
    """PIL image -> normalised tensor at the model's input size, without resizing images that already fit.

    An image whose size is not `input_size` x `input_size` is resized (shorter side, the model's interpolation) and
    center-cropped. A class rather than a closure so that it pickles (DataLoader workers under `spawn`).
    """

    def __init__(self, pre: Any) -> None:
        self.size = int(pre.input_size)
        self.interpolation = str(pre.interpolation)
        self.mean = [float(m) for m in pre.mean]
        self.std = [float(s) for s in pre.std]

    def __call__(self, img: Any) -> torch.Tensor:
        import torchvision.transforms.functional as TF

        from attnprobe.data.transforms import interpolation_mode

        if img.size != (self.size, self.size):
            img = TF.resize(img, self.size, interpolation=interpolation_mode(self.interpolation))
            img = TF.center_crop(img, [self.size, self.size])
        return TF.normalize(TF.to_tensor(img.convert("RGB")), self.mean, self.std)

    def tensor_recipe(self) -> Any:
        """The same transform on uint8 tensors (the device input path)."""
        from attnprobe.data.tensor_transforms import TensorRecipe

        return TensorRecipe(self.interpolation, fit=self.size, mean=tuple(self.mean), std=tuple(self.std))


class CleanInput:
    """The model's standard evaluation transform (resize to input/crop_pct, center crop, normalise), picklable."""

    def __init__(self, pre: Any) -> None:
        self.pre = pre
        self.normalize = ModelInput(pre)

    def __call__(self, img: Any) -> torch.Tensor:
        from attnprobe.data.transforms import resize_and_crop

        return self.normalize(resize_and_crop(img, self.pre))

    def tensor_recipe(self) -> Any:
        """The same transform on uint8 tensors (the device input path)."""
        from attnprobe.data.tensor_transforms import TensorRecipe

        return TensorRecipe.from_preprocessing(self.pre, resize=True, crop=True, fit=True)


@dataclass
class CellData:
    """One (corruption, severity) cell: its dataset and what to store with it."""

    corruption: str
    severity: int
    dataset: ImageFolderDataset
    info: dict[str, Any]


def _corruption_dir(root: Path, name: str) -> Path | None:
    if (root / name).is_dir():
        return root / name
    for group in _GROUP_DIRS:
        if (root / group / name).is_dir():
            return root / group / name
    return None


@dataclass
class ReleasedTree:
    """A checked released ImageNet-C tree: the folder and sorted samples of every selected cell."""

    root: Path
    cells: dict[tuple[str, int], tuple[Path, Samples]]


def scan_released_tree(root: str | Path, corruptions: Sequence[str] | None = None,
                       severities: Sequence[int] | None = None) -> ReleasedTree:
    """Check the released tree and list every selected (corruption, severity) cell; no image is opened.

    Raises:
        UserError: the root is not an ImageNet-C tree, a corruption or severity folder is missing or empty, a class
            folder is not a wnid, or an unknown corruption/severity was asked for.
    """
    names, sevs = check_corruption_names(corruptions), check_severities(severities)
    base = Path(root).expanduser()
    if not base.is_dir():
        raise UserError(f"ImageNet-C root {base} does not exist; pass the folder that holds gaussian_noise/, "
                        f"shot_noise/, ... (each with severity folders 1-5)")
    found = {c: _corruption_dir(base, c) for c in ALL_CORRUPTIONS}
    if not any(found.values()):
        raise UserError(f"{base} is not an ImageNet-C tree: expected <root>/<corruption>/<severity>/<wnid>/*.JPEG, "
                        f"e.g. {base / 'gaussian_noise' / '1'}; pass the folder the tarballs were extracted into")
    missing = [c for c in names if found[c] is None]
    if missing:
        raise UserError(f"corruption folder(s) missing in {base}: {', '.join(missing)}; extract them there or select "
                        f"others with --corruption")
    cells: dict[tuple[str, int], tuple[Path, Samples]] = {}
    previous: Samples | None = None
    for c in names:
        for s in sevs:
            folder = found[c] / str(s)  # type: ignore[operator]
            if not folder.is_dir():
                raise UserError(f"missing severity folder {folder}; extract severity {s} of {c} or select "
                                f"severities with --severity")
            samples = scan_class_folders(folder, what="severity folder")
            # NOTE: every cell of a complete tree lists the same 50k names; share one list to save memory in workers.
            if previous is not None and samples == previous:
                samples = previous
            previous = samples
            cells[(c, s)] = (folder, samples)
    return ReleasedTree(base, cells)


def released_cells(root: str | Path | ReleasedTree, pre: Any, corruptions: Sequence[str] | None = None,
                   severities: Sequence[int] | None = None, limit: int | None = None) -> list[CellData]:
    """One dataset per (corruption, severity) of the released tree (checked first, see `scan_released_tree`).

    Args:
        root: the tree's root, or an already checked `ReleasedTree` (then `corruptions`/`severities` are ignored).
        pre: the model's preprocessing.
        corruptions: names (default: the 15 benchmark corruptions).
        severities: severities (default 1-5).
        limit: evenly spaced subset of this many images per cell.
    """
    tree = root if isinstance(root, ReleasedTree) else scan_released_tree(root, corruptions, severities)
    transform = ModelInput(pre)
    resized = int(pre.input_size) != RELEASED_SIZE
    cells: list[CellData] = []
    for (c, s), (folder, samples) in tree.cells.items():
        ds = ImageFolderDataset(folder, transform, samples=samples, limit=limit, kind="imagenet_c",
                                params={"released": True}, fingerprint_root=tree.root)
        info = {"source": "released", "root": str(tree.root.resolve()),
                "resized_to": int(pre.input_size) if resized else None}
        cells.append(CellData(c, s, ds, info))
    return cells


class OnTheFlyCorruption(ImageFolderDataset):
    """A clean ImageNet-style folder corrupted on the fly with the ImageNet-C recipe.

    Args:
        root: clean folder with `<wnid>/` class folders.
        corruption: ImageNet-C corruption name.
        severity: 1-5.
        pre: the model's preprocessing (normalisation; input size if not 224).
        samples: the sorted sample list (shared between cells); scanned when omitted.
        limit: evenly spaced subset size.
        jpeg_quality: quality of the JPEG round trip after corrupting (85 as the release); `None` skips it.
    """

    def __init__(self, root: str | Path, corruption: str, severity: int, pre: Any, samples: Samples | None = None,
                 limit: int | None = None, jpeg_quality: int | None = 85) -> None:
        from attnprobe.data import corruptions as C

        self.corruption = corruption
        self.severity = int(severity)
        self.jpeg_quality = jpeg_quality
        params = {"recipe": "resize256-bilinear/centercrop224/corrupt/jpeg", "jpeg_quality": jpeg_quality,
                  "seeding": getattr(C, "SEED_SCHEME", "v1")}
        super().__init__(root, ModelInput(pre), samples=samples, limit=limit, kind="imagenet_c_otf", params=params)

    def prepare(self, img: Any, i: int) -> Any:
        import numpy as np
        import torchvision.transforms.functional as TF
        from PIL import Image
        from torchvision.transforms import InterpolationMode

        from attnprobe.data import corruptions as C

        img = TF.center_crop(TF.resize(img, 256, interpolation=InterpolationMode.BILINEAR), [224, 224])
        rel = self.samples[i][0]
        seed = C.image_seed(rel, self.corruption, self.severity)
        arr = C.corrupt(np.asarray(img), self.corruption, self.severity, seed=seed)
        out = Image.fromarray(arr)
        if self.jpeg_quality is not None:
            buf = io.BytesIO()
            out.save(buf, format="JPEG", quality=int(self.jpeg_quality), optimize=True)
            buf.seek(0)
            with Image.open(buf) as im:
                out = im.convert("RGB")
        return out


def on_the_fly_cells(clean_root: str | Path, pre: Any, corruptions: Sequence[str] | None = None,
                     severities: Sequence[int] | None = None, limit: int | None = None,
                     jpeg_quality: int | None = 85, samples: Samples | None = None) -> list[CellData]:
    """One on-the-fly dataset per (corruption, severity) over a clean folder, checked before any compute.

    `samples` is the folder's listing when the caller already scanned it (`scan_class_folders`).
    """
    names, sevs = check_corruption_names(corruptions), check_severities(severities)
    if samples is None:
        samples = scan_class_folders(clean_root, what="clean validation folder")
    cells = []
    for c in names:
        for s in sevs:
            ds = OnTheFlyCorruption(clean_root, c, s, pre, samples=samples, limit=limit, jpeg_quality=jpeg_quality)
            info = {"source": "on_the_fly", "root": str(Path(clean_root).expanduser().resolve()),
                    "jpeg_quality": jpeg_quality,
                    "resized_to": int(pre.input_size) if int(pre.input_size) != RELEASED_SIZE else None}
            cells.append(CellData(c, s, ds, info))
    return cells


#: The bundled photographs (scikit-image) that have an ImageNet-1k class, with that class's wnid.
BUNDLED_CLASSES: dict[str, str] = {"chelsea": "n02123045", "coffee": "n07920052", "rocket": "n03773504"}
BUNDLED = "bundled"


def bundled_clean_folder(dest: str | Path) -> Path:
    """Write the bundled photos that have an ImageNet class as a tiny `<wnid>/<name>.png` folder under `dest`.

    For a demo of the on-the-fly benchmark without any data (`--clean bundled --on-the-fly`): chelsea (tabby cat),
    coffee (espresso), rocket (missile). Three images say nothing about a model's mCE; the CLI says so.
    """
    from attnprobe.data.samples import load_sample

    root = Path(dest).expanduser() / "bundled-photos"
    for name, wnid in BUNDLED_CLASSES.items():
        path = root / wnid / f"{name}.png"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{name}.{os.getpid()}.png")  # per process: ranks may write at once
            load_sample(name).save(tmp)
            tmp.replace(path)
    return root
