"""Results store → pandas DataFrames and attention-map records, for tables and figures.

Nothing here loads a model: every function reads what `ResultsStore` holds. A *run* is one (model, checkpoint)
pair; its display key is the model name, or `name@sha[:8]` when one store holds several checkpoints of one name.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from attnprobe.errors import UserError
from attnprobe.store import ResultsStore

__all__ = [
    "ATTENTION_MAPS_KIND",
    "AttentionMaps",
    "PAPER_KEYS",
    "cells_frame",
    "chunks_frame",
    "diagnostic_values",
    "diagnostics_frame",
    "flip_probability",
    "imagenet_c_errors",
    "MapRef",
    "MapsOrigin",
    "attention_map_refs",
    "load_attention_maps",
    "load_attention_pair",
    "read_attention_npz",
    "models_frame",
    "open_store",
    "paper_numbers",
    "per_image",
    "run_key",
]

ATTENTION_MAPS_KIND = "attention_maps"

#: Names a card's `paper` section may use for each table column (first match wins; values in % or fractions).
PAPER_KEYS: dict[str, tuple[str, ...]] = {
    "clean": ("clean_acc", "clean_accuracy", "imagenet", "top1", "acc1", "accuracy"),
    "mce": ("mce", "imagenet_c", "imagenet_c_mce"),
    "mfr": ("mfr", "imagenet_p", "imagenet_p_mfr"),
    "imagenet_a": ("imagenet_a", "in_a", "imagenet_a_acc"),
    "imagenet_r": ("imagenet_r", "in_r", "imagenet_r_acc"),
    "pgd": ("pgd", "pgd5", "pgd_5", "pgd_acc"),
    "head_similarity": ("head_similarity",),
}


def open_store(results_dir: str | Path) -> ResultsStore:
    """Open a results store read-only (a missing store raises a `UserError` that names the fix)."""
    return ResultsStore(results_dir, readonly=True)


def models_frame(store: ResultsStore) -> pd.DataFrame:
    """One row per registered run: `model, checkpoint_sha256, checkpoint_path, card, key`."""
    import json

    rows = store.query("SELECT model, checkpoint_sha256, checkpoint_path, card FROM models ORDER BY model, added_at")
    df = pd.DataFrame([{"model": r["model"], "checkpoint_sha256": r["checkpoint_sha256"],
                        "checkpoint_path": r["checkpoint_path"],
                        "card": json.loads(r["card"]) if r["card"] else {}} for r in rows],
                      columns=["model", "checkpoint_sha256", "checkpoint_path", "card"])
    return _with_keys(df)


def run_key(model: str, sha: str, multi: bool) -> str:
    """Display key of a run: the model name, with a short checkpoint hash when the name is ambiguous."""
    return f"{model}@{sha[:8]}" if multi else model


def _with_keys(df: pd.DataFrame, shas_per_model: Mapping[str, int] | None = None) -> pd.DataFrame:
    if df.empty:
        df = df.copy()
        df["key"] = pd.Series(dtype=str)
        return df
    counts = shas_per_model or df.groupby("model")["checkpoint_sha256"].nunique().to_dict()
    df = df.copy()
    df["key"] = [run_key(m, s, counts.get(m, 1) > 1) for m, s in zip(df["model"], df["checkpoint_sha256"])]
    return df


def _shas_per_model(store: ResultsStore) -> dict[str, int]:
    rows = store.query(
        "SELECT model, COUNT(DISTINCT checkpoint_sha256) AS k FROM ("
        " SELECT model, checkpoint_sha256 FROM models UNION SELECT model, checkpoint_sha256 FROM cells"
        " UNION SELECT DISTINCT model, checkpoint_sha256 FROM diagnostics"
        " UNION SELECT model, checkpoint_sha256 FROM artifacts) GROUP BY model")
    return {r["model"]: int(r["k"]) for r in rows}


def cells_frame(store: ResultsStore, task: str | None = None) -> pd.DataFrame:
    """Finished counting-benchmark cells with `error` and `accuracy` (fractions of the evaluated samples).

    Columns: key, model, checkpoint_sha256, task, dataset, preprocessing, condition, severity, n, correct, skipped,
    error, accuracy, extra (dict), info (dict), n_chunks.
    """
    cells = store.cells(task=task) if task else store.cells()
    cols = ["model", "checkpoint_sha256", "task", "dataset", "preprocessing", "condition", "severity", "n",
            "correct", "skipped", "extra", "info"]
    df = pd.DataFrame(cells, columns=cols + ["finished_at"]) if cells else pd.DataFrame(columns=cols)
    df = _with_keys(df, _shas_per_model(store))
    if df.empty:
        for c in ("error", "accuracy", "n_chunks"):
            df[c] = pd.Series(dtype=float)
        return df
    df["n"] = df["n"].astype(int)
    df["correct"] = df["correct"].astype(int)
    df["accuracy"] = np.where(df["n"] > 0, df["correct"] / df["n"].clip(lower=1), np.nan)
    df["error"] = 1.0 - df["accuracy"]
    nch = {tuple(r[:7]): int(r[7]) for r in store.query(
        "SELECT model, checkpoint_sha256, task, dataset, preprocessing, condition, severity, n_chunks FROM cells")}
    df["n_chunks"] = [nch.get(tuple(r), 0) for r in df[["model", "checkpoint_sha256", "task", "dataset",
                                                          "preprocessing", "condition", "severity"]].itertuples(
        index=False, name=None)]
    return df


def chunks_frame(store: ResultsStore, task: str | None = None) -> pd.DataFrame:
    """Per-chunk counts of finished cells (for chunk bootstraps): key, task, dataset, condition, severity, chunk,
    n, correct, and the chunk's per-sample record when the store has one (for bootstraps over images):
    bits_n (samples in the chunk), bits (`numpy.packbits` of per-sample correctness), skipped_bits (packed skipped
    flags or None); all three None for chunks without a record (stores written before they existed)."""
    where = "WHERE k.task = ?" if task else ""
    using = "model, checkpoint_sha256, task, dataset, preprocessing, condition, severity"
    base = ("SELECT k.model, k.checkpoint_sha256, k.task, k.dataset, k.condition, k.severity, k.chunk, k.n,"
            " k.correct{bits} FROM chunks k JOIN cells c USING ({using}){join}"
            f" {where} ORDER BY k.model, k.task, k.condition, k.severity, k.chunk")
    params = (task,) if task else ()
    try:
        rows = store.query(base.format(bits=", b.n AS bits_n, b.bits, b.skipped_bits", using=using,
                                       join=f" LEFT JOIN sample_bits b USING ({using}, chunk)"), params)
    except sqlite3.OperationalError:  # an older read-only store without the sample_bits table
        rows = store.query(base.format(bits=", NULL AS bits_n, NULL AS bits, NULL AS skipped_bits", using=using,
                                       join=""), params)
    df = pd.DataFrame([dict(r) for r in rows], columns=["model", "checkpoint_sha256", "task", "dataset", "condition",
                                                         "severity", "chunk", "n", "correct", "bits_n", "bits",
                                                         "skipped_bits"])
    return _with_keys(df, _shas_per_model(store))


def diagnostics_frame(store: ResultsStore, metric: str, per_head: bool = False) -> pd.DataFrame:
    """Diagnostic rows of one metric: key, model, checkpoint_sha256, dataset, condition, severity, image, layer,
    head, value.

    Args:
        per_head: keep one row per head; by default values are averaged over the heads of each layer in SQL
            (`head = -1`), which keeps a 50,000-image run with 18 layers x 8 heads at 900k rows, not 7 million.
    """
    cols = ["model", "checkpoint_sha256", "dataset", "condition", "severity", "image", "layer", "head", "value"]
    if per_head:
        sql = ("SELECT model, checkpoint_sha256, dataset, condition, severity, image, layer, head, value"
               " FROM diagnostics WHERE metric = ?")
    else:
        sql = ("SELECT model, checkpoint_sha256, dataset, condition, severity, image, layer, -1 AS head,"
               " AVG(value) AS value FROM diagnostics WHERE metric = ?"
               " GROUP BY model, checkpoint_sha256, dataset, condition, severity, image, layer")
    rows = [tuple(r) for r in store.query(sql, (metric,))]
    df = pd.DataFrame.from_records(rows, columns=cols)
    df.insert(2, "metric", metric)
    return _with_keys(df, _shas_per_model(store))


def diagnostic_values(store: ResultsStore, metric: str, condition: str, severity: int,
                      max_values: int = 200_000) -> dict[str, np.ndarray]:
    """Raw per-(image, layer, head) values of one metric and condition per run key, for distribution plots.

    At most `max_values` per run, taken evenly over the rows in a fixed order (so a redraw is identical)."""
    shas = _shas_per_model(store)
    out: dict[str, np.ndarray] = {}
    runs = store.query("SELECT DISTINCT model, checkpoint_sha256 FROM diagnostics WHERE metric = ? AND condition = ?"
                       " AND severity = ?", (metric, condition, int(severity)))
    for r in runs:
        vals = np.array([v[0] for v in store.query(
            "SELECT value FROM diagnostics WHERE metric = ? AND condition = ? AND severity = ? AND model = ? AND"
            " checkpoint_sha256 = ? ORDER BY image, layer, head",
            (metric, condition, int(severity), r["model"], r["checkpoint_sha256"]))], dtype=np.float64)
        if vals.size > max_values:
            vals = vals[np.linspace(0, vals.size - 1, max_values).astype(int)]
        out[run_key(r["model"], r["checkpoint_sha256"], shas.get(r["model"], 1) > 1)] = vals
    return out


def per_image(df: pd.DataFrame, by: Iterable[str] = ("key",)) -> pd.DataFrame:
    """Average diagnostic values over layers and heads per image: a table with rows = image, columns = `by`.

    Each image then weighs the same in a mean and in a bootstrap over images."""
    by = list(by)
    if df.empty:
        return pd.DataFrame()
    return df.groupby(by + ["image"])["value"].mean().unstack(by)


def imagenet_c_errors(cells: pd.DataFrame) -> dict[str, dict[str, dict[int, float]]]:
    """`{run key: {corruption: {severity: top-1 error}}}` from ImageNet-C cells (fractions)."""
    out: dict[str, dict[str, dict[int, float]]] = {}
    sub = cells[cells["task"] == "imagenet_c"] if not cells.empty else cells
    for r in sub.itertuples(index=False):
        out.setdefault(r.key, {}).setdefault(r.condition, {})[int(r.severity)] = float(r.error)
    return out


def flip_probability(n: int, extra: Mapping[str, Any]) -> float:
    """Flip probability of one ImageNet-P cell from its summed counts.

    Accepts the per-video mean used by the official script (a sum of per-video flip probabilities, divided by the
    number of videos `n`) or pooled flip/pair counts. Returns NaN when `extra` has neither.
    """
    for k in ("fp_sum", "flip_probability_sum", "flip_prob_sum", "video_fp_sum"):
        if k in extra:
            videos = extra.get("videos", n)
            return float(extra[k]) / videos if videos else math.nan
    for flips, pairs in (("flips", "pairs"), ("flip_count", "pair_count"), ("n_flips", "n_pairs")):
        if flips in extra and pairs in extra and extra[pairs]:
            return float(extra[flips]) / float(extra[pairs])
    return math.nan


def paper_numbers(card: Mapping[str, Any]) -> dict[str, float]:
    """The paper's reported numbers of a model card as fractions, under the table's column names
    (`clean`, `mce`, `mfr`, `imagenet_a`, `imagenet_r`, `pgd`), plus `ce:<corruption>` entries when the card lists
    per-corruption CEs."""
    paper = card.get("paper") or card.get("reported") or {}
    if not isinstance(paper, Mapping):
        return {}
    out: dict[str, float] = {}
    for col, names in PAPER_KEYS.items():
        for name in names:
            v = paper.get(name)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[col] = _as_fraction(float(v))
                break
    ce = paper.get("ce") or paper.get("corruption_errors")
    if isinstance(ce, Mapping):
        for c, v in ce.items():
            if isinstance(v, (int, float)):
                out[f"ce:{c}"] = _as_fraction(float(v))
    return out


def _as_fraction(v: float) -> float:
    # NOTE: cards may copy the paper's percentages (83.9) or store fractions (0.839); no metric here exceeds 1.0
    # as a fraction except a CE worse than AlexNet, which no card reports.
    return v / 100.0 if v > 1.5 else v


# -- attention maps ------------------------------------------------------------------------------------------------
# The files are written by `attnprobe.diagnostics` (see its module docstring): one .npz per model, image and condition
# with `image` (uint8, the model input), `attn` (float16, L x H x N x N; windowed models store `attn_000`, ...
# instead) and `meta` (JSON with `num_prefix_tokens`, `grid`, ...). A figure pairs the clean file of an image with
# the file of one corruption.


@dataclass(frozen=True)
class MapsOrigin:
    """Whose attention maps, on which image and corruption: run key, model, checkpoint_sha256, dataset, image,
    condition, severity (`condition = "clean"` when there is no corrupted counterpart)."""

    key: str
    model: str
    checkpoint_sha256: str
    dataset: str
    image: str
    condition: str
    severity: int


@dataclass(frozen=True)
class MapRef(MapsOrigin):
    """Where the maps of one model on one image are: the clean file and, for a corruption, the corrupted file.

    Nothing is read until `load_attention_pair`: a store may hold many large map files, a figure needs a few.
    `num_layers` is the depth the store recorded for the files (None when it did not)."""

    clean_path: str | None = None
    corrupted_path: str | None = None
    num_layers: int | None = None


@dataclass(frozen=True)
class AttentionMaps(MapsOrigin):
    """Saved attention maps of one model on one image, clean and (optionally) corrupted (see `MapsOrigin`).

    Attributes:
        image_clean, image_corrupted: uint8 (H, W, 3) model inputs (None when not stored).
        maps_clean, maps_corrupted: float32 (L, H, N, N) post-softmax token attention per layer and head, with the
            class/distillation tokens removed (patch tokens only, like the paper's 196 x 196 maps).
        prefix_tokens: how many leading tokens were removed.
        meta: the clean file's metadata.
    """

    image_clean: np.ndarray | None = None
    image_corrupted: np.ndarray | None = None
    maps_clean: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0, 0), dtype=np.float32))
    maps_corrupted: np.ndarray | None = None
    prefix_tokens: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return int(self.maps_clean.shape[0])

    @property
    def num_heads(self) -> int:
        return int(self.maps_clean.shape[1])

    @property
    def num_tokens(self) -> int:
        return int(self.maps_clean.shape[-1])


def read_attention_npz(path: str | Path) -> dict[str, Any]:
    """Read one saved attention-map file.

    Returns:
        `image` (uint8 H x W x 3 or None), `attn` (float32 L x H x N x N with prefix tokens removed, or None for
        windowed attention, which has no single N x N map), `prefix_tokens`, `meta` (dict).
    """
    import json

    p = Path(path)
    if not p.exists():
        raise UserError(f"attention-map file {p} is missing; rerun `attnprobe attention` (or the diagnostics command "
                        f"that saved it) with the same --out")
    with np.load(p, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"])) if "meta" in z.files else {}
        image = np.asarray(z["image"]) if "image" in z.files else None
        attn = np.asarray(z["attn"], dtype=np.float32) if "attn" in z.files else None
    if image is not None and image.dtype != np.uint8:
        image = np.clip(image * (255.0 if image.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    prefix = int(meta.get("num_prefix_tokens") or 0)
    if attn is not None:
        if attn.ndim != 4 or attn.shape[-1] != attn.shape[-2]:
            raise UserError(f"{p}: attention maps of shape {attn.shape} are not (layers, heads, N, N); rerun "
                            f"`attnprobe attention` to save them again")
        if 0 < prefix < attn.shape[-1]:
            attn = attn[..., prefix:, prefix:]
    return {"image": image, "attn": attn, "prefix_tokens": prefix, "meta": meta}


def attention_map_refs(store: ResultsStore) -> list[MapRef]:
    """Every stored attention-map file, paired: one ref per (run, image, corruption) with the image's clean file,
    plus a clean-only ref for images that have no corrupted file."""
    shas = _shas_per_model(store)
    groups: dict[tuple, dict[tuple[str, int], str]] = {}
    depth: dict[tuple, int] = {}
    from attnprobe.data.corruptions import tagged_corruption, untag_corruption
    from attnprobe.report.sources import corruption_rank

    # NOTE: corrupted maps are stored under the dataset tagged with their corruption source; they pair with the clean
    # maps of the plain dataset, and where two sources made one condition the default engine's maps are drawn
    arts = sorted(store.artifacts(kind=ATTENTION_MAPS_KIND), key=lambda a: corruption_rank(tagged_corruption(
        a["dataset"])))
    for a in arts:
        g = groups.setdefault((a["model"], a["checkpoint_sha256"], untag_corruption(a["dataset"]), a["image"]), {})
        g.setdefault((a["condition"], int(a["severity"])), a["abspath"])
        if isinstance(a["meta"].get("num_layers"), int):
            depth[(a["model"], a["checkpoint_sha256"])] = a["meta"]["num_layers"]
    refs = []
    for (model, sha, dataset, image), files in sorted(groups.items()):
        key = run_key(model, sha, shas.get(model, 1) > 1)
        clean = files.get(("clean", 0))
        corrupted = [(c, s) for c, s in files if c != "clean"]
        layers = depth.get((model, sha))
        for c, s in sorted(corrupted):
            refs.append(MapRef(key, model, sha, dataset, image, c, s, clean, files[(c, s)], layers))
        if clean is not None and not corrupted:
            refs.append(MapRef(key, model, sha, dataset, image, "clean", 0, clean, None, layers))
    return refs


def load_attention_pair(ref: MapRef) -> AttentionMaps | None:
    """Read the files of `ref`; None when they hold windowed attention (no N x N map to draw)."""
    clean = read_attention_npz(ref.clean_path) if ref.clean_path else None
    corrupt = read_attention_npz(ref.corrupted_path) if ref.corrupted_path else None
    base = clean if clean is not None else corrupt
    if base is None or base["attn"] is None or (corrupt is not None and corrupt["attn"] is None):
        return None
    if clean is None:  # only the corrupted file exists: draw it as the single map available
        clean, corrupt = corrupt, None
        image_clean, image_corrupted = None, clean["image"]
    else:
        image_clean, image_corrupted = clean["image"], corrupt["image"] if corrupt is not None else None
    maps_c = corrupt["attn"] if corrupt is not None else None
    if maps_c is not None and maps_c.shape != clean["attn"].shape:
        maps_c = None  # different layer layouts cannot be compared panel by panel
    origin = {f: getattr(ref, f) for f in MapsOrigin.__dataclass_fields__}
    return AttentionMaps(**origin, image_clean=image_clean, image_corrupted=image_corrupted,
                         maps_clean=clean["attn"], maps_corrupted=maps_c, prefix_tokens=clean["prefix_tokens"],
                         meta=clean["meta"])


def load_attention_maps(store: ResultsStore, keys: Iterable[str] | None = None, image: str | None = None,
                        condition: str | None = None, severity: int | None = None) -> list[AttentionMaps]:
    """Load the attention maps matching the filters (run keys, image id, corruption); windowed ones are skipped."""
    wanted = set(keys) if keys is not None else None
    out = []
    for r in attention_map_refs(store):
        if (wanted is not None and r.key not in wanted) or (image is not None and r.image != image) \
                or (condition is not None and r.condition != condition) \
                or (severity is not None and r.severity != int(severity)):
            continue
        m = load_attention_pair(r)
        if m is not None:
            out.append(m)
    return out
