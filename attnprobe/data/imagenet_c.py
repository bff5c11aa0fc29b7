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
then the model's normalisation. The corruption backend (the batched torch engine by default, or the per-image
`imagecorruptions` package) and its recipe are part of each dataset's fingerprint. With the engine and a device
input path (`--decode workers|device|gpu`), the engine loop corrupts each batch on the model's device
(`OnTheFlyCorruption.encoded`); the tensors equal the CPU path's on the CPU.
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

    Per item: Resize(256) (bilinear) + CenterCrop(224), corrupt with the seed of the image's relative path, JPEG
    round trip, the model's normalisation. Three ways to run it, all giving the same tensors:

    * ``ds[i]``: one image (any DataLoader);
    * ``ds.__getitems__(indices)``: a whole batch, corrupted in one call of the batched engine (the DataLoader
      uses it when it fetches a batch from this dataset directly);
    * ``device_corruption=True``: items are the clean uint8 crops (3, 224, 224); the caller moves a batch to its
      device and calls ``ds.finish_batch(x_u8, indices)``, which corrupts it there (GPU) and normalises.

    Args:
        root: clean folder with `<wnid>/` class folders.
        corruption: ImageNet-C corruption name.
        severity: 1-5.
        pre: the model's preprocessing (normalisation; input size if not 224).
        samples: the sorted sample list (shared between cells); scanned when omitted.
        limit: evenly spaced subset size.
        jpeg_quality: quality of the JPEG round trip after corrupting (85 as the release); `None` skips it.
        backend: "torch" (the batched engine, default) or "reference" (the imagecorruptions package, per image).
        recipe: "imagenet-c" or "imagecorruptions" (default: the backend's; see `attnprobe.data.corruptions`).
        device_corruption: return clean crops and leave corrupting to `finish_batch`.
    """

    def __init__(self, root: str | Path, corruption: str, severity: int, pre: Any, samples: Samples | None = None,
                 limit: int | None = None, jpeg_quality: int | None = 85, backend: str = "torch",
                 recipe: str | None = None, device_corruption: bool = False) -> None:
        from attnprobe.data import corruptions as C

        self.corruption = C.validate_corruption(corruption)
        self.severity = C.validate_severity(severity)
        self.jpeg_quality = jpeg_quality
        self.backend = C.validate_backend(backend)
        self.recipe = C.resolve_recipe(backend, recipe)
        self.device_corruption = bool(device_corruption)
        params = {"recipe": "resize256-bilinear/centercrop224/corrupt/jpeg", "jpeg_quality": jpeg_quality,
                  "seeding": C.SEED_SCHEME, "corruption": C.corruption_id(self.backend, self.recipe)}
        super().__init__(root, ModelInput(pre), samples=samples, limit=limit, kind="imagenet_c_otf", params=params)

    @property
    def corruption_id(self) -> str:
        """Backend, recipe and engine version of the pixels (also in the fingerprint)."""
        return str(self.params["corruption"])

    def seed(self, i: int) -> int:
        """The corruption seed of sample i (from its relative path, so every rank and worker agrees)."""
        from attnprobe.data import corruptions as C

        return C.image_seed(self.samples[i][0], self.corruption, self.severity)

    @staticmethod
    def clean_crop(img: Any) -> Any:
        """Resize(256) (bilinear, as `make_imagenet_c.py`) and CenterCrop(224) of a PIL image."""
        import torchvision.transforms.functional as TF
        from torchvision.transforms import InterpolationMode

        return TF.center_crop(TF.resize(img, 256, interpolation=InterpolationMode.BILINEAR), [RELEASED_SIZE] * 2)

    def _jpeg(self, arr: Any) -> Any:
        from PIL import Image

        out = Image.fromarray(arr)
        if self.jpeg_quality is None:
            return out
        buf = io.BytesIO()
        out.save(buf, format="JPEG", quality=int(self.jpeg_quality), optimize=True)
        buf.seek(0)
        with Image.open(buf) as im:
            return im.convert("RGB")

    def prepare(self, img: Any, i: int) -> Any:
        import numpy as np

        from attnprobe.data import corruptions as C

        crop = np.asarray(self.clean_crop(img))
        arr = C.corrupt(crop, self.corruption, self.severity, seed=self.seed(i), backend=self.backend,
                        recipe=self.recipe)
        return self._jpeg(arr)

    def _clean_u8(self, img: Any) -> torch.Tensor:
        import numpy as np

        return torch.from_numpy(np.asarray(self.clean_crop(img)).copy()).permute(2, 0, 1)  # (3, 224, 224)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, bool]:
        if not self.device_corruption:
            return super().__getitem__(i)
        label = self.samples[i][1]
        try:
            return self._clean_u8(self.load(i)), label, True
        except (OSError, ValueError, SyntaxError):
            return torch.zeros(3, RELEASED_SIZE, RELEASED_SIZE, dtype=torch.uint8), label, False

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int, bool]]:
        """A batch of items, corrupted by one call of the batched engine (same tensors as `ds[i]` one by one)."""
        if self.device_corruption or self.backend != "torch":
            return [self[i] for i in indices]
        crops, good = [], []
        for j, i in enumerate(indices):
            try:
                crops.append(self._clean_u8(self.load(i)))
                good.append(j)
            except (OSError, ValueError, SyntaxError):
                pass
        out: list[tuple[torch.Tensor, int, bool]] = [(self.blank(), self.samples[i][1], False) for i in indices]
        if crops:
            done = self.finish_batch(torch.stack(crops), [indices[j] for j in good])
            for k, j in enumerate(good):
                out[j] = (done[k], self.samples[indices[j]][1], True)
        return out

    def corrupt_u8(self, x_u8: torch.Tensor, indices: list[int]) -> torch.Tensor:
        """Corrupt clean crops (B, 3, 224, 224) uint8 on their device and make the JPEG round trip: uint8 out.

        Args:
            x_u8: the clean crops of samples `indices` (as returned with ``device_corruption=True``).
            indices: their sample indices in this dataset (they give the seeds).
        """
        from attnprobe.corruptions import jpeg_roundtrip
        from attnprobe.data import corruptions as C

        x = C.corrupt_batch(x_u8, self.corruption, self.severity, [self.seed(i) for i in indices],
                            backend=self.backend, recipe=self.recipe)
        return jpeg_roundtrip(x, int(self.jpeg_quality)) if self.jpeg_quality is not None else x

    def finish_batch(self, x_u8: torch.Tensor, indices: list[int]) -> torch.Tensor:
        """Corrupt clean crops (B, 3, 224, 224) uint8 on their device, JPEG round trip, normalise for the model.

        Args:
            x_u8: the clean crops of samples `indices` (as returned with ``device_corruption=True``).
            indices: their sample indices in this dataset (they give the seeds).

        Returns:
            (B, 3, S, S) float on the device of `x_u8`, what ``ds[i]`` gives for each sample.
        """
        x = self.corrupt_u8(x_u8, indices)
        t = self.transform
        if t.size != RELEASED_SIZE:  # NOTE: the model's own resize, on PIL images as in `ds[i]`
            from PIL import Image

            cpu = x.to("cpu").permute(0, 2, 3, 1).numpy()
            return torch.stack([t(Image.fromarray(a)) for a in cpu]).to(x.device)
        mean = torch.tensor(t.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(t.std, device=x.device).view(1, 3, 1, 1)
        return (x.to(torch.float32) / 255 - mean) / std

    def encoded(self, progressive: bool = True, in_worker: bool = False) -> Any:
        """This cell for the engine's device input path (`attnprobe.engine.device_input`), corrupting on the device.

        The files are decoded (nvJPEG, libjpeg-turbo, or PIL in the workers), resized (256, bilinear) and cropped
        (224) with the exact tensor version of the CPU transform, then `corrupt_u8` runs on the batch where the
        model runs (the GPU: no per-image CPU work but the JPEG round trip), then the model's normalisation. On the
        CPU the tensors equal the CPU path's. None (the CPU path) for the reference backend, or a model whose input
        is not 224 px (its resize comes after the corruption).
        """
        if self.backend != "torch" or self.transform.size != RELEASED_SIZE:
            return None
        from attnprobe.data.encoded import EncodedImages
        from attnprobe.data.tensor_transforms import TensorRecipe

        t = self.transform
        recipe = TensorRecipe("bilinear", resize=256, crop=RELEASED_SIZE, mean=tuple(t.mean), std=tuple(t.std))
        if not recipe.supported:
            return None
        return EncodedImages(self, recipe, progressive=progressive, in_worker=in_worker,
                             stages=[self._device_stage])

    def _device_stage(self, x_u8: torch.Tensor, batch: Any) -> torch.Tensor:
        """`U8Stage` of the device path: the batch's clean crops -> corrupted (and JPEG round-tripped) crops."""
        return self.corrupt_u8(x_u8, batch.index)


def on_the_fly_cells(clean_root: str | Path, pre: Any, corruptions: Sequence[str] | None = None,
                     severities: Sequence[int] | None = None, limit: int | None = None,
                     jpeg_quality: int | None = 85, samples: Samples | None = None, backend: str = "torch",
                     recipe: str | None = None, device_corruption: bool = False) -> list[CellData]:
    """One on-the-fly dataset per (corruption, severity) over a clean folder, checked before any compute.

    `samples` is the folder's listing when the caller already scanned it (`scan_class_folders`); `backend`,
    `recipe` and `device_corruption` go to `OnTheFlyCorruption` (the backend and recipe also into each cell's
    info and the dataset fingerprint).
    """
    from attnprobe.data import corruptions as C

    names, sevs = check_corruption_names(corruptions), check_severities(severities)
    recipe = C.resolve_recipe(backend, recipe)
    if samples is None:
        samples = scan_class_folders(clean_root, what="clean validation folder")
    cells = []
    for c in names:
        for s in sevs:
            ds = OnTheFlyCorruption(clean_root, c, s, pre, samples=samples, limit=limit, jpeg_quality=jpeg_quality,
                                    backend=backend, recipe=recipe, device_corruption=device_corruption)
            info = {"source": "on_the_fly", "root": str(Path(clean_root).expanduser().resolve()),
                    "jpeg_quality": jpeg_quality, "corruption_backend": backend, "corruption_recipe": recipe,
                    "corruption_id": ds.corruption_id,
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
