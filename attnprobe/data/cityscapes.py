"""Cityscapes and Cityscapes-C: the val split, a released/generated Cityscapes-C tree, and corruption on the fly.

Layouts (facts in `attnprobe/protocol/cityscapes.json` and `cityscapes_c.json`):

* Cityscapes: `<root>/leftImg8bit/val/<city>/<name>_leftImg8bit.png` with
  `<root>/gtFine/val/<city>/<name>_gtFine_labelTrainIds.png` (trainIds, 255 = ignore). Where only
  `<name>_gtFine_labelIds.png` exists, it is converted with the official labelId -> trainId table.
* Cityscapes-C, as the official generator (`tools/gen_city_c.py`) writes it and `test_cityscapes_c.py` reads it:
  `<root>/<corruption>/<severity>/<city>/<name>_leftImg8bit.png` (2048 x 1024 PNG, corrupted at native size), the
  labels in `<root>/gtFine/val/...` (or in a separate Cityscapes root, `gt_root`), the clean copies in
  `<root>/clean/...` (not needed here).
* On the fly: a Cityscapes val image is corrupted at its native size, in BGR order (as the authors fed
  `imagecorruptions`), with a seed fixed per (image, corruption, severity)
  (`attnprobe.data.corruptions.image_seed`), then goes through the test pipeline. The corruption function is
  chosen by `backend`: "torch" (the batched engine, recipe "imagecorruptions" by default; the default backend),
  "reference" (the imagecorruptions package itself) or any function; `write_cityscapes_c_tree` writes those same
  pixels as a tree in the official layout.

The official generator seeded NumPy once and drew in `os.scandir` order, so nobody can regenerate the authors'
exact pixels: for paper numbers use the released/authors' tree; on-the-fly numbers are the same recipe, other draws.

    samples = scan_cityscapes("/data/cityscapes")                              # checked once, shared
    val = CityscapesDataset("/data/cityscapes", samples=samples)
    cells = on_the_fly_cityscapes_c_cells("/data/cityscapes", samples=samples)  # 72 (corruption, severity) cells
    cells = cityscapes_c_cells("/data/cityscapes-c")                           # the same cells from a tree
"""

from __future__ import annotations

import difflib
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from attnprobe.data.seg_transforms import SegTestPipeline, label_id_lut, read_bgr, read_label
from attnprobe.data.segmentation import (CorruptionBackend, SegmentationDataset, SegSample, check_sizes,
                                         pair_files, walk_suffix)
from attnprobe.errors import UserError

__all__ = [
    "BACKENDS",
    "CityscapesCCell",
    "CityscapesCTree",
    "CityscapesDataset",
    "EngineBackend",
    "OnTheFlyCityscapesC",
    "cityscapes_c_cells",
    "imagecorruptions_backend",
    "on_the_fly_cityscapes_c_cells",
    "scan_cityscapes",
    "scan_cityscapes_c_tree",
    "select_cityscapes_c",
    "write_cityscapes_c_tree",
]

IMAGE_SUFFIX = "_leftImg8bit.png"
TRAIN_ID_SUFFIX = "_gtFine_labelTrainIds.png"
LABEL_ID_SUFFIX = "_gtFine_labelIds.png"
SPLITS = ("train", "val")
#: Written into a Cityscapes-C tree that we generate; we only ever add files to a folder that has it.
TREE_MARKER = ".attnprobe-cityscapes-c"


# ---------------------------------------------------------------------------------------------------------------
# Cityscapes
# ---------------------------------------------------------------------------------------------------------------
def _scan_labels(label_dir: Path) -> dict[str, tuple[str, bool]]:
    """key (`<city>/<name>`) -> (label path relative to `label_dir`, holds labelIds); trainIds files preferred."""
    found = {k: (rel, True) for k, rel in walk_suffix(label_dir, LABEL_ID_SUFFIX).items()}
    found.update({k: (rel, False) for k, rel in walk_suffix(label_dir, TRAIN_ID_SUFFIX).items()})
    return found


def _pair_cityscapes(image_dir: Path, label_dir: Path, labels: dict[str, tuple[str, bool]], what: str,
                     probe_images: bool = True) -> list[SegSample]:
    images = walk_suffix(image_dir, IMAGE_SUFFIX)
    if not images:
        raise UserError(f"{what}: no *{IMAGE_SUFFIX} images in {image_dir}; expected <city>/<name>{IMAGE_SUFFIX}")
    pairs = pair_files(images, {k: rel for k, (rel, _) in labels.items()}, what,
                       image_hint=f"{image_dir}/<city>/<name>{IMAGE_SUFFIX}",
                       label_hint=f"{label_dir}/<city>/<name>{TRAIN_ID_SUFFIX} (make them with cityscapesscripts' "
                                  f"createTrainIdLabelImgs)")
    ids = {rel: label_ids for rel, label_ids in labels.values()}
    return check_sizes(image_dir, label_dir, [(img, lab, ids[lab]) for img, lab in pairs], what, probe_images)


def _label_dir(root: Path, split: str, what: str) -> Path:
    label_dir = root / "gtFine" / split
    if not label_dir.is_dir():
        raise UserError(f"{what}: missing {label_dir}; extract gtFine_trainvaltest.zip into {root} (it holds "
                        f"gtFine/{split}/<city>/*{TRAIN_ID_SUFFIX})")
    return label_dir


def _labels_or_error(label_dir: Path, what: str) -> dict[str, tuple[str, bool]]:
    labels = _scan_labels(label_dir)
    if not labels:
        raise UserError(f"{what}: no label maps in {label_dir}; expected <city>/<name>{TRAIN_ID_SUFFIX} (or "
                        f"{LABEL_ID_SUFFIX}); make them with cityscapesscripts' createTrainIdLabelImgs")
    return labels


def scan_cityscapes(root: str | Path, split: str = "val") -> list[SegSample]:
    """Check a Cityscapes root and list its image/label pairs, sorted; reads only file headers.

    Raises:
        UserError: the root, `leftImg8bit/<split>` or `gtFine/<split>` is missing, images lack labels or labels lack
            images, a label map differs in size from its image, or is not an 8-bit label PNG.
    """
    if split not in SPLITS:
        raise UserError(f"unknown Cityscapes split {split!r}; choose one of: {', '.join(SPLITS)}")
    base = Path(root).expanduser()
    what = f"Cityscapes {split}"
    if not base.is_dir():
        raise UserError(f"Cityscapes root {base} does not exist; pass the folder that holds leftImg8bit/ and gtFine/")
    image_dir = base / "leftImg8bit" / split
    if not image_dir.is_dir():
        raise UserError(f"{what}: missing {image_dir}; pass the Cityscapes root (the folder that holds leftImg8bit/ "
                        f"and gtFine/), with leftImg8bit_trainvaltest.zip extracted into it")
    label_dir = _label_dir(base, split, what)
    return _pair_cityscapes(image_dir, label_dir, _labels_or_error(label_dir, what), what)


class CityscapesDataset(SegmentationDataset):
    """A Cityscapes split (val by default) through the official test pipeline.

    Args:
        root: the Cityscapes root (holds `leftImg8bit/` and `gtFine/`).
        split: "val" (the evaluated split) or "train".
        samples: the checked samples (`scan_cityscapes`), shared between datasets; scanned when omitted.
        pipeline: the test pipeline (default: the official one).
        output: "normalized", "uint8" or "native" (see `attnprobe.data.segmentation`).
        limit: evenly spaced subset of this many images.
    """

    def __init__(self, root: str | Path, split: str = "val", *, samples: Sequence[SegSample] | None = None,
                 pipeline: SegTestPipeline | None = None, output: str = "normalized", limit: int | None = None,
                 kind: str | None = None, params: dict[str, Any] | None = None) -> None:
        base = Path(root).expanduser()
        samples = samples if samples is not None else scan_cityscapes(base, split)
        super().__init__(base / "leftImg8bit" / split, base / "gtFine" / split, samples,
                         kind=kind or f"cityscapes_{split}", pipeline=pipeline, output=output, limit=limit,
                         params=params, fingerprint_root=base)
        self.root = base
        self.split = split


# ---------------------------------------------------------------------------------------------------------------
# Cityscapes-C: selection
# ---------------------------------------------------------------------------------------------------------------
def _check_corruption(name: str) -> str:
    from attnprobe.protocol import cityscapes_c_generated_corruptions

    names = cityscapes_c_generated_corruptions()
    if name in names:
        return name
    close = difflib.get_close_matches(str(name).replace("-", "_").lower(), names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise UserError(f"unknown Cityscapes-C corruption {name!r}{hint}; choose from: {', '.join(names)}")


def select_cityscapes_c(corruptions: Sequence[str] | None = None,
                        severities: Sequence[int] | None = None) -> list[tuple[str, int]]:
    """The (corruption, severity) cells to evaluate.

    Args:
        corruptions: names (default: the 16 evaluated ones, in Table IV order). The 3 corruptions the generator
            writes but the protocol never evaluates (zoom_blur, elastic_transform, pixelate) may be asked for.
        severities: severities for every selected corruption (default: the official ones, 1-3 for the noises and
            1-5 for the rest: 72 cells for all 16).

    Raises:
        UserError: an unknown corruption or a severity outside 1-5.
    """
    from attnprobe.protocol import cityscapes_c_corruptions, cityscapes_c_severities

    names = [_check_corruption(c) for c in (corruptions or cityscapes_c_corruptions())]
    if severities:
        bad = [s for s in severities if s not in (1, 2, 3, 4, 5)]
        if bad:
            raise UserError(f"severity {bad[0]} does not exist; Cityscapes-C severities are 1 to 5")
    out: list[tuple[str, int]] = []
    for c in dict.fromkeys(names):
        official = cityscapes_c_severities(c) if c in cityscapes_c_corruptions() else [1, 2, 3, 4, 5]
        out.extend((c, s) for s in (sorted(set(severities)) if severities else official))
    return out


@dataclass
class CityscapesCCell:
    """One (corruption, severity) cell: its dataset and what to store with it."""

    corruption: str
    severity: int
    dataset: SegmentationDataset
    info: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------
# Cityscapes-C: a released or generated tree
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class CityscapesCTree:
    """A checked Cityscapes-C tree: the root, the label folder and the samples of every selected cell."""

    root: Path
    label_dir: Path
    cells: dict[tuple[str, int], tuple[Path, list[SegSample]]]


def scan_cityscapes_c_tree(root: str | Path, corruptions: Sequence[str] | None = None,
                           severities: Sequence[int] | None = None,
                           gt_root: str | Path | None = None) -> CityscapesCTree:
    """Check a Cityscapes-C tree and list every selected cell; reads only label headers.

    Args:
        root: the tree (holds `<corruption>/<severity>/<city>/*_leftImg8bit.png`).
        corruptions: see `select_cityscapes_c`.
        severities: see `select_cityscapes_c`.
        gt_root: where `gtFine/val` is when the tree has none (a Cityscapes root).

    Raises:
        UserError: the root, a cell folder or the labels are missing, or a cell's images and the labels differ.
    """
    selection = select_cityscapes_c(corruptions, severities)
    base = Path(root).expanduser()
    if not base.is_dir():
        raise UserError(f"Cityscapes-C root {base} does not exist; pass the folder that holds gaussian_noise/, "
                        f"motion_blur/, ... (each with severity folders 1-5) and gtFine/")
    label_dir = base / "gtFine" / "val"
    if not label_dir.is_dir():
        if gt_root is None:
            raise UserError(f"Cityscapes-C: no gtFine/val in {base}; put the Cityscapes gtFine/val labels there, or "
                            f"pass the Cityscapes root that holds them (--gt)")
        label_dir = _label_dir(Path(gt_root).expanduser(), "val", "Cityscapes-C labels")
    labels = _labels_or_error(label_dir, "Cityscapes-C")
    checked: list[SegSample] | None = None
    cells: dict[tuple[str, int], tuple[Path, list[SegSample]]] = {}
    for c, s in selection:
        folder = base / c / str(s)
        if not folder.is_dir():
            hint = "" if (base / c).is_dir() else f" (no {c}/ folder at all: is {base} a Cityscapes-C tree?)"
            raise UserError(f"Cityscapes-C: missing {folder}{hint}; generate it, or select cells with --corruption/"
                            f"--severity")
        images = walk_suffix(folder, IMAGE_SUFFIX)
        if checked is not None and images.keys() == {s_.image[: -len(IMAGE_SUFFIX)] for s_ in checked}:
            cells[(c, s)] = (folder, checked)  # NOTE: every complete cell lists the same names; check labels once
            continue
        # NOTE: corrupted copies keep their source's size; reading 36k image headers would cost seconds, so only
        # the labels' headers are read (a mismatch still fails when the image is decoded).
        checked = _pair_cityscapes(folder, label_dir, labels, f"Cityscapes-C {c}/{s}", probe_images=False)
        cells[(c, s)] = (folder, checked)
    return CityscapesCTree(base, label_dir, cells)


def cityscapes_c_cells(root: str | Path | CityscapesCTree, corruptions: Sequence[str] | None = None,
                       severities: Sequence[int] | None = None, *, gt_root: str | Path | None = None,
                       pipeline: SegTestPipeline | None = None, output: str = "normalized",
                       limit: int | None = None) -> list[CityscapesCCell]:
    """One dataset per (corruption, severity) cell of a Cityscapes-C tree (checked first).

    All cells of one tree share one dataset fingerprint (the tree root and file names); the cell goes in the key.
    """
    tree = root if isinstance(root, CityscapesCTree) else scan_cityscapes_c_tree(root, corruptions, severities,
                                                                                  gt_root)
    out = []
    for (c, s), (folder, samples) in tree.cells.items():
        ds = SegmentationDataset(folder, tree.label_dir, samples, kind="cityscapes_c", pipeline=pipeline,
                                 output=output, limit=limit, params={"source": "tree"}, fingerprint_root=tree.root)
        out.append(CityscapesCCell(c, s, ds, {"source": "tree", "root": str(tree.root.resolve())}))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Cityscapes-C on the fly
# ---------------------------------------------------------------------------------------------------------------
def imagecorruptions_backend(bgr: np.ndarray, corruption: str, severity: int, seed: int) -> np.ndarray:
    """The reference corruption path: the `imagecorruptions` package on one image, seeded
    (`attnprobe.data.corruptions`, backend "reference").

    The array is passed in BGR order, as the official generator did (mmcv.imread gives BGR).
    """
    from attnprobe.data.corruptions import corrupt

    return corrupt(bgr, corruption, severity, seed=seed, backend="reference")


class EngineBackend:
    """A backend of `attnprobe.data.corruptions` ("torch": the batched engine, "reference": the imagecorruptions
    package) as a `CorruptionBackend` on one BGR image; picklable for DataLoader workers.

    The engine's default recipe here is "imagecorruptions", the recipe of the released Cityscapes-C. Its `__name__`
    is the pixels' id (`corruption_id`, e.g. ``torch-v2/imagecorruptions``), which goes into the fingerprint.
    """

    def __init__(self, backend: str | None = None, recipe: str | None = None) -> None:
        from attnprobe.data.corruptions import choose_backend, corruption_id

        self.backend, self.recipe = choose_backend(backend, recipe, default_recipe=CITYSCAPES_C_RECIPE)
        self.__name__ = corruption_id(self.backend, self.recipe)

    def __call__(self, bgr: np.ndarray, corruption: str, severity: int, seed: int) -> np.ndarray:
        from attnprobe.data.corruptions import corrupt

        return corrupt(bgr, corruption, severity, seed=seed, backend=self.backend, recipe=self.recipe)


#: The recipe of the released Cityscapes-C (the authors ran the imagecorruptions package).
CITYSCAPES_C_RECIPE = "imagecorruptions"
#: Named corruption backends (see `EngineBackend`); a function `(bgr, corruption, severity, seed) -> bgr` also works.
BACKENDS = ("torch", "reference")


def _backend(backend: str | CorruptionBackend | None, recipe: str | None = None) -> tuple[str, CorruptionBackend]:
    if callable(backend):
        if recipe is not None:
            raise UserError("a corruption recipe applies to the named backends (torch, reference), not to a "
                            "corruption function; remove the recipe")
        return getattr(backend, "__name__", type(backend).__name__), backend
    if backend is not None and backend not in BACKENDS:
        raise UserError(f"unknown corruption backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    engine = EngineBackend(backend, recipe)
    return engine.__name__, engine


class OnTheFlyCityscapesC(CityscapesDataset):
    """Cityscapes val corrupted on the fly at native size, then the official test pipeline.

    Args:
        root: the Cityscapes root.
        corruption: one of the 19 imagecorruptions names.
        severity: 1-5.
        samples: the checked val samples (`scan_cityscapes`), shared between cells.
        backend: a name in `BACKENDS` ("torch", the default: the batched engine, one image per call; "reference":
            the imagecorruptions package), or a corruption function `(bgr, corruption, severity, seed) -> bgr`
            (same size, uint8).
        recipe: the named backend's recipe (default "imagecorruptions", the released Cityscapes-C's).
        base_seed: changes every draw at once (a second repetition of an experiment).
        pipeline, output, limit: as for `CityscapesDataset`.
    """

    def __init__(self, root: str | Path, corruption: str, severity: int, *,
                 samples: Sequence[SegSample] | None = None,
                 backend: str | CorruptionBackend = "torch", recipe: str | None = None, base_seed: int = 0,
                 pipeline: SegTestPipeline | None = None, output: str = "normalized",
                 limit: int | None = None) -> None:
        from attnprobe.data.corruptions import SEED_SCHEME

        [(self.corruption, self.severity)] = select_cityscapes_c([corruption], [int(severity)])
        self.backend_name, self.backend = _backend(backend, recipe)
        self.base_seed = int(base_seed)
        params = {"recipe": "imagecorruptions/native-size/bgr", "seeding": SEED_SCHEME, "base_seed": self.base_seed,
                  "backend": self.backend_name}
        super().__init__(root, "val", samples=samples, pipeline=pipeline, output=output, limit=limit,
                         kind="cityscapes_c_otf", params=params)

    def seed(self, i: int) -> int:
        """The corruption seed of sample i (stable across runs, ranks and machines)."""
        from attnprobe.data.corruptions import image_seed

        return image_seed(self.image_id(i), self.corruption, self.severity, self.base_seed)

    def prepare(self, bgr: np.ndarray, i: int) -> np.ndarray:
        out = np.asarray(self.backend(bgr, self.corruption, self.severity, self.seed(i)))
        if out.shape != bgr.shape or out.dtype != np.uint8:
            raise RuntimeError(f"corruption backend {self.backend_name!r} returned {out.dtype} {out.shape} for a "
                               f"uint8 {bgr.shape} image; it must keep the size and dtype")
        return out


def on_the_fly_cityscapes_c_cells(root: str | Path, corruptions: Sequence[str] | None = None,
                                  severities: Sequence[int] | None = None, *,
                                  samples: Sequence[SegSample] | None = None,
                                  backend: str | CorruptionBackend = "torch", recipe: str | None = None,
                                  base_seed: int = 0, pipeline: SegTestPipeline | None = None,
                                  output: str = "normalized", limit: int | None = None) -> list[CityscapesCCell]:
    """One on-the-fly dataset per selected cell over Cityscapes val (checked once, before any compute); the
    backend's name (`corruption_id` for the named ones) is in every fingerprint and cell info."""
    selection = select_cityscapes_c(corruptions, severities)
    samples = samples if samples is not None else scan_cityscapes(root, "val")
    out = []
    for c, s in selection:
        ds = OnTheFlyCityscapesC(root, c, s, samples=samples, backend=backend, recipe=recipe, base_seed=base_seed,
                                 pipeline=pipeline, output=output, limit=limit)
        out.append(CityscapesCCell(c, s, ds, {"source": "on_the_fly", "root": str(Path(root).expanduser().resolve()),
                                              "backend": ds.backend_name, "corruption_id": ds.backend_name,
                                              "base_seed": base_seed}))
    return out


# ---------------------------------------------------------------------------------------------------------------
# writing a Cityscapes-C tree
# ---------------------------------------------------------------------------------------------------------------
def _claim_tree(out: Path) -> None:
    """Create `out` or accept it if empty or already ours; never write into someone else's folder."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder; choose another output folder")
    if out.is_dir() and not (out / TREE_MARKER).exists() and any(out.iterdir()):
        raise UserError(f"{out} is not empty and was not written by attnprobe; choose a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    (out / TREE_MARKER).touch()


def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    tmp.replace(path)


def write_cityscapes_c_tree(cityscapes_root: str | Path, out: str | Path, corruptions: Sequence[str] | None = None,
                            severities: Sequence[int] | None = None, *, limit: int | None = None,
                            backend: str | CorruptionBackend = "torch", recipe: str | None = None,
                            base_seed: int = 0, clean: bool = True,
                            progress: Callable[[int, int], None] | None = None) -> Path:
    """Write a Cityscapes-C tree in the official layout, with the on-the-fly pixels (same seeds, same backend).

    Writes `<out>/<corruption>/<severity>/<city>/<name>_leftImg8bit.png` (lossless PNG, BGR as cv2 writes, like the
    official generator), `<out>/gtFine/val/<city>/<name>_gtFine_labelTrainIds.png` and, with `clean`,
    `<out>/clean/...`. Resumable: each file is written atomically and files already there are kept.

    Args:
        cityscapes_root: the Cityscapes root whose val split is corrupted.
        out: the new tree's root (new, empty, or an earlier tree of ours).
        corruptions, severities: see `select_cityscapes_c` (default: the 72 evaluated cells).
        limit: only an evenly spaced subset of this many val images.
        backend, recipe, base_seed: as for `OnTheFlyCityscapesC`.
        clean: also copy the clean images to `<out>/clean/`.
        progress: called with (done, total) after each file.

    Returns:
        The tree's root.
    """
    import cv2

    root = Path(out).expanduser()
    samples = scan_cityscapes(cityscapes_root, "val")
    cells = on_the_fly_cityscapes_c_cells(cityscapes_root, corruptions, severities, samples=samples,
                                          backend=backend, recipe=recipe, base_seed=base_seed, output="native",
                                          limit=limit)
    _claim_tree(root)
    first = cells[0].dataset
    total = len(first) * (len(cells) + 1 + int(clean))
    done = 0
    for i, s in enumerate(first.samples):
        dst = root / "gtFine" / "val" / s.image.replace(IMAGE_SUFFIX, TRAIN_ID_SUFFIX)
        if not dst.exists():
            label = read_label(first.label_root / s.label, label_id_lut() if s.label_ids else None)  # type: ignore
            _write_atomically(dst, lambda p, a=label: _save_png(p, a))
        if clean and not (root / "clean" / s.image).exists():
            _write_atomically(root / "clean" / s.image,
                              lambda p, src=first.image_root / s.image: shutil.copyfile(src, p))
        done += 1 + int(clean)
        if progress:
            progress(done, total)
    for cell in cells:
        ds = cell.dataset
        for i, s in enumerate(ds.samples):
            dst = root / cell.corruption / str(cell.severity) / s.image
            if not dst.exists():
                img = ds.prepare(read_bgr(ds.image_root / s.image), i)
                _write_atomically(dst, lambda p, a=img: _imwrite_png(cv2, p, a))
            done += 1
            if progress:
                progress(done, total)
    return root


def _save_png(path: Path, label: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(label, dtype=np.uint8)).save(path, format="PNG")


def _imwrite_png(cv2: Any, path: Path, bgr: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", bgr)
    if not ok:
        raise OSError(f"cannot encode {path}")
    path.write_bytes(buf.tobytes())
