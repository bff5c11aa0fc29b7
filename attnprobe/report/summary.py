"""Per-run numbers for the tables: clean accuracy, mCE, mFR, ImageNet-A/-R, PGD, their intervals and the changes
against a baseline; per-image diagnostics with paired bootstrap intervals.

Everything is computed from store frames (`loaders.cells_frame`, `chunks_frame`, `diagnostics_frame`), in fractions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from attnprobe.errors import UserError
from attnprobe.report import bootstrap as B
from attnprobe.report.loaders import flip_probability, per_image
from attnprobe.report.sources import TASK_NAMES, SourceGroup, choose_group, group_cells

__all__ = [
    "ACCURACY_TASKS",
    "COLUMN_TASKS",
    "ColumnResult",
    "CountingSummary",
    "DiagnosticSummary",
    "ce_reference_errors",
    "chunk_index",
    "column_result",
    "comparable",
    "sample_index",
    "choose_condition",
    "counting_summary",
    "diagnostic_summary",
    "per_layer_means",
    "usable_errors",
]

#: Task -> summary column for the benchmarks that report a plain top-1 accuracy.
ACCURACY_TASKS: dict[str, str] = {"clean": "clean", "imagenet_a": "imagenet_a", "imagenet_r": "imagenet_r",
                                  "pgd": "pgd"}
SEVERITIES = (1, 2, 3, 4, 5)


#: Table 2 column -> the benchmark task it is computed from.
COLUMN_TASKS: dict[str, str] = {"clean": "clean", "mce": "imagenet_c", "mfr": "imagenet_p",
                                "imagenet_a": "imagenet_a", "imagenet_r": "imagenet_r", "pgd": "pgd"}

# weights of a linear statistic of cell errors: value = const + sum_i w_i * error_i, cells (task, dataset, cond, sev)
Linear = tuple[float, dict[tuple, float]]


@dataclass
class ColumnResult:
    """One Table 2 number of one run, computed from the cells of one source group.

    Attributes:
        value: the number (fraction).
        group: the cells it was computed from (and their source).
        partial: a mean over fewer corruptions / perturbations than the benchmark has (not an mCE / mFR).
        interval: its 95% interval when it has a closed form (accuracies: Wilson).
        linear: the statistic as a weighted sum of cell errors (for bootstrap intervals and differences).
        errors: ImageNet-C errors per corruption and severity of the group.
    """

    value: float
    group: SourceGroup
    partial: bool = False
    interval: B.Interval | None = None
    linear: Linear | None = None
    errors: dict[str, dict[int, float]] | None = None


@dataclass
class CountingSummary:
    """Counting-benchmark numbers per run.

    Attributes:
        table: index = run keys; columns clean, mce, mce_partial, mfr, mfr_partial, imagenet_a, imagenet_r, pgd.
        intervals: (run key, column) -> 95% interval of the value.
        differences: run key -> column -> 95% interval of (run - baseline); only between numbers of one source.
        errors: run key -> corruption -> severity -> top-1 error (ImageNet-C, the source the table uses).
        ce: the Table 3 frame (percent) or None when no corruption has all five severities.
        datasets: task -> dataset fingerprints the table uses.
        notes: what was used (reference of the CE, interval methods, partial tables, several sources).
        sources: (run key, column) -> the source group each table number comes from.
        alternatives: every (run key, column) number of every source the store holds, for the sources table.
    """

    table: pd.DataFrame
    intervals: dict[tuple[str, str], B.Interval] = field(default_factory=dict)
    differences: dict[str, dict[str, B.Interval]] = field(default_factory=dict)
    errors: dict[str, dict[str, dict[int, float]]] = field(default_factory=dict)
    ce: pd.DataFrame | None = None
    datasets: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    sources: dict[tuple[str, str], SourceGroup] = field(default_factory=dict)
    alternatives: list[tuple[str, str, ColumnResult, bool]] = field(default_factory=list)


def usable_errors(errors: Mapping[str, Mapping[int, float]]) -> dict[str, dict[int, float]]:
    """The benchmark corruptions that have all five severities (the only ones a CE can be computed for)."""
    from attnprobe.protocol import benchmark_corruptions

    bench = set(benchmark_corruptions())
    return {c: dict(v) for c, v in errors.items() if c in bench and all(s in v for s in SEVERITIES)}


def ce_reference_errors(reference: str, errors: Mapping[str, Mapping[str, Mapping[int, float]]]) -> \
        tuple[dict[str, float] | None, str]:
    """The severity-averaged errors that CEs are divided by, and the reference's display name.

    Args:
        reference: 'alexnet' (the published AlexNet errors) or a run key present in `errors`.
        errors: run key -> corruption -> severity -> error.
    """
    if reference.lower() == "alexnet":
        return None, "AlexNet"
    if reference not in errors:
        raise UserError(f"--ce-reference '{reference}' has no ImageNet-C results in this store; use 'alexnet' or "
                        f"one of: {', '.join(sorted(errors)) or '(none)'}")
    ref = usable_errors(errors[reference])
    if not ref:
        raise UserError(f"--ce-reference '{reference}' has no corruption evaluated at all five severities; "
                        f"evaluate severities 1-5 for it or use --ce-reference alexnet")
    out = {c: sum(v[s] for s in SEVERITIES) / 5.0 for c, v in ref.items()}
    zero = [c for c, v in out.items() if v <= 0]
    if zero:
        raise UserError(f"--ce-reference '{reference}' has zero error on {', '.join(zero)}, so CEs cannot be "
                        f"normalised by it; choose another reference model or 'alexnet'")
    return out, reference


def _slot(r: Any) -> tuple:
    return (r.task, r.dataset, r.condition, int(r.severity))


def accuracy_result(group: SourceGroup) -> ColumnResult:
    """Top-1 accuracy of a single-cell group (clean, ImageNet-A/-R, PGD) with its Wilson interval."""
    r = next(group.cells.sort_values("n", ascending=False).itertuples(index=False))
    return ColumnResult(value=float(r.accuracy), group=group, interval=B.wilson_interval(int(r.correct), int(r.n)),
                        linear=(1.0, {_slot(r): -1.0}))


def imagenet_c_errors_of(group: SourceGroup | None) -> dict[str, dict[int, float]]:
    """`{corruption: {severity: top-1 error}}` of an ImageNet-C group."""
    out: dict[str, dict[int, float]] = {}
    for r in (group.cells.itertuples(index=False) if group is not None else ()):
        out.setdefault(r.condition, {})[int(r.severity)] = float(r.error)
    return out


def mce_result(group: SourceGroup, reference: Mapping[str, float] | None) -> ColumnResult | None:
    """mCE (or the mean CE of a partial table) of an ImageNet-C group; None without a corruption at all five
    severities. `reference`: severity-averaged errors to normalise by (None: AlexNet's)."""
    from attnprobe import robustness as R
    from attnprobe.protocol import alexnet_errors

    errors = imagenet_c_errors_of(group)
    usable = usable_errors(errors)
    if reference is not None:
        usable = {c: v for c, v in usable.items() if c in reference}
    if not usable:
        return None
    alex = reference if reference is not None else alexnet_errors()
    ce = R.corruption_errors(usable, alexnet=alex)
    rows = {(r.condition, int(r.severity)): _slot(r) for r in group.cells.itertuples(index=False)}
    weights = {rows[(c, sv)]: 1.0 / (len(usable) * 5 * alex[c]) for c in usable for sv in SEVERITIES}
    return ColumnResult(value=sum(ce.values()) / len(ce), group=group, partial=not R.is_complete(usable),
                        linear=(0.0, weights), errors=errors)


def mfr_result(group: SourceGroup) -> ColumnResult | None:
    """mFR (or the mean FR of the perturbations present) of an ImageNet-P group; None without usable flip sums."""
    from attnprobe import robustness as R
    from attnprobe.protocol import alexnet_flip_probabilities, test_perturbations

    known = set(alexnet_flip_probabilities())
    fps = {r.condition: flip_probability(int(r.n), r.extra or {}) for r in group.cells.itertuples(index=False)}
    fps = {p: v for p, v in fps.items() if not math.isnan(v) and p in known}
    if not fps:
        return None
    if all(p in fps for p in test_perturbations()):
        return ColumnResult(value=R.mfr(fps), group=group)
    rates = R.flip_rates(fps)
    return ColumnResult(value=sum(rates.values()) / len(rates), group=group, partial=True)


def column_result(col: str, group: SourceGroup, reference: Mapping[str, float] | None = None) -> \
        ColumnResult | None:
    """The Table 2 number `col` of one source group (None when the group cannot give it)."""
    if col == "mce":
        return mce_result(group, reference)
    if col == "mfr":
        return mfr_result(group)
    return accuracy_result(group)


def _choose_groups(cells: pd.DataFrame, keys: Sequence[str], source: str | None, notes: list[str]
                   ) -> tuple[dict[tuple[str, str], list[SourceGroup]], dict[tuple[str, str], SourceGroup]]:
    """Every run's source groups per task, and the one each Table 2 column shows (see `sources.choose_group`)."""
    groups = group_cells(cells)
    chosen: dict[tuple[str, str], SourceGroup] = {}
    for key in keys:
        for col, task in COLUMN_TASKS.items():
            options = groups.get((key, task))
            g = choose_group(options, source)
            if g is not None:
                chosen[(key, col)] = g
                notes.extend(g.notes)
            elif options:
                notes.append(f"{key}: no {TASK_NAMES[task]} results from {source} data (--source); "
                             f"{len(options)} other source(s) stored.")
    return groups, chosen


def counting_summary(cells: pd.DataFrame, chunks: pd.DataFrame | None = None, ce_reference: str = "alexnet",
                     baseline: str | None = None, n_resamples: int = B.DEFAULT_RESAMPLES, seed: int = 0,
                     keys: Sequence[str] | None = None, source: str | None = None) -> CountingSummary:
    """Compute the Table 2 numbers of every run in `cells`, with intervals and changes against `baseline`.

    Each number comes from the cells of one data source (`attnprobe.report.sources`): the full set before any
    `--limit` subset, released before generated data unless `source` ('released' / 'generated', see
    `sources.parse_source`) says otherwise. The numbers of the other sources are in `alternatives`.
    """
    from attnprobe import robustness as R

    notes: list[str] = []
    keys = list(keys) if keys is not None else sorted(cells["key"].unique()) if not cells.empty else []
    if baseline is not None and baseline not in keys:
        raise UserError(f"--baseline '{baseline}' is not in this store; choose one of: {', '.join(keys)}")
    groups, chosen = _choose_groups(cells, keys, source, notes)
    errors = {k: imagenet_c_errors_of(g) for (k, col), g in chosen.items() if col == "mce"}
    ref, ref_name = ce_reference_errors(ce_reference, errors) if errors else (None, "AlexNet")
    results: dict[tuple[str, str], ColumnResult] = {}
    for (key, col), g in chosen.items():
        res = column_result(col, g, ref)
        if res is not None:
            results[(key, col)] = res
        elif col == "mfr":
            notes.append(f"{key}: ImageNet-P cells carry no flip sums the report understands; mFR left out.")
    ce_rows = {k: usable_errors(r.errors or {}) for (k, col), r in results.items() if col == "mce"}
    ce_rows = {k: ({c: v for c, v in e.items() if c in ref} if ref is not None else e) for k, e in ce_rows.items()}
    ce_frame = R.ce_table({k: ce_rows[k] for k in keys if k in ce_rows}, percent=True, alexnet=ref) \
        if ce_rows else None
    lacking = sorted(k for k in keys if errors.get(k) and (k, "mce") not in results)
    if lacking:
        notes.append(f"ImageNet-C of {', '.join(lacking)}: no benchmark corruption evaluated at all five severities, "
                     f"so no CE or mCE (the per-cell errors are in the heat map).")
    if ce_rows:
        notes.append(f"CE normalised by {ref_name}" + ("" if ref is None else " (a model of this store, not AlexNet: "
                                                                             "these CEs are not comparable to the "
                                                                             "paper's)") + ".")
    notes += _several_sources_notes(groups, chosen, keys)
    alternatives = [(g.key, col, r, chosen.get((g.key, col)) is g) for (key, task), gs in groups.items()
                    if key in keys for g in gs for col in [c for c, t in COLUMN_TASKS.items() if t == task]
                    if (r := column_result(col, g, ref)) is not None]
    table = _table(results, keys)
    intervals, differences, methods = _intervals(results, baseline, keys, chunks, n_resamples, seed)
    if any(c in table.columns for c in ACCURACY_TASKS.values()):
        notes.append("± is half the 95% interval; accuracies use the Wilson binomial interval.")
    if methods:
        notes.append("Intervals of the mCE and of differences: " + "; ".join(sorted(methods)) + ".")
    if "mfr" in table.columns:
        notes.append("mFR has no interval (the store keeps flip sums per chunk, not per video).")
    datasets: dict[str, list[str]] = {}
    for (key, col), r in results.items():
        datasets.setdefault(COLUMN_TASKS[col], [])
        datasets[COLUMN_TASKS[col]] = sorted(set(datasets[COLUMN_TASKS[col]]) | set(r.group.cells["dataset"]))
    return CountingSummary(table=table, intervals=intervals, differences=differences,
                           errors={k: e for k, e in errors.items() if e}, ce=ce_frame, datasets=datasets,
                           notes=notes, sources={k: r.group for k, r in results.items()}, alternatives=alternatives)


def _several_sources_notes(groups: Mapping[tuple[str, str], list[SourceGroup]],
                           chosen: Mapping[tuple[str, str], SourceGroup], keys: Sequence[str]) -> list[str]:
    """One note per benchmark for which some run has results from several sources."""
    out = []
    for col, task in COLUMN_TASKS.items():
        several = [k for k in keys if len(groups.get((k, task), ())) > 1]
        if several:
            out.append(f"{TASK_NAMES[task]}: {', '.join(several)} ha{'s' if len(several) == 1 else 've'} results "
                       f"from {max(len(groups[(k, task)]) for k in several)} data sources; the table shows one "
                       f"source per number (full set first, then released data), never a mix; every source is "
                       f"listed apart in the data-sources table.")
    return out


def _table(results: Mapping[tuple[str, str], ColumnResult], keys: Sequence[str]) -> pd.DataFrame:
    vals: dict[str, dict[str, Any]] = {k: {} for k in keys}
    for (key, col), r in results.items():
        vals[key][col] = r.value
        if col in ("mce", "mfr"):
            vals[key][f"{col}_partial"] = r.partial
    table = pd.DataFrame.from_dict(vals, orient="index").reindex(keys)
    table.index.name = "key"
    for c in ("mce_partial", "mfr_partial"):
        if c in table.columns:
            table[c] = table[c].astype("boolean").fillna(False).astype(bool)
    return table


def comparable(a: ColumnResult | None, b: ColumnResult | None) -> bool:
    """Whether two numbers may be subtracted: same source (kind, backend, limit, setting) and both full or both
    partial."""
    return a is not None and b is not None and a.partial == b.partial and \
        a.group.source.signature == b.group.source.signature


def _intervals(results: Mapping[tuple[str, str], ColumnResult], baseline: str | None, keys: Sequence[str],
               chunks: pd.DataFrame | None, n_resamples: int, seed: int
               ) -> tuple[dict[tuple[str, str], B.Interval], dict[str, dict[str, B.Interval]], set[str]]:
    """Intervals of each number and of the differences against the baseline (only between comparable numbers)."""
    intervals = {k: r.interval for k, r in results.items() if r.interval is not None}
    linear = {k: r.linear for k, r in results.items() if r.linear is not None}
    cell_err = {(r.group.key, *_slot(c)): (float(c.error), int(c.n)) for r in results.values()
                for c in r.group.cells.itertuples(index=False)}
    chunk_idx, sample_idx = chunk_index(chunks), sample_index(chunks)
    differences: dict[str, dict[str, B.Interval]] = {}
    methods: set[str] = set()
    for key in keys:
        if (key, "mce") in linear:
            iv = _linear_interval([key], linear, "mce", cell_err, chunk_idx, n_resamples, seed, sample_idx)
            if iv is not None:
                intervals[(key, "mce")] = iv
                methods.add(iv.method)
        if baseline is None or key == baseline:
            continue
        for col in ("clean", "mce", "imagenet_a", "imagenet_r", "pgd"):
            if (key, col) in linear and (baseline, col) in linear and \
                    comparable(results.get((key, col)), results.get((baseline, col))):
                iv = _linear_interval([key, baseline], linear, col, cell_err, chunk_idx, n_resamples, seed,
                                      sample_idx)
                if iv is not None:
                    differences.setdefault(key, {})[col] = iv
                    methods.add(iv.method)
    return intervals, differences, methods


def _linear_interval(runs: Sequence[str], linear: Mapping[tuple[str, str], tuple[float, dict[tuple, float]]],
                     col: str, cell_err: Mapping[tuple, tuple[float, int]],
                     chunks: Mapping[tuple, tuple[np.ndarray, np.ndarray]],
                     n_resamples: int, seed: int,
                     samples: Mapping[tuple, tuple[np.ndarray, np.ndarray]] | None = None) -> B.Interval | None:
    """Interval of a linear statistic of cell errors for one run, or of the difference runs[0] - runs[1].

    A (paired) bootstrap over images when every cell of both runs has per-sample correctness with the same sample
    count; else a paired chunk bootstrap when every cell of both runs has the same >= MIN_CHUNKS chunks; otherwise
    the normal approximation with binomial variances, cells and runs treated as independent.
    """
    terms = [linear[(r, col)] for r in runs]
    signs = [1.0, -1.0][: len(runs)]
    cells_per_run = [list(t[1]) for t in terms]
    if len(runs) == 2 and set(cells_per_run[0]) != set(cells_per_run[1]):
        # different datasets or conditions: no pairing possible
        pass
    elif samples and (iv := _sample_interval(runs, terms, samples, n_resamples, seed)) is not None:
        return iv
    elif chunks:
        iv = _chunk_interval(runs, terms, signs, chunks, n_resamples, seed)
        if iv is not None:
            return iv
    est, var = 0.0, 0.0
    for run, (const, w), sign in zip(runs, terms, signs):
        est += sign * const
        for cell, wi in w.items():
            e, n = cell_err[(run, *cell)]
            est += sign * wi * e
            var += wi * wi * e * (1.0 - e) / max(n, 1)
    method = "normal approximation, cells and models treated as independent"
    return B.normal_interval(est, var, method=method)


def chunk_index(chunks: pd.DataFrame | None) -> dict[tuple, tuple[np.ndarray, np.ndarray]]:
    """`{(key, task, dataset, condition, severity): (correct per chunk, n per chunk)}` ordered by chunk."""
    if chunks is None or chunks.empty:
        return {}
    out = {}
    cols = ["key", "task", "dataset", "condition", "severity"]
    for gk, g in chunks.sort_values("chunk").groupby(cols, sort=False):
        out[(gk[0], gk[1], gk[2], gk[3], int(gk[4]))] = (g["correct"].to_numpy(), g["n"].to_numpy())
    return out


def sample_index(chunks: pd.DataFrame | None) -> dict[tuple, tuple[np.ndarray, np.ndarray]]:
    """`{(key, task, dataset, condition, severity): (per-sample correct, per-sample valid)}` for the cells whose
    every chunk has a per-sample record (bool vectors in chunk order; valid = not skipped)."""
    if chunks is None or chunks.empty or "bits" not in chunks.columns:
        return {}
    out = {}
    cols = ["key", "task", "dataset", "condition", "severity"]
    for gk, g in chunks.sort_values("chunk").groupby(cols, sort=False):
        if g["bits"].isna().any() or g["bits_n"].isna().any():
            continue
        hit, ok = [], []
        for n, bits, skipped in zip(g["bits_n"].astype(int), g["bits"], g["skipped_bits"]):
            hit.append(np.unpackbits(np.frombuffer(bits, dtype=np.uint8), count=n).astype(bool))
            ok.append(np.ones(n, dtype=bool) if skipped is None or (isinstance(skipped, float) and math.isnan(skipped))
                      else ~np.unpackbits(np.frombuffer(skipped, dtype=np.uint8), count=n).astype(bool))
        out[(gk[0], gk[1], gk[2], gk[3], int(gk[4]))] = (np.concatenate(hit), np.concatenate(ok))
    return out


def _gather(runs: Sequence[str], cells: Sequence[tuple], index: Mapping[tuple, tuple[np.ndarray, np.ndarray]]
            ) -> list[list[tuple[np.ndarray, np.ndarray]]] | None:
    """`index` entries of every cell `(task, dataset, condition, severity)` per run; None when one is missing."""
    out = []
    for run in runs:
        per_run = []
        for task, ds, cond, sev in cells:
            entry = index.get((run, task, ds, cond, int(sev)))
            if entry is None:
                return None
            per_run.append(entry)
        out.append(per_run)
    return out


def _sample_interval(runs: Sequence[str], terms: Sequence[tuple[float, dict[tuple, float]]],
                     samples: Mapping[tuple, tuple[np.ndarray, np.ndarray]], n_resamples: int,
                     seed: int) -> B.Interval | None:
    """Bootstrap over images from per-sample correctness: the same image indices for every cell of both runs.

    None (fall back) when a cell lacks per-sample records or the two runs' records of a cell differ in length (then
    sample *i* may not be the same image in both)."""
    cells = list(terms[0][1])
    got = _gather(runs, cells, samples)
    if got is None:
        return None
    correct = [c for per_run in got for c, _ in per_run]
    valid = [v for per_run in got for _, v in per_run]
    weights = [w[cell] for _, w in terms for cell in cells]
    m = len(cells)
    if any(correct[j].size != correct[j + m].size for j in range(m) if len(runs) == 2):
        return None
    consts = [t[0] for t in terms]
    wv = np.asarray(weights, dtype=np.float64).reshape(len(runs), m)

    def stat(err: np.ndarray) -> np.ndarray:
        # NOTE: each run's value is summed on its own, then subtracted: identical runs give exactly 0
        e = err.reshape(*err.shape[:-1], len(runs), m)
        per_run = (e * wv).sum(axis=-1)
        out = consts[0] + per_run[..., 0]
        return out - (consts[1] + per_run[..., 1]) if len(runs) == 2 else out

    return B.image_bootstrap(correct, valid, stat, n_resamples=n_resamples, seed=seed, paired=len(runs) == 2)


def _chunk_interval(runs: Sequence[str], terms: Sequence[tuple[float, dict[tuple, float]]], signs: Sequence[float],
                    chunks: Mapping[tuple, tuple[np.ndarray, np.ndarray]], n_resamples: int,
                    seed: int) -> B.Interval | None:
    cells = list(terms[0][1])
    got = _gather(runs, cells, chunks)
    if got is None:
        return None
    correct = [[c for c, _ in per_run] for per_run in got]
    ns = [[n for _, n in per_run] for per_run in got]
    k = len(ns[0][0])
    if k < B.MIN_CHUNKS or any(len(x) != k for r in ns for x in r):
        return None
    n_arr = np.array(ns, dtype=np.float64)  # (runs, cells, chunks)
    # NOTE: pairing needs chunk i to cover the same samples everywhere; equal chunk sizes (up to skipped samples)
    # are the check we can make.
    if np.abs(n_arr - n_arr[:1, :1, :]).max() > 0.01 * n_arr.max():
        return None
    c_arr = np.array(correct, dtype=np.float64)
    consts = sum(s * t[0] for s, t in zip(signs, terms))
    weights = np.array([[t[1][cell] for cell in cells] for t in terms]) * np.array(signs)[:, None]

    def stat(err: np.ndarray) -> np.ndarray:
        return consts + (err * weights).sum(axis=(-2, -1))

    return B.chunk_bootstrap(c_arr, n_arr, stat, n_resamples=n_resamples, seed=seed)


# -- diagnostics -----------------------------------------------------------------------------------------------------
@dataclass
class DiagnosticSummary:
    """Per-run mean of a per-image diagnostic with a paired bootstrap interval, and differences to the baseline."""

    metric: str
    condition: str
    severity: int
    means: dict[str, B.Interval]
    differences: dict[str, B.Interval]
    n_images: int
    datasets: list[str]


def choose_condition(df: pd.DataFrame, prefer: str = "gaussian_noise") -> tuple[str, int] | None:
    """The (condition, severity) with the most images, preferring the paper's Gaussian noise; None if empty."""
    if df.empty:
        return None
    counts = df.groupby(["condition", "severity"])["image"].nunique().reset_index()
    counts["pref"] = counts["condition"] == prefer
    best = counts.sort_values(["pref", "image", "severity"], ascending=[False, False, False]).iloc[0]
    return str(best["condition"]), int(best["severity"])


def diagnostic_summary(df: pd.DataFrame, metric: str, condition: str | None = None, severity: int | None = None,
                       baseline: str | None = None, keys: Sequence[str] | None = None,
                       n_resamples: int = B.DEFAULT_RESAMPLES, seed: int = 0) -> DiagnosticSummary | None:
    """Mean of a per-image diagnostic per run (images averaged over layers and heads first), with 95% paired
    bootstrap intervals over the images all runs share, and paired differences against `baseline`."""
    if df.empty:
        return None
    if condition is None:
        chosen = choose_condition(df)
        assert chosen is not None
        condition, severity = chosen
    sub = df[df["condition"] == condition]
    if severity is not None:
        sub = sub[sub["severity"] == severity]
    if keys is not None:
        sub = sub[sub["key"].isin(keys)]
    if sub.empty:
        return None
    table = per_image(sub)  # rows images, columns keys
    means = B.paired_bootstrap_means(table, n_resamples=n_resamples, seed=seed)
    # runs without the shared images still get their own interval
    for k in table.columns:
        if means[k].n == 0 or math.isnan(means[k].estimate):
            means[k] = B.bootstrap_mean(table[k].dropna().to_numpy(), n_resamples=n_resamples, seed=seed)
    diffs: dict[str, B.Interval] = {}
    if baseline is not None and baseline in table.columns:
        for k in table.columns:
            if k == baseline:
                continue
            try:
                diffs[k] = B.paired_bootstrap_difference(table[k], table[baseline], n_resamples, seed)
            except ValueError:
                continue
    n_common = int(table.dropna().shape[0])
    return DiagnosticSummary(metric=metric, condition=condition, severity=int(severity or 0), means=means,
                             differences=diffs, n_images=n_common, datasets=sorted(sub["dataset"].unique()))


def per_layer_means(frames: Mapping[str, pd.DataFrame], condition: str | None = None,
                    severity: int | None = None) -> pd.DataFrame:
    """Mean of each metric per (run key, layer): index (key, layer), one column per metric.

    `attention_cosine` is taken at (`condition`, `severity`); the other metrics on clean images.
    """
    cols = {}
    for metric, df in frames.items():
        if df is None or df.empty:
            continue
        if metric == "attention_cosine":
            sub = df
            if condition is not None:
                sub = sub[(sub["condition"] == condition)]
            if severity is not None:
                sub = sub[sub["severity"] == severity]
        else:
            sub = df[df["condition"] == "clean"] if (df["condition"] == "clean").any() else df
        if sub.empty:
            continue
        cols[metric] = sub.groupby(["key", "layer"])["value"].mean()
    if not cols:
        return pd.DataFrame()
    out = pd.DataFrame(cols)
    out.index.names = ["key", "layer"]
    return out
