"""The ImageNet-C benchmark (task "imagenet_c"): released tree or on-the-fly corruption, one pass over all cells.

    from attnprobe.benchmarks.imagenet_c import evaluate_imagenet_c
    report = evaluate_imagenet_c(loaded, store, data="/data/imagenet-c")      # ImageNetCReport
    report.summary()["mce"]

`imagenet_c_tables` reads the results back from a store for tables and figures. The formulas (CE, mCE, relative
mCE, retention) live in `attnprobe.robustness`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnprobe import distributed as D
from attnprobe.benchmarks.clean import clean_cell
from attnprobe.benchmarks.common import cell_key, register_model
from attnprobe.engine import CellResult, CellSpec, finite, run_cells
from attnprobe.errors import UserError
from attnprobe.store import ResultsStore

__all__ = ["ImageNetCReport", "check_imagenet_c_inputs", "evaluate_imagenet_c", "imagenet_c_tables"]


@dataclass
class ImageNetCReport:
    """Everything `attnprobe mce` reports for one model; `as_dict()` is the `--json` payload entry."""

    model: str
    checkpoint_sha256: str
    preprocessing: str
    source: str
    cells: list[CellResult]
    clean: CellResult | None
    out: str | None
    notes: list[str]

    def errors(self) -> dict[str, dict[int, float]]:
        """Top-1 error per corruption and severity (cells without a single readable image are left out)."""
        table: dict[str, dict[int, float]] = {}
        for r in self.cells:
            if r.n:
                table.setdefault(r.key.condition, {})[r.key.severity] = r.top1_error
        return table

    def summary(self) -> dict[str, Any]:
        """mCE and friends; `None` where the table is too partial for a metric (never a partial average)."""
        from attnprobe import robustness as R

        errors = self.errors()
        full = {c: v for c, v in errors.items() if all(s in v for s in (1, 2, 3, 4, 5))}
        complete = R.is_complete(full)
        clean_err = self.clean.top1_error if self.clean is not None and self.clean.n else None
        out: dict[str, Any] = {
            "complete": complete,
            "missing_corruptions": R.missing_corruptions(full),
            "mce": R.mce(full) if complete else None,
            "ce": R.corruption_errors(full),
            "clean_error": clean_err,
            "relative_mce": R.relative_mce(full, clean_err) if complete and clean_err is not None else None,
            "mean_corrupted_accuracy": R.mean_corrupted_accuracy(full) if complete else None,
        }
        out["retention"] = (R.retention(out["mean_corrupted_accuracy"], 1.0 - clean_err)
                            if complete and clean_err is not None and clean_err < 1.0 else None)
        return out

    def as_dict(self) -> dict[str, Any]:
        cells = [{"corruption": r.key.condition, "severity": r.key.severity, "n": r.n, "correct": r.correct,
                  "skipped": r.skipped, "top1_error": finite(r.top1_error), "cached": r.cached} for r in self.cells]
        d: dict[str, Any] = {"model": self.model, "checkpoint_sha256": self.checkpoint_sha256,
                             "preprocessing": self.preprocessing, "source": self.source, "cells": cells}
        d.update(self.summary())
        if self.clean is not None:
            d["clean"] = {"n": self.clean.n, "correct": self.clean.correct, "skipped": self.clean.skipped,
                          "top1_error": finite(self.clean.top1_error), "dataset": self.clean.key.dataset}
        d["out"] = self.out
        d["notes"] = self.notes
        return d


def check_imagenet_c_inputs(data: str | Path | None = None, clean: str | Path | None = None,
                            on_the_fly: bool = False, corruptions: Sequence[str] | None = None,
                            severities: Sequence[int] | None = None) -> dict[str, Any]:
    """Validate the ImageNet-C inputs and list the files, before any model is loaded or image decoded.

    Returns:
        Scanned inputs to pass to `evaluate_imagenet_c(..., scanned=...)`.

    Raises:
        UserError: conflicting or missing options, unknown names, a tree that is not ImageNet-C, missing or empty
            folders.
    """
    from attnprobe.data.folders import scan_class_folders
    from attnprobe.data.imagenet_c import check_corruption_names, check_severities, scan_released_tree

    names, sevs = check_corruption_names(corruptions), check_severities(severities)
    if on_the_fly and clean is None:
        raise UserError("--on-the-fly corrupts a clean folder: add --clean VAL_DIR")
    if on_the_fly and data is not None:
        raise UserError("pass either --data IMAGENET_C_ROOT or --clean VAL_DIR --on-the-fly, not both")
    if data is None and not on_the_fly:
        raise UserError("nothing to evaluate: pass --data IMAGENET_C_ROOT, or --clean VAL_DIR --on-the-fly")
    tree = scan_released_tree(data, names, sevs) if data is not None else None
    clean_samples = scan_class_folders(clean, what="clean validation folder") if clean is not None else None
    return {"data": data, "clean": clean, "on_the_fly": on_the_fly, "corruptions": names, "severities": sevs,
            "tree": tree, "clean_samples": clean_samples}


def evaluate_imagenet_c(loaded: Any, store: ResultsStore | None, *, data: str | Path | None = None,
                        clean: str | Path | None = None, on_the_fly: bool = False,
                        corruptions: Sequence[str] | None = None, severities: Sequence[int] | None = None,
                        limit: int | None = None, jpeg_quality: int | None = 85, corruption_backend: str = "torch",
                        corruption_recipe: str | None = None, scanned: dict[str, Any] | None = None,
                        **run_kw: Any) -> ImageNetCReport:
    """The ImageNet-C benchmark of one loaded model: every (corruption, severity) cell in one pass, resumable.

    Args:
        loaded: a `LoadedModel` from `attnprobe.zoo.load_model` (model, name, checkpoint sha256, preprocessing).
        store: the results store (rank 0; `None` on other ranks).
        data: the released ImageNet-C tree `<root>/<corruption>/<severity>/<wnid>/*.JPEG`.
        clean: a clean validation folder: corrupted on the fly with `on_the_fly`, and in every case scored clean
            too (for the relative mCE and the retention).
        on_the_fly: corrupt `clean` with the ImageNet-C recipe instead of reading `data`.
        corruptions: names to evaluate (default: the 15 benchmark corruptions).
        severities: severities to evaluate (default 1-5).
        limit: evenly spaced subset of this many images per cell (quick checks; reported as such).
        jpeg_quality: JPEG round trip of on-the-fly images (85 as the release; `None` to skip).
        corruption_backend: on the fly: "torch" (the batched engine; on a CUDA model's device with a device decode
            path, see `OnTheFlyCorruption.encoded`) or "reference" (the imagecorruptions package, per image).
        corruption_recipe: on the fly: "imagenet-c" or "imagecorruptions" (default: the backend's). Backend, recipe
            and engine version are part of each cell's dataset fingerprint, so their results never mix.
        scanned: the result of `check_imagenet_c_inputs` for these arguments (else it is called here).
        run_kw: passed to `run_cells` (batch_size, workers, device, fresh, strict, progress, ...).

    Raises:
        UserError: bad names, a tree that is not ImageNet-C, missing or empty folders; all before any compute.
    """
    from attnprobe.data.imagenet_c import on_the_fly_cells, released_cells

    sc = scanned or check_imagenet_c_inputs(data, clean, on_the_fly, corruptions, severities)
    pre = loaded.preprocessing
    notes: list[str] = []
    if sc["on_the_fly"]:
        data_cells = on_the_fly_cells(sc["clean"], pre, sc["corruptions"], sc["severities"], limit, jpeg_quality,
                                      samples=sc["clean_samples"], backend=corruption_backend,
                                      recipe=corruption_recipe)
        source, task = "on_the_fly", "imagenet_c"
        if jpeg_quality is None:
            notes.append("on the fly without the JPEG quality-85 round trip of the released files")
        if data_cells:
            notes.append(f"corrupted on the fly by {data_cells[0].info['corruption_id']} (not the released files)")
    else:
        data_cells = released_cells(sc["tree"], pre, limit=limit)
        source, task = "released", "imagenet_c"
    specs = [CellSpec(cell_key(loaded, task, c.dataset.fingerprint, c.corruption, c.severity), c.dataset,
                      {**c.info, "limit": limit}) for c in data_cells]
    clean_spec = clean_cell(loaded, sc["clean"], limit, sc["clean_samples"]) if sc["clean"] is not None else None
    if int(pre.input_size) != 224:
        notes.append(f"the model's input size is {pre.input_size}, not 224: images of another size were resized to "
                     f"{pre.input_size}x{pre.input_size}")
    if limit is not None:
        notes.append(f"--limit {limit}: a subset of each cell; not comparable with full-benchmark numbers")
    if D.is_main():
        register_model(loaded, store)
    results = run_cells(loaded.model, specs + ([clean_spec] if clean_spec else []), store, **run_kw)
    clean_res = results[-1] if clean_spec else None
    # NOTE: the engine adds the precision (and nvJPEG decoding) to the key; report the key the results are under
    stored_pre = results[0].key.preprocessing if results else pre.key()
    return ImageNetCReport(model=loaded.name, checkpoint_sha256=loaded.checkpoint_sha256, preprocessing=stored_pre,
                           source=source, cells=results[:len(specs)], clean=clean_res,
                           out=str(store.root) if store is not None else None, notes=notes)


def imagenet_c_tables(store: ResultsStore, **filters: Any) -> list[dict[str, Any]]:
    """ImageNet-C results read back from a store, one entry per (model, checkpoint, dataset, preprocessing).

    Each entry has `errors` (`{corruption: {severity: top-1 error}}`), `n` (same layout, image counts),
    `complete`, and `mce` (`None` unless all 15 corruptions x 5 severities are in). For tables and figures.

    Args:
        store: an open results store (read-only is fine).
        filters: column filters for `store.cells`, e.g. `model="fan_b_tapadl"`.
    """
    from attnprobe import robustness as R

    groups: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for row in store.cells(task="imagenet_c", **filters):
        g = groups.setdefault((row["model"], row["checkpoint_sha256"], row["dataset"], row["preprocessing"]),
                              {"model": row["model"], "checkpoint_sha256": row["checkpoint_sha256"],
                               "dataset": row["dataset"], "preprocessing": row["preprocessing"], "errors": {},
                               "n": {}})
        if row["n"]:
            g["errors"].setdefault(row["condition"], {})[int(row["severity"])] = 1.0 - row["correct"] / row["n"]
            g["n"].setdefault(row["condition"], {})[int(row["severity"])] = int(row["n"])
    out = []
    for g in groups.values():
        full = {c: v for c, v in g["errors"].items() if all(s in v for s in (1, 2, 3, 4, 5))}
        g["complete"] = R.is_complete(full)
        g["mce"] = R.mce(full) if g["complete"] else None
        out.append(g)
    return out
