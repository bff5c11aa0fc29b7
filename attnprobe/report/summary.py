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

__all__ = [
    "ACCURACY_TASKS",
    "CountingSummary",
    "DiagnosticSummary",
    "ce_reference_errors",
    "chunk_index",
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


@dataclass
class CountingSummary:
    """Counting-benchmark numbers per run.

    Attributes:
        table: index = run keys; columns clean, mce, mce_partial, mfr, mfr_partial, imagenet_a, imagenet_r, pgd.
        intervals: (run key, column) -> 95% interval of the value.
        differences: run key -> column -> 95% interval of (run - baseline).
        errors: run key -> corruption -> severity -> top-1 error (ImageNet-C).
        ce: the Table 3 frame (percent) or None when no corruption has all five severities.
        datasets: task -> dataset fingerprints seen.
        notes: what was used (reference of the CE, interval methods, partial tables).
    """

    table: pd.DataFrame
    intervals: dict[tuple[str, str], B.Interval] = field(default_factory=dict)
    differences: dict[str, dict[str, B.Interval]] = field(default_factory=dict)
    errors: dict[str, dict[str, dict[int, float]]] = field(default_factory=dict)
    ce: pd.DataFrame | None = None
    datasets: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


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


def _pick_dataset(sub: pd.DataFrame, notes: list[str], what: str) -> pd.DataFrame:
    """One dataset per run and task: the fingerprint with the most evaluated samples (noted if several)."""
    if sub["dataset"].nunique() <= 1:
        return sub
    sizes = sub.groupby("dataset")["n"].sum().sort_values(ascending=False)
    notes.append(f"{what}: results on {len(sizes)} datasets; the table uses {sizes.index[0][:16]} (most samples).")
    return sub[sub["dataset"] == sizes.index[0]]


def counting_summary(cells: pd.DataFrame, chunks: pd.DataFrame | None = None, ce_reference: str = "alexnet",
                     baseline: str | None = None, n_resamples: int = B.DEFAULT_RESAMPLES, seed: int = 0,
                     keys: Sequence[str] | None = None) -> CountingSummary:
    """Compute the Table 2 numbers of every run in `cells`, with intervals and changes against `baseline`."""
    from attnprobe import robustness as R
    from attnprobe.protocol import alexnet_errors, alexnet_flip_probabilities, test_perturbations

    notes: list[str] = []
    keys = list(keys) if keys is not None else sorted(cells["key"].unique()) if not cells.empty else []
    if baseline is not None and baseline not in keys:
        raise UserError(f"--baseline '{baseline}' is not in this store; choose one of: {', '.join(keys)}")
    vals: dict[str, dict[str, Any]] = {k: {} for k in keys}
    intervals: dict[tuple[str, str], B.Interval] = {}
    datasets = {t: sorted(cells.loc[cells["task"] == t, "dataset"].unique()) for t in cells["task"].unique()} \
        if not cells.empty else {}
    # weights of the linear statistics (value = const + sum_i w_i * error_i) per (key, column), for differences
    linear: dict[tuple[str, str], tuple[float, dict[tuple, float]]] = {}
    cell_err: dict[tuple, tuple[float, int]] = {}  # (key, task, dataset, condition, severity) -> (error, n)
    for r in cells.itertuples(index=False):
        cell_err[(r.key, r.task, r.dataset, r.condition, int(r.severity))] = (float(r.error), int(r.n))
    groups = {gk: g for gk, g in cells.groupby(["key", "task"], sort=False)} if not cells.empty else {}

    for task, col in ACCURACY_TASKS.items():
        for key in keys:
            sub = groups.get((key, task))
            if sub is None or sub.empty:
                continue
            if task == "pgd" and (sub["condition"] == "pgd5").any():
                sub = sub[sub["condition"] == "pgd5"]  # the paper's PGD-5 setting first
            sub = _pick_dataset(sub, notes, f"{key} {task}")
            r = sub.sort_values("n", ascending=False).iloc[0]
            vals[key][col] = float(r["accuracy"])
            intervals[(key, col)] = B.wilson_interval(int(r["correct"]), int(r["n"]))
            linear[(key, col)] = (1.0, {(task, r["dataset"], r["condition"], int(r["severity"])): -1.0})

    # ImageNet-C: one cell per (run, corruption, severity); with several datasets, the one with most samples
    best: dict[tuple[str, str, int], Any] = {}
    for key in keys:
        sub = groups.get((key, "imagenet_c"))
        for r in (sub.itertuples(index=False) if sub is not None else ()):
            k = (key, r.condition, int(r.severity))
            if k not in best or r.n > best[k].n:
                best[k] = r
    errors: dict[str, dict[str, dict[int, float]]] = {}
    for (key, c, sv), r in best.items():
        errors.setdefault(key, {}).setdefault(c, {})[sv] = float(r.error)
    ref, ref_name = ce_reference_errors(ce_reference, errors) if errors else (None, "AlexNet")
    alex = ref if ref is not None else alexnet_errors()
    ce_rows: dict[str, dict[str, dict[int, float]]] = {}
    for key in keys:
        usable = usable_errors(errors.get(key, {}))
        if ref is not None:
            usable = {c: v for c, v in usable.items() if c in ref}
        if not usable:
            continue
        ce_rows[key] = usable
        ce = R.corruption_errors(usable, alexnet=alex)
        vals[key]["mce"] = sum(ce.values()) / len(ce)
        vals[key]["mce_partial"] = not R.is_complete(usable)
        linear[(key, "mce")] = (0.0, {("imagenet_c", best[(key, c, sv)].dataset, c, sv):
                                      1.0 / (len(usable) * 5 * alex[c]) for c in usable for sv in SEVERITIES})
    ce_frame = R.ce_table(ce_rows, percent=True, alexnet=alex) if ce_rows else None
    lacking = sorted(k for k in keys if errors.get(k) and k not in ce_rows)
    if lacking:
        notes.append(f"ImageNet-C of {', '.join(lacking)}: no benchmark corruption evaluated at all five severities, "
                     f"so no CE or mCE (the per-cell errors are in the heat map).")
    if ce_rows:
        notes.append(f"CE normalised by {ref_name}" + ("" if ref is None else " (a model of this store, not AlexNet: "
                                                                             "these CEs are not comparable to the "
                                                                             "paper's)") + ".")

    # ImageNet-P: flip probability per perturbation at difficulty 1 (severity 1, or 0 when not recorded)
    for key in keys:
        sub = groups.get((key, "imagenet_p"))
        if sub is None or sub.empty:
            continue
        sub = sub[sub["severity"].isin([0, 1])]
        fps = {r.condition: flip_probability(int(r.n), r.extra or {}) for r in sub.itertuples(index=False)}
        fps = {p: v for p, v in fps.items() if not math.isnan(v)}
        known = set(alexnet_flip_probabilities())
        fps = {p: v for p, v in fps.items() if p in known}
        if not fps:
            notes.append(f"{key}: ImageNet-P cells carry no flip sums the report understands; mFR left out.")
            continue
        tests = test_perturbations()
        if all(p in fps for p in tests):
            vals[key]["mfr"] = R.mfr(fps)
            vals[key]["mfr_partial"] = False
        else:
            rates = R.flip_rates(fps)
            vals[key]["mfr"] = sum(rates.values()) / len(rates)
            vals[key]["mfr_partial"] = True

    table = pd.DataFrame.from_dict(vals, orient="index").reindex(keys)
    table.index.name = "key"
    # intervals of mCE (single run) and of differences against the baseline
    differences: dict[str, dict[str, B.Interval]] = {}
    used_methods: set[str] = set()
    chunk_idx = chunk_index(chunks)
    sample_idx = sample_index(chunks)
    for key in keys:
        if (key, "mce") in linear:
            iv = _linear_interval([key], linear, "mce", cell_err, chunk_idx, n_resamples, seed, sample_idx)
            if iv is not None:
                intervals[(key, "mce")] = iv
                used_methods.add(iv.method)
        if baseline is None or key == baseline:
            continue
        for col in ("clean", "mce", "imagenet_a", "imagenet_r", "pgd"):
            if (key, col) in linear and (baseline, col) in linear:
                if col == "mce" and bool(table.loc[key].get("mce_partial")) != bool(
                        table.loc[baseline].get("mce_partial")):
                    continue
                iv = _linear_interval([key, baseline], linear, col, cell_err, chunk_idx, n_resamples, seed,
                                      sample_idx)
                if iv is not None:
                    differences.setdefault(key, {})[col] = iv
                    used_methods.add(iv.method)
    if any(c in table.columns for c in ACCURACY_TASKS.values()):
        notes.append("± is half the 95% interval; accuracies use the Wilson binomial interval.")
    if used_methods:
        notes.append("Intervals of the mCE and of differences: " + "; ".join(sorted(used_methods)) + ".")
    if "mfr" in table.columns:
        notes.append("mFR has no interval (the store keeps flip sums per chunk, not per video).")
    for c in ("mce_partial", "mfr_partial"):
        if c in table.columns:
            table[c] = table[c].astype("boolean").fillna(False).astype(bool)
    return CountingSummary(table=table, intervals=intervals, differences=differences, errors=errors, ce=ce_frame,
                           datasets=datasets, notes=notes)


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


def _sample_interval(runs: Sequence[str], terms: Sequence[tuple[float, dict[tuple, float]]],
                     samples: Mapping[tuple, tuple[np.ndarray, np.ndarray]], n_resamples: int,
                     seed: int) -> B.Interval | None:
    """Bootstrap over images from per-sample correctness: the same image indices for every cell of both runs.

    None (fall back) when a cell lacks per-sample records or the two runs' records of a cell differ in length (then
    sample *i* may not be the same image in both)."""
    cells = list(terms[0][1])
    correct, valid, weights = [], [], []
    for run, (_, w) in zip(runs, terms):
        for task, ds, cond, sev in cells:
            got = samples.get((run, task, ds, cond, int(sev)))
            if got is None:
                return None
            correct.append(got[0])
            valid.append(got[1])
            weights.append(w[(task, ds, cond, sev)])
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
    correct = []
    ns = []
    for run in runs:
        rc, rn = [], []
        for task, ds, cond, sev in cells:
            got = chunks.get((run, task, ds, cond, int(sev)))
            if got is None:
                return None
            rc.append(got[0])
            rn.append(got[1])
        correct.append(rc)
        ns.append(rn)
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
