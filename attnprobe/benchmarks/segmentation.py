"""Semantic segmentation robustness (tasks "cityscapes", "cityscapes_c", "acdc", "acdc_test") over the engine.

    from attnprobe.benchmarks.segmentation import check_segmentation_inputs, evaluate_segmentation
    inputs = check_segmentation_inputs("cityscapes-c", "/data/cityscapes", on_the_fly=True)   # checked, no model
    report = evaluate_segmentation(loaded, store, inputs)          # SegmentationReport
    report.miou, report.summary["corruptions"]["fog"], report.cells[0].metrics["iou"]

One cell per (condition, severity): clean Cityscapes val ("clean"), a Cityscapes-C corruption and severity (from a
released/generated tree or corrupted on the fly), or an ACDC condition. Every image goes through the official test
pipeline and inference of the model (`SegProtocol`: keep-ratio resize, slide 1024 x 1024 windows with stride 768,
logits resized to the label size, argmax); each chunk of images commits its per-class integer areas, so a chunked,
resumed or torchrun-sharded run gives exactly the single-pass mIoU. The store key records the protocol
(`preprocessing`) and the data source (the dataset fingerprint names the tree, or the on-the-fly recipe and
corruption backend). ACDC's test split has hidden labels: its predictions are written as PNGs for the server and
zipped. A few predictions per cell are kept as store artifacts for the report's figures (`keep_predictions`).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from attnprobe import distributed as D
from attnprobe.benchmarks.common import register_model
from attnprobe.benchmarks.seg_outputs import IndexTargets, keep_predictions, prediction_sink
from attnprobe.benchmarks.seg_protocol import SegProtocol, check_segmentation_model, miou_scorer
from attnprobe.engine import CellResult, CellSpec, finite, run_cells
from attnprobe.errors import UserError
from attnprobe.store import CellKey, ResultsStore

__all__ = ["SEG_CHUNK_SIZE", "SETS", "SegCell", "SegInputs", "SegmentationReport", "check_segmentation_inputs",
           "evaluate_segmentation", "segmentation_cells_from_store"]

SETS = ("cityscapes", "cityscapes-c", "acdc")
#: Images per committed chunk: one 2048 x 1024 image is 3 windows of 4096 tokens, so 50 images are a few minutes of
#: work on a GPU; a kill loses at most that.
SEG_CHUNK_SIZE = 50
#: Kept predictions per cell by default (artifacts for the report's figures).
KEEP_DEFAULT = 2


# ---------------------------------------------------------------------------------------------------------------
# inputs: checked once, before any model is loaded
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class SegInputs:
    """Checked segmentation inputs (`check_segmentation_inputs`), shared by every model of a run."""

    set: str
    data: Path
    split: str = "val"
    on_the_fly: bool = False
    corruptions: list[str] | None = None
    severities: list[int] | None = None
    conditions: list[str] = field(default_factory=list)
    gt_root: Path | None = None
    backend: Any = None  # None (torch), a name in BACKENDS or a function (bgr, corruption, severity, seed) -> bgr
    recipe: str | None = None  # the named backend's recipe (default: imagecorruptions, the released Cityscapes-C's)
    base_seed: int = 0
    samples: Any = None  # Cityscapes val samples (clean set, on the fly)
    tree: Any = None  # a checked Cityscapes-C tree
    data_label: str | None = None  # how tables name `data` (default: its absolute path)

    @property
    def task(self) -> str:
        """The store task: cityscapes, cityscapes_c, acdc (val) or acdc_test."""
        if self.set == "acdc":
            return "acdc" if self.split == "val" else f"acdc_{self.split}"
        return self.set.replace("-", "_")

    @property
    def corruption_name(self) -> str:
        """What corrupts the images on the fly: a `corruption_id` (``torch-v2/imagecorruptions``) or a function's
        name."""
        from attnprobe.data.cityscapes import EngineBackend

        if isinstance(self.backend, str) or self.backend is None:
            return EngineBackend(self.backend, self.recipe).__name__
        return str(getattr(self.backend, "__name__", "custom"))

    @property
    def source(self) -> str:
        """Where the images come from, in words (every table says it)."""
        root = self.data_label or str(self.data.expanduser().resolve())
        if self.set == "cityscapes":
            return f"Cityscapes val at {root}"
        if self.set == "cityscapes-c":
            if self.on_the_fly:
                backend = self.corruption_name
                return (f"Cityscapes-C generated on the fly from Cityscapes val at {root} ({backend} backend, "
                        f"base seed {self.base_seed})")
            return f"Cityscapes-C tree at {root}"
        return f"ACDC {self.split} at {root}"


def _refuse(given: bool, option: str, where: str) -> None:
    if given:
        raise UserError(f"{option} does not apply to {where}; remove it")


def check_segmentation_inputs(set_name: str, data: str | Path | None, *, on_the_fly: bool = False,
                              corruptions: Sequence[str] | None = None, severities: Sequence[int] | None = None,
                              conditions: Sequence[str] | None = None, split: str = "val",
                              gt_root: str | Path | None = None, backend: Any = None, recipe: str | None = None,
                              base_seed: int = 0) -> SegInputs:
    """Validate the options and the data layout, and list the files (headers only), before any model is loaded.

    Args:
        set_name: "cityscapes" (clean val), "cityscapes-c" or "acdc".
        data: the Cityscapes root, the Cityscapes-C tree (or, with `on_the_fly`, the Cityscapes root), the ACDC root.
        on_the_fly: corrupt Cityscapes val on the fly instead of reading a Cityscapes-C tree.
        corruptions, severities: Cityscapes-C cells (default: the 16 evaluated corruptions at their severities).
        conditions: ACDC conditions (default: all four).
        split: ACDC split, "val" (scored) or "test" (predictions for the server).
        gt_root: a Cityscapes root holding `gtFine/val` when the Cityscapes-C tree has no labels.
        backend: on-the-fly corruption backend: "torch" (the engine; None: the default) or "reference" (the
            imagecorruptions package), or a picklable function `(bgr, corruption, severity, seed) -> bgr`; its
            name (for the named ones: backend, recipe and engine version) is recorded in the store key.
        recipe: the named backend's recipe (default "imagecorruptions", the released Cityscapes-C's).
        base_seed: changes every on-the-fly draw at once.

    Raises:
        UserError: an unknown set, split, corruption or condition, an option that does not apply, a missing or
            malformed data tree (missing gtFine, images without labels or the reverse, label maps of another size).
    """
    from attnprobe.data.acdc import check_conditions, scan_acdc
    from attnprobe.data.cityscapes import BACKENDS, scan_cityscapes, scan_cityscapes_c_tree, select_cityscapes_c

    name = str(set_name).lower().replace("_", "-")
    if name not in SETS:
        raise UserError(f"unknown segmentation set {set_name!r}; choose one of: {', '.join(SETS)}")
    if data is None:
        hint = {"cityscapes": "the Cityscapes root (holds leftImg8bit/ and gtFine/)",
                "cityscapes-c": "the Cityscapes-C tree, or the Cityscapes root with --on-the-fly",
                "acdc": "the ACDC root (holds rgb_anon/ and gt/)"}[name]
        raise UserError(f"no data given; pass --data with {hint}")
    if split not in ("val", "test"):
        raise UserError(f"unknown split {split!r}; choose val or test")
    inputs = SegInputs(set=name, data=Path(data).expanduser(), split=split, on_the_fly=on_the_fly,
                       gt_root=Path(gt_root).expanduser() if gt_root is not None else None, backend=backend,
                       recipe=recipe, base_seed=int(base_seed))
    if name != "cityscapes-c":
        where = f"--set {name}"
        _refuse(bool(corruptions), "--corruption", where)
        _refuse(bool(severities), "--severity", where)
        _refuse(on_the_fly, "--on-the-fly", where)
        _refuse(backend is not None or recipe is not None, "--corruption-backend / --corruption-recipe", where)
        _refuse(gt_root is not None, "--gt", where)
    if name != "acdc":
        _refuse(bool(conditions), "--condition", f"--set {name} (ACDC conditions need --set acdc)")
        _refuse(split != "val", f"--split {split}", f"--set {name} (only ACDC has a test split here)")
    if name == "cityscapes":
        inputs.samples = scan_cityscapes(inputs.data, "val")
    elif name == "cityscapes-c":
        selection = select_cityscapes_c(corruptions, severities)
        inputs.corruptions = list(dict.fromkeys(c for c, _ in selection))
        inputs.severities = sorted(set(severities)) if severities else None
        if on_the_fly:
            _refuse(gt_root is not None, "--gt", "--on-the-fly (the labels come from the Cityscapes root)")
            if isinstance(backend, str) and backend not in BACKENDS:
                raise UserError(f"unknown corruption backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
            _ = inputs.corruption_name  # NOTE: a bad recipe fails here, before any model is loaded
            inputs.samples = scan_cityscapes(inputs.data, "val")
        else:
            _refuse(backend is not None or recipe is not None, "--corruption-backend / --corruption-recipe",
                    "a Cityscapes-C tree (already corrupted; add --on-the-fly to corrupt Cityscapes val)")
            inputs.tree = scan_cityscapes_c_tree(inputs.data, inputs.corruptions, inputs.severities, inputs.gt_root)
    else:
        inputs.conditions = check_conditions(conditions)
        for c in inputs.conditions:
            scan_acdc(inputs.data, c, split)
    return inputs


def _data_cells(inputs: SegInputs, protocol: SegProtocol, limit: int | None) -> list[tuple[str, int, Any, dict]]:
    """(condition, severity, dataset, info) of every cell, with the model's pipeline; uint8 inputs (normalised on
    the device: 4x less to copy than float32)."""
    from attnprobe.data.acdc import acdc_cells
    from attnprobe.data.cityscapes import CityscapesDataset, cityscapes_c_cells, on_the_fly_cityscapes_c_cells

    kw = {"pipeline": protocol.pipeline, "output": "uint8", "limit": limit}
    root = str(inputs.data.expanduser().resolve())
    if inputs.set == "cityscapes":
        ds = CityscapesDataset(inputs.data, samples=inputs.samples, **kw)
        return [("clean", 0, ds, {"source": "cityscapes", "root": root})]
    if inputs.set == "cityscapes-c":
        if inputs.on_the_fly:
            cells = on_the_fly_cityscapes_c_cells(inputs.data, inputs.corruptions, inputs.severities,
                                                  samples=inputs.samples, backend=inputs.backend,
                                                  recipe=inputs.recipe, base_seed=inputs.base_seed, **kw)
        else:
            cells = cityscapes_c_cells(inputs.tree, **kw)
        return [(c.corruption, c.severity, c.dataset, c.info) for c in cells]
    return [(c.condition, 0, c.dataset, c.info) for c in acdc_cells(inputs.data, inputs.conditions, inputs.split,
                                                                      **kw)]


# ---------------------------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class SegCell:
    """One evaluated cell: counts and (labelled splits) the official metrics of its summed areas."""

    task: str
    condition: str
    severity: int
    dataset: str
    n: int
    skipped: int
    cached: bool
    metrics: dict[str, Any] | None = None  # `iou_from_areas` output; None for a test split
    predictions: int = 0  # test split: prediction files written

    @property
    def miou(self) -> float | None:
        return None if self.metrics is None else finite(float(self.metrics["miou"]))

    @classmethod
    def from_result(cls, r: CellResult, labelled: bool, num_classes: int = 19) -> SegCell:
        from attnprobe.segmentation import IoUAccumulator

        metrics = (IoUAccumulator.from_fields(r.extra, num_classes).compute() if labelled and r.extra else None)
        return cls(task=r.key.task, condition=r.key.condition, severity=r.key.severity, dataset=r.key.dataset, n=r.n,
                   skipped=r.skipped, cached=r.cached, metrics=metrics,
                   predictions=int((r.extra or {}).get("predictions", 0)) if not labelled else 0)

    def as_dict(self) -> dict[str, Any]:
        from attnprobe.protocol import cityscapes_class_names

        d: dict[str, Any] = {"condition": self.condition, "severity": self.severity, "n": self.n,
                             "skipped": self.skipped, "cached": self.cached}
        if self.task == "cityscapes_c":
            d = {"corruption": self.condition, **{k: v for k, v in d.items() if k != "condition"}}
        if self.metrics is not None:
            m = self.metrics
            d.update(miou=finite(float(m["miou"])), aacc=finite(float(m["aacc"])), macc=finite(float(m["macc"])),
                     iou={name: finite(float(v)) for name, v in zip(cityscapes_class_names(), m["iou"])},
                     official=m["summary"])
        else:
            d["predictions"] = self.predictions
        return d


@dataclass
class SegmentationReport:
    """Everything `attnprobe seg` reports for one model; `as_dict()` is its `--json` entry."""

    model: str
    checkpoint_sha256: str
    preprocessing: str
    protocol: str
    set: str
    task: str
    source: str
    cells: list[SegCell]
    limit: int | None = None
    predictions_dir: str | None = None
    predictions_zip: str | None = None
    kept: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    out: str | None = None

    @property
    def labelled(self) -> bool:
        return self.task != "acdc_test"

    @property
    def images(self) -> int:
        """Images per cell (the largest cell; cells of one set have the same images, ACDC conditions differ)."""
        return max((c.n + c.skipped for c in self.cells), default=0)

    def pooled(self) -> dict[str, Any] | None:
        """Metrics of all evaluated cells' areas summed (one cell: that cell's metrics)."""
        from attnprobe.segmentation import iou_from_areas

        ms = [c.metrics for c in self.cells if c.metrics is not None]
        if not ms:
            return None
        total = sum(np.stack([m[k] for k in ("area_intersect", "area_union", "area_pred", "area_label")])
                    for m in ms)
        return iou_from_areas(total)

    @property
    def summary(self) -> dict[str, Any]:
        """The official averages: Cityscapes-C per corruption / group / average, ACDC average (None when partial)."""
        from attnprobe.segmentation import acdc_summary, cityscapes_c_summary

        if self.task == "cityscapes_c":
            return cityscapes_c_summary({(c.condition, c.severity): c.miou for c in self.cells if c.miou is not None})
        if self.task == "acdc":
            per = {c.condition: c.miou for c in self.cells if c.miou is not None}
            areas = {c.condition: np.stack([c.metrics[k] for k in ("area_intersect", "area_union", "area_pred",
                                                                   "area_label")])
                     for c in self.cells if c.metrics is not None}
            return acdc_summary(per, areas)
        if self.task == "cityscapes":
            return {"miou": self.cells[0].miou if self.cells else None}
        return {"predictions": sum(c.predictions for c in self.cells), "zip": self.predictions_zip}

    @property
    def miou(self) -> float | None:
        """The set's headline mIoU (fraction): clean mIoU, the Cityscapes-C average, the ACDC average; None when
        the table is partial or the labels are hidden."""
        s = self.summary
        if self.task == "cityscapes":
            return s["miou"]
        if self.task in ("cityscapes_c", "acdc"):
            return s["average"]
        return None

    def as_dict(self) -> dict[str, Any]:
        from attnprobe.protocol import cityscapes_class_names

        pooled = self.pooled()
        summary = self.summary
        if "missing" in summary:
            summary = {**summary, "missing": [list(m) if isinstance(m, tuple) else m for m in summary["missing"]]}
        return {
            "model": self.model, "checkpoint_sha256": self.checkpoint_sha256, "preprocessing": self.preprocessing,
            "protocol": self.protocol, "set": self.set, "task": self.task, "source": self.source,
            "images_per_cell": self.images, "limit": self.limit, "miou": self.miou,
            "iou": ({n: finite(float(v)) for n, v in zip(cityscapes_class_names(), pooled["iou"])} if pooled else None),
            "iou_of": "the cell" if len(self.cells) == 1 else "all evaluated cells, areas summed",
            "aacc": finite(float(pooled["aacc"])) if pooled else None,
            "macc": finite(float(pooled["macc"])) if pooled else None,
            "summary": summary, "cells": [c.as_dict() for c in self.cells],
            "predictions_dir": self.predictions_dir, "predictions_zip": self.predictions_zip,
            "kept_predictions": len(self.kept), "notes": self.notes, "out": self.out,
        }


# ---------------------------------------------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------------------------------------------
def _uniform_batches(datasets: Sequence[Any], batch_size: int, notes: list[str]) -> int:
    sizes = {ds.input_size(i) for ds in datasets for i in range(len(ds))}
    if len(sizes) > 1 and batch_size > 1:
        notes.append(f"images of {len(sizes)} different sizes: evaluated one per batch (a batch needs one size)")
        return 1
    return batch_size


def evaluate_segmentation(loaded: Any, store: ResultsStore | None, inputs: SegInputs, *, limit: int | None = None,
                          keep: int = KEEP_DEFAULT, protocol: SegProtocol | None = None,
                          predictions_dir: str | Path | None = None, **run_kw: Any) -> SegmentationReport:
    """Evaluate one loaded segmentation model on every cell of `inputs`, resumably.

    Args:
        loaded: a `LoadedModel` whose model is a segmentation model (`model.task == "segmentation"`).
        store: the results store (rank 0; `None` on other ranks).
        inputs: from `check_segmentation_inputs`.
        limit: evenly spaced subset of this many images per cell (labelled as such everywhere).
        keep: predictions kept per cell as artifacts for the figures (rank 0; 0 keeps none).
        protocol: test pipeline and inference (default: `SegProtocol.for_model(loaded)`).
        predictions_dir: where a test split's prediction PNGs go (default: `<store>/acdc_test`; needed on every rank
            of a distributed run, on a file system they all see).
        run_kw: passed to `run_cells` (batch_size, workers, device, fresh, strict, progress, chunk_size, ...).

    Raises:
        UserError: a classification model, a card with an unsupported pipeline, a store that does not fit.
    """
    check_segmentation_model(loaded)
    proto = protocol or SegProtocol.for_model(loaded)
    notes: list[str] = []
    data_cells = _data_cells(inputs, proto, limit)
    task, labelled = inputs.task, inputs.split == "val"
    keys = [CellKey(model=loaded.name, checkpoint_sha256=loaded.checkpoint_sha256, task=task,
                    dataset=ds.fingerprint, preprocessing=proto.key(), condition=cond, severity=int(sev))
            for cond, sev, ds, _ in data_cells]
    infos = [{**info, "limit": limit, "protocol": proto.describe(), "source_text": inputs.source}
             for _, _, _, info in data_cells]
    datasets = [ds for _, _, ds, _ in data_cells]
    run_kw["batch_size"] = _uniform_batches(datasets, int(run_kw.get("batch_size", 1)), notes)
    run_kw.setdefault("chunk_size", SEG_CHUNK_SIZE)
    if D.is_main():
        register_model(loaded, store)
    pred_dir = zip_path = None
    if labelled:
        specs = [CellSpec(k, ds, info) for k, ds, info in zip(keys, datasets, infos)]
        results = run_cells(loaded.model, specs, store, scorer=miou_scorer(proto), **run_kw)
    else:
        pred_dir, writer = _prediction_writer(loaded, store, predictions_dir)
        specs = [CellSpec(k, IndexTargets(ds, i), info) for i, (k, ds, info) in enumerate(zip(keys, datasets, infos))]
        results = run_cells(loaded.model, specs, store, scorer=prediction_sink(proto, datasets, writer), **run_kw)
        if D.is_main():
            zip_path = _zip_predictions(pred_dir, [writer.path_for(ds.prediction_name(i)) for ds in datasets
                                                   for i in range(len(ds))], any(not r.cached for r in results))
            notes.append(f"ACDC test labels are hidden: {sum(r.n for r in results)} predictions (trainIds, "
                         f"{datasets[0].native_size(0)[1]}x{datasets[0].native_size(0)[0]} PNG) written to {pred_dir}; "
                         f"upload {zip_path} to the ACDC evaluation server")
    kept: list[dict[str, Any]] = []
    if D.is_main() and keep > 0:
        device = run_kw.get("device") or next(iter(loaded.model.parameters())).device
        kept = keep_predictions(loaded, proto, store, task, specs if labelled else
                                [CellSpec(k, ds) for k, ds in zip(keys, datasets)], keep, device, inputs.source)
    if inputs.on_the_fly:
        notes.append(f"on-the-fly Cityscapes-C: the authors' recipe (native size, BGR, imagecorruptions) made by "
                     f"{inputs.corruption_name}, with other random draws; for paper numbers use the authors' tree")
    if task == "acdc":
        notes.append("ACDC val mIoU; the paper's ACDC column is the test-server mIoU (use --split test)")
    if limit is not None:
        notes.append(f"--limit {limit}: an evenly spaced subset of each cell; not comparable with full-set numbers")
    return SegmentationReport(model=loaded.name, checkpoint_sha256=loaded.checkpoint_sha256, preprocessing=proto.key(),
                              protocol=proto.describe(), set=inputs.set, task=task, source=inputs.source,
                              cells=[SegCell.from_result(r, labelled, proto.num_classes) for r in results],
                              limit=limit, predictions_dir=str(pred_dir) if pred_dir else None,
                              predictions_zip=str(zip_path) if zip_path else None, kept=kept, notes=notes,
                              out=str(store.root) if store is not None else None)


def _prediction_writer(loaded: Any, store: ResultsStore | None, predictions_dir: str | Path | None) -> tuple[Path, Any]:
    """The prediction folder of this model (`<dir>/<model>-<sha12>/`), made by rank 0 before the others open it."""
    from attnprobe.benchmarks.seg_outputs import _slug
    from attnprobe.data.acdc import PredictionWriter

    if predictions_dir is None:
        if store is None:
            raise ValueError("predictions_dir is required on ranks without the results store")
        predictions_dir = store.root / "acdc_test"
    folder = Path(predictions_dir).expanduser() / f"{_slug(loaded.name)}-{loaded.checkpoint_sha256[:12]}"
    writer = PredictionWriter(folder) if D.is_main() else None
    D.barrier()
    return folder, writer if writer is not None else PredictionWriter(folder)


def _zip_predictions(folder: Path, files: Sequence[Path], changed: bool) -> Path:
    """Zip exactly this run's prediction files (not others left in the folder by a run with another --limit).

    The zip is rewritten whenever a prediction was (re)computed; it is ours (beside the folder we made)."""
    dst = folder.with_suffix(".zip")
    if dst.exists() and not changed:
        return dst
    missing = [p for p in files if not p.exists()]
    if missing:
        raise RuntimeError(f"{len(missing)} prediction file(s) are missing, e.g. {missing[0]}")
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(files):
            zf.write(p, p.name)
    tmp.replace(dst)
    return dst


def segmentation_cells_from_store(store: ResultsStore, **filters: Any) -> list[dict[str, Any]]:
    """Finished segmentation cells read back from a store, each with its metrics (for tables and figures).

    Each entry: model, checkpoint_sha256, task, dataset, preprocessing, condition, severity, n, skipped, info, and
    `metrics` (`iou_from_areas` of the stored areas; None for test-split cells).
    """
    from attnprobe.segmentation import IoUAccumulator

    out = []
    for task in ("cityscapes", "cityscapes_c", "acdc", "acdc_test"):
        if "task" in filters and filters["task"] != task:
            continue
        for row in store.cells(**{**filters, "task": task}):
            extra = row.get("extra") or {}
            row["metrics"] = (IoUAccumulator.from_fields(extra).compute()
                              if task != "acdc_test" and "area_label_00" in extra else None)
            out.append(row)
    return out
