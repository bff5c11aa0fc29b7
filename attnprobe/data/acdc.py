"""ACDC (adverse conditions: fog, night, rain, snow): datasets per condition, and test predictions for the server.

Layout (`attnprobe/protocol/acdc.json`): `<root>/rgb_anon/<condition>/<split>/<sequence>/<name>_rgb_anon.png` with
`<root>/gt/<condition>/<split>/<sequence>/<name>_gt_labelTrainIds.png` (`*_gt_labelIds.png` are converted when the
trainIds file is missing). The release zips unpack to `<root>/rgb_anon_trainvaltest/rgb_anon/...` and
`<root>/gt_trainval/gt/...`; both forms are accepted. Images are 1920 x 1080; the test pipeline resizes them to
1820 x 1024 and the logits go back to 1920 x 1080 (the label size) before the argmax.

`val` (and `train`) have labels and are scored with mIoU here. `test` labels are hidden: a test dataset yields
all-255 label maps of the image's size (nothing is scored; the shape says the output size) and the predictions go
to the ACDC server, written by `PredictionWriter`: one 8-bit PNG per image, trainIds, 1920 x 1080, named like the
input image, zipped (`zip_predictions`). The paper's ACDC column is that server's test mIoU.

    cells = acdc_cells("/data/acdc", split="test")            # one dataset per condition
    with PredictionWriter("preds/acdc_test") as w:
        w.write(ds.prediction_name(i), pred)                    # pred (1080, 1920) trainIds
    zip_predictions("preds/acdc_test", "acdc_test.zip")
"""

from __future__ import annotations

import difflib
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attnprobe.data.seg_transforms import SegTestPipeline
from attnprobe.data.segmentation import SegmentationDataset, SegSample, check_sizes, pair_files, walk_suffix
from attnprobe.errors import UserError

__all__ = [
    "ACDCCell",
    "ACDCDataset",
    "PredictionWriter",
    "acdc_cells",
    "check_conditions",
    "find_acdc_dirs",
    "scan_acdc",
    "zip_predictions",
]

IMAGE_SUFFIX = "_rgb_anon.png"
TRAIN_ID_SUFFIX = "_gt_labelTrainIds.png"
LABEL_ID_SUFFIX = "_gt_labelIds.png"
SPLITS = ("train", "val", "test")
LABELLED = ("train", "val")


def check_conditions(conditions: Sequence[str] | None) -> list[str]:
    """Validate ACDC condition names (default: all four), keeping order and dropping repeats."""
    from attnprobe.protocol import acdc_conditions

    known = acdc_conditions()
    out: list[str] = []
    for c in conditions or known:
        if c not in known:
            close = difflib.get_close_matches(str(c).lower(), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError(f"unknown ACDC condition {c!r}{hint}; choose from: {', '.join(known)}")
        if c not in out:
            out.append(c)
    return out


def find_acdc_dirs(root: str | Path) -> tuple[Path, Path | None]:
    """The `rgb_anon` folder and the `gt` folder (None if absent) of an ACDC root, in either unpacked form."""
    base = Path(root).expanduser()
    if not base.is_dir():
        raise UserError(f"ACDC root {base} does not exist; pass the folder that holds rgb_anon/ and gt/")
    images = next((p for p in (base / "rgb_anon", base / "rgb_anon_trainvaltest" / "rgb_anon") if p.is_dir()), None)
    if images is None:
        raise UserError(f"{base} is not an ACDC root: no rgb_anon/ (or rgb_anon_trainvaltest/rgb_anon/) in it; "
                        f"extract rgb_anon_trainvaltest.zip there")
    labels = next((p for p in (base / "gt", base / "gt_trainval" / "gt") if p.is_dir()), None)
    return images, labels


def scan_acdc(root: str | Path, condition: str, split: str = "val") -> tuple[Path, Path | None, list[SegSample]]:
    """Check one condition and split of an ACDC root and list its samples, sorted; reads only file headers.

    Returns:
        (image folder, label folder or None for test, samples).

    Raises:
        UserError: unknown condition or split, missing folders, images without labels or labels without images,
            a label map of another size than its image.
    """
    [condition] = check_conditions([condition])
    if split not in SPLITS:
        raise UserError(f"unknown ACDC split {split!r}; choose one of: {', '.join(SPLITS)}")
    images_root, labels_root = find_acdc_dirs(root)
    what = f"ACDC {condition}/{split}"
    image_dir = images_root / condition / split
    if not image_dir.is_dir():
        raise UserError(f"{what}: missing {image_dir}; extract the {condition} images of rgb_anon_trainvaltest.zip")
    images = walk_suffix(image_dir, IMAGE_SUFFIX)
    if not images:
        raise UserError(f"{what}: no *{IMAGE_SUFFIX} images in {image_dir}; expected <sequence>/<name>{IMAGE_SUFFIX}")
    if split not in LABELLED:
        return image_dir, None, check_sizes(image_dir, None, [(rel, None, False) for rel in sorted(images.values())],
                                            what)
    if labels_root is None or not (labels_root / condition / split).is_dir():
        raise UserError(f"{what}: missing the labels gt/{condition}/{split} under {Path(root).expanduser()}; extract "
                        f"gt_trainval.zip there (test labels are hidden: use split 'test' for server predictions)")
    label_dir = labels_root / condition / split
    found = {k: (rel, True) for k, rel in walk_suffix(label_dir, LABEL_ID_SUFFIX).items()}
    found.update({k: (rel, False) for k, rel in walk_suffix(label_dir, TRAIN_ID_SUFFIX).items()})
    pairs = pair_files(images, {k: rel for k, (rel, _) in found.items()}, what,
                       image_hint=f"{image_dir}/<sequence>/<name>{IMAGE_SUFFIX}",
                       label_hint=f"{label_dir}/<sequence>/<name>{TRAIN_ID_SUFFIX}")
    ids = {rel: label_ids for rel, label_ids in found.values()}
    return image_dir, label_dir, check_sizes(image_dir, label_dir, [(i, lab, ids[lab]) for i, lab in pairs], what)


class ACDCDataset(SegmentationDataset):
    """One ACDC condition and split through the official test pipeline.

    Args:
        root: the ACDC root.
        condition: fog, night, rain or snow.
        split: "val" (labelled), "test" (labels hidden: all-255 label maps) or "train".
        pipeline, output, limit: see `attnprobe.data.segmentation.SegmentationDataset`.
    """

    def __init__(self, root: str | Path, condition: str, split: str = "val", *,
                 pipeline: SegTestPipeline | None = None, output: str = "normalized",
                 limit: int | None = None) -> None:
        image_dir, label_dir, samples = scan_acdc(root, condition, split)
        super().__init__(image_dir, label_dir, samples, kind=f"acdc_{split}", pipeline=pipeline, output=output,
                         limit=limit, params={"condition": condition}, fingerprint_root=root)
        self.root = Path(root).expanduser()
        self.condition = condition
        self.split = split

    def prediction_name(self, i: int) -> str:
        """`<condition>/<split>/<sequence>/<name>_rgb_anon.png`: the image's path below `rgb_anon/`."""
        return f"{self.condition}/{self.split}/{self.samples[i].image}"


@dataclass
class ACDCCell:
    """One condition: its dataset and what to store with it."""

    condition: str
    dataset: ACDCDataset
    info: dict[str, Any] = field(default_factory=dict)


def acdc_cells(root: str | Path, conditions: Sequence[str] | None = None, split: str = "val", *,
               pipeline: SegTestPipeline | None = None, output: str = "normalized",
               limit: int | None = None) -> list[ACDCCell]:
    """One dataset per condition (default: all four), every one checked before any compute."""
    out = []
    for c in check_conditions(conditions):
        ds = ACDCDataset(root, c, split, pipeline=pipeline, output=output, limit=limit)
        out.append(ACDCCell(c, ds, {"source": "acdc", "split": split, "root": str(ds.root.resolve()),
                                    "labels": ds.has_labels}))
    return out


# ---------------------------------------------------------------------------------------------------------------
# predictions for the evaluation server
# ---------------------------------------------------------------------------------------------------------------
class PredictionWriter:
    """Writes predicted class maps as 8-bit PNGs, the format of the ACDC evaluation server.

    One file per image, named like the input image (`<name>_rgb_anon.png`), pixel = trainId (`encoding="trainIds"`,
    what the ACDC server takes) or Cityscapes labelId (`"labelIds"`, what the official `format_only` writes).
    `layout="flat"` puts every file directly in the folder (as the official code and the usual submissions do);
    `"tree"` keeps `<condition>/<split>/<sequence>/`. Each file is written atomically, so a run that is stopped and
    started again can skip what `exists`. The folder must be new, empty, or one this writer made before.

    Args:
        out_dir: the output folder.
        encoding: "trainIds" or "labelIds".
        layout: "flat" or "tree".
    """

    MARKER = ".attnprobe-predictions"

    def __init__(self, out_dir: str | Path, encoding: str = "trainIds", layout: str = "flat") -> None:
        if encoding not in ("trainIds", "labelIds"):
            raise UserError(f"unknown prediction encoding {encoding!r}; choose trainIds or labelIds")
        if layout not in ("flat", "tree"):
            raise UserError(f"unknown prediction layout {layout!r}; choose flat or tree")
        self.out_dir = Path(out_dir).expanduser()
        self.encoding = encoding
        self.layout = layout
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise UserError(f"{self.out_dir} exists and is not a folder; choose another output folder")
        if self.out_dir.is_dir() and not (self.out_dir / self.MARKER).exists() and any(self.out_dir.iterdir()):
            raise UserError(f"{self.out_dir} is not empty and was not written by attnprobe; choose a new or empty "
                            f"folder for the predictions")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / self.MARKER).write_text(f"encoding={encoding}\nlayout={layout}\n")
        self._written: dict[Path, str] = {}
        self._lut: np.ndarray | None = None
        if encoding == "labelIds":
            from attnprobe.protocol import cityscapes_classes

            lut = np.zeros(256, dtype=np.uint8)  # NOTE: 255 (ignore) -> labelId 0 "unlabeled"
            for c in cityscapes_classes():
                lut[c["trainId"]] = c["labelId"]
            self._lut = lut

    def __enter__(self) -> PredictionWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def path_for(self, name: str) -> Path:
        """Where the prediction of the image `name` (e.g. `ds.prediction_name(i)`) goes."""
        rel = Path(name)
        return self.out_dir / (rel.name if self.layout == "flat" else rel)

    def exists(self, name: str) -> bool:
        return self.path_for(name).exists()

    def write(self, name: str, pred: torch.Tensor | np.ndarray,
              expected_size: tuple[int, int] | None = None) -> Path:
        """Write one prediction.

        Args:
            name: the image's name (`ACDCDataset.prediction_name(i)`).
            pred: (H, W) trainIds (0..18; 255 allowed), any integer dtype, on any device.
            expected_size: (height, width) the file must have (the input image's size); checked when given.
        """
        arr = pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
        if arr.ndim != 2:
            raise ValueError(f"a prediction must be one (H, W) map, got shape {arr.shape}")
        if expected_size is not None and tuple(arr.shape) != tuple(expected_size):
            raise ValueError(f"prediction for {name} is {arr.shape[1]}x{arr.shape[0]}, its image is "
                             f"{expected_size[1]}x{expected_size[0]}; resize the logits to the image size first")
        if np.any((arr < 0) | ((arr > 18) & (arr != 255))):
            raise ValueError(f"prediction for {name} has values outside the 19 trainIds")
        out = arr.astype(np.uint8)
        if self._lut is not None:
            out = self._lut[out]
        path = self.path_for(name)
        if self._written.get(path, name) != name:
            raise UserError(f"two images map to the prediction file {path.name} ({self._written[path]} and {name}); "
                            f"use layout='tree'")
        self._written[path] = name
        path.parent.mkdir(parents=True, exist_ok=True)
        from PIL import Image

        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        Image.fromarray(np.ascontiguousarray(out)).save(tmp, format="PNG")
        tmp.replace(path)
        return path


def zip_predictions(out_dir: str | Path, zip_path: str | Path) -> Path:
    """Zip the PNGs of a `PredictionWriter` folder (paths relative to it) for upload; returns the zip's path."""
    src = Path(out_dir).expanduser()
    if not (src / PredictionWriter.MARKER).exists():
        raise UserError(f"{src} is not a predictions folder written by attnprobe")
    dst = Path(zip_path).expanduser()
    if dst.exists():
        raise UserError(f"{dst} already exists; choose another name or remove it")
    files = sorted(p for p in src.rglob("*.png") if not p.name.startswith("."))
    if not files:
        raise UserError(f"{src} holds no predictions to zip")
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for p in files:
            zf.write(p, p.relative_to(src).as_posix())
    tmp.replace(dst)
    return dst
