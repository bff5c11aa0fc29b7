"""The four diagnostics: `stability`, `overfocus`, `heads` and `attention_maps` (see `attnprobe.diagnostics`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from attnprobe.data.images import ImageSet
from attnprobe.diagnostics.inputs import CLEAN, Condition, CorruptionSource, ModelEntry, corrupted_conditions
from attnprobe.diagnostics.reducer import HEADS_METRIC, STABILITY_METRIC, Plan
from attnprobe.diagnostics.results import DiagnosticsResult, rounded
from attnprobe.diagnostics.runner import DiagnosticsRun, Progress
from attnprobe.errors import UserError
from attnprobe.metrics import OVERFOCUS_METRICS
from attnprobe.store import ResultsStore

__all__ = ["DEFAULT_BATCH_SIZE", "DEFAULT_KEEP_MAPS", "attention_maps", "heads", "overfocus", "stability"]

DEFAULT_BATCH_SIZE = 16
DEFAULT_KEEP_MAPS = 2


def _tag_precision(images: ImageSet, entries: Sequence[ModelEntry]) -> ImageSet:
    """`images` under the dataset id of the entries' precision (`;precision=bf16` appended; fp32 unchanged)."""
    from attnprobe.engine.execution import parse_precision, tag_preprocessing

    precisions = {parse_precision(e.precision) for e in entries}
    if len(precisions) > 1:
        raise UserError("all models of one diagnostics run must use the same precision; run them separately")
    precision = precisions.pop() if precisions else "fp32"
    for e in entries:
        e.precision = precision
    return images if precision == "fp32" else ImageSet(tag_preprocessing(images.dataset, precision), images.records)


def stability(entries: Sequence[ModelEntry], images: ImageSet, corruption: str, severities: Sequence[int] = (3,), *,
              store: ResultsStore | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
              keep_maps: int = DEFAULT_KEEP_MAPS, fresh: bool = False, progress: Progress | None = None,
              corruption_source: CorruptionSource | None = None) -> DiagnosticsResult:
    """Attention stability: per image, layer and head, cosine between clean and corrupted maps.

    Args:
        entries: the models (all see the same images and corruption draws).
        images: the images (`attnprobe.data.selection.select_images`).
        corruption: corruption name; severities: 1-5 each.
        store: results store (values, resume, saved maps); None keeps results in memory only.
        batch_size: images per forward pass (each pass holds the clean and the corrupted copy).
        keep_maps: save full maps of the first this-many images (clean and corrupted) for figures.
        fresh: drop this series' stored values first and recompute.
        progress: `progress(finished, total)` after each batch (images summed over models).
        corruption_source: what corrupts the images (default: the torch engine, recipe imagenet-c); part of the
            corrupted series' dataset id (see `CorruptionSource`).

    Returns:
        One result per (model, severity): `mean_cosine` over layers, heads and images, and `layers`, each with
        `layer`, `name`, `mean_cosine`, `std_cosine`, `min_cosine`, `max_cosine`, `per_head`, `n_images`.
    """
    images = _tag_precision(images, entries)
    conds = corrupted_conditions(corruption, severities)
    plan = Plan("stability", conds, clean_metrics=[], corrupted_metrics=[], cosine=True)
    eng = DiagnosticsRun(plan, entries, images, store, batch_size, keep_maps, fresh, progress, None, corruption_source)
    eng.run()
    results = []
    for e in entries:
        for cond in conds:
            st = eng.stats_for(e, STABILITY_METRIC, cond)
            layers = []
            for layer in st.layers():
                s = st.layer_summary(layer)
                layers.append({"layer": layer, **eng.layer_meta(e, layer), "mean_cosine": rounded(s["mean"]),
                               "std_cosine": rounded(s["std"]), "min_cosine": rounded(s["min"]),
                               "max_cosine": rounded(s["max"]), "per_head": [rounded(v) for v in s.get("per_head", [])],
                               "n_images": s["n_images"]})
            results.append({**eng.base(e, cond), "metric": STABILITY_METRIC, "mean_cosine": rounded(st.overall()),
                            "n_images": max((lay["n_images"] for lay in layers), default=0), "layers": layers})
    return DiagnosticsResult("stability", results, str(store.root) if store else None, eng.artifacts)


def _with_clean(corruption: str | None, severities: Sequence[int]) -> list[Condition]:
    return corrupted_conditions(corruption, severities) if corruption else []


def overfocus(entries: Sequence[ModelEntry], images: ImageSet, corruption: str | None = None,
              severities: Sequence[int] = (3,), *, k: int = 5, tau: float = 2.0, store: ResultsStore | None = None,
              batch_size: int = DEFAULT_BATCH_SIZE, keep_maps: int = 0, fresh: bool = False,
              progress: Progress | None = None, corruption_source: CorruptionSource | None = None
              ) -> DiagnosticsResult:
    """Overfocusing measures per layer on clean images (and corrupted ones when `corruption` is given).

    Returns:
        One result per (model, condition), each layer with the means over images of `row_similarity`,
        `topk_column_mass`, `row_entropy`, `column_gini`; the result's top level has their means over layers.
    """
    if k < 1:
        raise UserError(f"--k must be at least 1, got {k}")
    if tau <= 0:
        raise UserError(f"--tau must be positive, got {tau}")
    images = _tag_precision(images, entries)
    conds = _with_clean(corruption, severities)
    metrics = list(OVERFOCUS_METRICS)
    plan = Plan("overfocus", conds, clean_metrics=metrics, corrupted_metrics=metrics, cosine=False, k=k, tau=tau)
    eng = DiagnosticsRun(plan, entries, images, store, batch_size, keep_maps, fresh, progress, None, corruption_source)
    eng.run()
    results = []
    for e in entries:
        for cond in [CLEAN, *conds]:
            per_metric = {m: eng.stats_for(e, m, cond) for m in metrics}
            layer_ids = sorted({lay for st in per_metric.values() for lay in st.layers()})
            layers = []
            for layer in layer_ids:
                row: dict[str, Any] = {"layer": layer, **eng.layer_meta(e, layer)}
                for m, st in per_metric.items():
                    s = st.layer_summary(layer)
                    row[m] = rounded(s["mean"]) if s else None
                    row[f"{m}_std"] = rounded(s["std"]) if s else None
                    row["n_images"] = s["n_images"] if s else 0
                layers.append(row)
            results.append({**eng.base(e, cond), "k": k, "tau": tau,
                            **{m: rounded(per_metric[m].overall()) for m in metrics},
                            "n_images": max((lay["n_images"] for lay in layers), default=0), "layers": layers})
    return DiagnosticsResult("overfocus", results, str(store.root) if store else None, eng.artifacts)


def heads(entries: Sequence[ModelEntry], images: ImageSet, corruption: str | None = None,
          severities: Sequence[int] = (3,), *, store: ResultsStore | None = None,
          batch_size: int = DEFAULT_BATCH_SIZE, keep_maps: int = 0, fresh: bool = False,
          progress: Progress | None = None, corruption_source: CorruptionSource | None = None) -> DiagnosticsResult:
    """Head similarity per layer (mean cosine over head pairs; the paper's 0.63 vs 0.27 is the mean over layers).

    Returns:
        One result per (model, condition): `head_similarity` (mean over layers and images) and `layers`, each with
        `head_similarity`, `std`, `min`, `max`, `n_images`.
    """
    images = _tag_precision(images, entries)
    conds = _with_clean(corruption, severities)
    plan = Plan("heads", conds, clean_metrics=[HEADS_METRIC], corrupted_metrics=[HEADS_METRIC], cosine=False)
    eng = DiagnosticsRun(plan, entries, images, store, batch_size, keep_maps, fresh, progress, None, corruption_source)
    eng.run()
    results = []
    for e in entries:
        for cond in [CLEAN, *conds]:
            st = eng.stats_for(e, HEADS_METRIC, cond)
            layers = []
            for layer in st.layers():
                s = st.layer_summary(layer)
                layers.append({"layer": layer, **eng.layer_meta(e, layer), "head_similarity": rounded(s["mean"]),
                               "std": rounded(s["std"]), "min": rounded(s["min"]), "max": rounded(s["max"]),
                               "n_images": s["n_images"]})
            means = [lay["head_similarity"] for lay in layers]
            results.append({**eng.base(e, cond), "metric": HEADS_METRIC,
                            "head_similarity": rounded(sum(means) / len(means)) if means else None,
                            "n_images": max((lay["n_images"] for lay in layers), default=0), "layers": layers})
    return DiagnosticsResult("heads", results, str(store.root) if store else None, eng.artifacts)


def attention_maps(entries: Sequence[ModelEntry], images: ImageSet, corruption: str | None = None,
                   severities: Sequence[int] = (3,), *, store: ResultsStore | None = None,
                   out_dir: str | Path | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                   fresh: bool = False, progress: Progress | None = None,
                   corruption_source: CorruptionSource | None = None) -> DiagnosticsResult:
    """Save every layer's maps of every image (clean, and corrupted when `corruption` is given) as `.npz` artifacts.

    Args:
        out_dir: where `maps/` goes when there is no store (with a store: the store's folder).

    Returns:
        One result per model: `artifacts` (image, condition, severity, path) and `layers` (layer, name, shape).
    """
    if store is None and out_dir is None:
        raise UserError("attention maps need somewhere to go; pass --out DIR")
    images = _tag_precision(images, entries)
    conds = _with_clean(corruption, severities)
    plan = Plan("attention", conds, clean_metrics=[], corrupted_metrics=[], cosine=False)
    eng = DiagnosticsRun(plan, entries, images, store, batch_size, None, fresh, progress,
                         Path(out_dir).expanduser().resolve() if store is None else None, corruption_source)
    eng.run()
    results = []
    for e in entries:
        arts = [a for a in eng.artifacts if a["model"] == e.name]
        if store is not None:
            for a in eng.stored_maps(e):
                wanted = a["image"] in eng.keep_ids and any(
                    a["condition"] == c.name and int(a["severity"]) == c.severity for c in [CLEAN, *conds])
                if wanted and not any(x["path"] == a["abspath"] for x in arts):
                    arts.append({"model": e.name, "image": a["image"], "condition": a["condition"],
                                 "severity": int(a["severity"]), "path": a["abspath"]})
        layers = [{"layer": i, **lay} for i, lay in enumerate(eng.layer_info.get(id(e), []))]
        results.append({"model": e.name, "checkpoint_sha256": e.checkpoint_sha256, "dataset": images.dataset,
                        "notes": eng.model_notes(e),
                        "artifacts": sorted(arts, key=lambda a: (a["image"], a["condition"], a["severity"])),
                        "layers": layers})
    return DiagnosticsResult("attention", results, str(store.root) if store else None, eng.artifacts)
