"""Confidence intervals: paired bootstrap over images, and what can be done with chunk counts.

Per-image diagnostics (attention stability, head similarity) are stored per image, so their CIs resample *images*:
every bootstrap replicate draws image ids with replacement and uses the same ids for every model, so differences
between models are paired (the image-to-image variation that both models share cancels).

Counting benchmarks (accuracy, CE, mCE) are stored as counts per chunk of 1000 samples and, when the scorer gives
them (top-1 scorers do), as per-sample correctness bits. With the bits, `image_bootstrap` resamples image indices
once per replicate and applies them to every cell of every model, so accuracy and mCE differences are paired over
images. Without them:

* `wilson_interval` for one accuracy or error (binomial, exact enough for any n);
* `chunk_bootstrap` resamples chunk indices jointly over cells and models when there are enough chunks
  (`MIN_CHUNKS`): chunk *i* covers the same sorted samples in every cell of a dataset, so this is a paired
  cluster bootstrap over blocks of images;
* otherwise `normal_interval` / the delta method on binomial variances, treating the models as independent,
  which is conservative for a difference (two models are positively correlated on the same images).

All functions are seeded and deterministic; intervals are 95% percentile intervals by default.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = [
    "DEFAULT_RESAMPLES",
    "Interval",
    "MIN_CHUNKS",
    "bootstrap_mean",
    "chunk_bootstrap",
    "image_bootstrap",
    "normal_interval",
    "paired_bootstrap_difference",
    "paired_bootstrap_means",
    "unpaired_bootstrap_difference",
    "wilson_interval",
]

DEFAULT_RESAMPLES = 1000
#: Fewest chunks per cell for which a chunk (cluster) bootstrap is used instead of a normal approximation.
MIN_CHUNKS = 20


@dataclass(frozen=True)
class Interval:
    """A point estimate with a confidence interval (same unit as the data, fractions inside attnprobe).

    Attributes:
        estimate: the statistic on the full data.
        low, high: interval bounds.
        level: confidence level (0.95).
        method: how the interval was made ('paired bootstrap over images', 'Wilson', ...).
        n: number of units resampled or counted (images, samples).
    """

    estimate: float
    low: float
    high: float
    level: float = 0.95
    method: str = ""
    n: int = 0

    @property
    def half_width(self) -> float:
        """Half the interval width: the `± x` shown in tables."""
        return (self.high - self.low) / 2.0

    def format(self, scale: float = 100.0, digits: int = 1) -> str:
        """`'43.7 ± 0.2'` (scaled, e.g. fractions to percent)."""
        if math.isnan(self.estimate):
            return "–"
        return f"{self.estimate * scale:.{digits}f} ± {self.half_width * scale:.{digits}f}"

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _percentile(stats: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def _resampled_means(values: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Means of `n_resamples` bootstrap samples of the rows of `values` (1-D or rows x columns), in blocks so that
    memory stays bounded for large n."""
    n = values.shape[0]
    out = []
    block = max(1, int(2e6 // max(n, 1)))
    for start in range(0, n_resamples, block):
        idx = rng.integers(0, n, size=(min(block, n_resamples - start), n))
        out.append(values[idx].mean(axis=1))
    return np.concatenate(out, axis=0)


def bootstrap_mean(values: Sequence[float] | np.ndarray, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                   level: float = 0.95) -> Interval:
    """Percentile bootstrap CI of the mean of `values` (one value per image)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[~np.isnan(x)]
    if x.size == 0:
        return Interval(math.nan, math.nan, math.nan, level, "bootstrap over images", 0)
    stats = _resampled_means(x, n_resamples, _rng(seed))
    lo, hi = _percentile(stats, level)
    return Interval(float(x.mean()), lo, hi, level, "bootstrap over images", int(x.size))


def _common(a: Mapping[str, float] | pd.Series, b: Mapping[str, float] | pd.Series) -> tuple[np.ndarray, np.ndarray]:
    sa, sb = pd.Series(a, dtype=np.float64).dropna(), pd.Series(b, dtype=np.float64).dropna()
    ids = sa.index.intersection(sb.index)
    if len(ids) == 0:
        raise ValueError("the two series share no image ids; a paired comparison needs the same images")
    ids = ids.sort_values()
    return sa.loc[ids].to_numpy(), sb.loc[ids].to_numpy()


def paired_bootstrap_difference(a: Mapping[str, float] | pd.Series, b: Mapping[str, float] | pd.Series,
                                n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                                level: float = 0.95) -> Interval:
    """CI of mean(a) - mean(b) over the images both have, resampling image ids (the same ids for a and b).

    Args:
        a, b: image id -> per-image value (e.g. mean attention cosine of one model on that image).
    """
    xa, xb = _common(a, b)
    stats = _resampled_means(xa - xb, n_resamples, _rng(seed))
    lo, hi = _percentile(stats, level)
    return Interval(float(xa.mean() - xb.mean()), lo, hi, level, "paired bootstrap over images", int(xa.size))


def unpaired_bootstrap_difference(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray,
                                  n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                                  level: float = 0.95) -> Interval:
    """CI of mean(a) - mean(b) resampling a and b independently (for samples of different images)."""
    xa = np.asarray(a, dtype=np.float64).ravel()
    xb = np.asarray(b, dtype=np.float64).ravel()
    rng = _rng(seed)
    stats = _resampled_means(xa, n_resamples, rng) - _resampled_means(xb, n_resamples, rng)
    lo, hi = _percentile(stats, level)
    return Interval(float(xa.mean() - xb.mean()), lo, hi, level, "unpaired bootstrap", int(min(xa.size, xb.size)))


def paired_bootstrap_means(table: pd.DataFrame, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                           level: float = 0.95) -> dict[str, Interval]:
    """CIs of the column means of `table` (rows = images, columns = models), all columns resampled with the same
    image ids. Rows with a missing value in any column are dropped, so every model is measured on the same images.
    """
    t = table.dropna(axis=0, how="any")
    if t.empty:
        return {c: Interval(math.nan, math.nan, math.nan, level, "paired bootstrap over images", 0) for c in table}
    values = t.to_numpy(dtype=np.float64)
    stats = _resampled_means(values, n_resamples, _rng(seed))  # (B, models)
    out = {}
    for j, col in enumerate(t.columns):
        lo, hi = _percentile(stats[:, j], level)
        out[col] = Interval(float(values[:, j].mean()), lo, hi, level, "paired bootstrap over images", len(t))
    return out


def wilson_interval(successes: float, n: float, level: float = 0.95) -> Interval:
    """Wilson score interval of a binomial proportion (e.g. top-1 accuracy = correct / n)."""
    if n <= 0:
        return Interval(math.nan, math.nan, math.nan, level, "Wilson", 0)
    z = _z(level)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half), level, "Wilson (binomial)", int(n))


def normal_interval(estimate: float, variance: float, level: float = 0.95, method: str = "normal approximation",
                    n: int = 0) -> Interval:
    """`estimate ± z * sqrt(variance)`."""
    h = _z(level) * math.sqrt(max(variance, 0.0))
    return Interval(estimate, estimate - h, estimate + h, level, method, n)


def _z(level: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(0.5 + level / 2.0)


def chunk_bootstrap(correct: np.ndarray, n: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray],
                    n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0, level: float = 0.95) -> Interval:
    """Cluster bootstrap over chunks, paired across cells and models.

    Args:
        correct: (models, cells, chunks) correct counts; chunk *i* covers the same samples in every cell and model.
        n: (models, cells, chunks) evaluated samples.
        statistic: maps per-cell errors (..., models, cells) to the statistic (...), vectorised over the leading
            bootstrap axis, e.g. `lambda err: err[..., 0, :].mean(-1) - err[..., 1, :].mean(-1)`.

    Returns:
        The statistic on all chunks with a percentile interval from resampling chunk indices.
    """
    correct = np.asarray(correct, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    k = correct.shape[-1]
    est = statistic(1.0 - correct.sum(-1) / n.sum(-1))
    rng = _rng(seed)
    idx = rng.integers(0, k, size=(n_resamples, k))
    # counts of each chunk in each replicate: (B, k); summing weighted chunks keeps memory at B x models x cells
    w = np.zeros((n_resamples, k))
    np.add.at(w, (np.arange(n_resamples)[:, None], idx), 1.0)
    c_b = np.einsum("bk,mck->bmc", w, correct)
    n_b = np.einsum("bk,mck->bmc", w, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        stats = statistic(1.0 - c_b / n_b)
    lo, hi = _percentile(np.asarray(stats, dtype=np.float64), level)
    return Interval(float(est), lo, hi, level, f"paired bootstrap over {k} chunks", int(n.sum() / max(n.shape[0], 1)))


def image_bootstrap(correct: Sequence[np.ndarray], valid: Sequence[np.ndarray],
                    statistic: Callable[[np.ndarray], np.ndarray], n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                    level: float = 0.95, paired: bool = True) -> Interval:
    """Bootstrap over images of a statistic of per-cell errors, from per-sample correctness.

    Each replicate draws image indices with replacement once and applies the same indices to every column of the
    same length (sample *i* must be the same image in every such column: the same dataset, cells of one sorted
    image list), so models are paired image by image and cells of one replicate share its images.

    Args:
        correct: m columns (cells of one or more models), each a bool vector of per-sample top-1 correctness.
        valid: m matching bool vectors, False for skipped (unreadable) samples, which count in no error.
        statistic: maps errors (..., m) to the statistic (...), vectorised over a leading replicate axis.
        paired: only names the method ('paired bootstrap ...' for differences between models).

    Returns:
        The statistic on all images with a percentile interval; `n` is the number of images of the longest column.
    """
    cols = [np.asarray(c, dtype=bool).ravel() for c in correct]
    vals = [np.asarray(v, dtype=bool).ravel() for v in valid]
    if not cols or len(cols) != len(vals) or any(c.size != v.size for c, v in zip(cols, vals)):
        raise ValueError("correct and valid must be matching non-empty lists of equally long vectors")

    def errors(c: np.ndarray, v: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return 1.0 - c / v

    est = statistic(np.array([errors(c[v].sum(), v.sum()) for c, v in zip(cols, vals)]))
    rng = _rng(seed)
    err_b = np.empty((n_resamples, len(cols)))
    by_len: dict[int, list[int]] = {}
    for j, c in enumerate(cols):
        by_len.setdefault(c.size, []).append(j)
    for n, js in sorted(by_len.items()):
        hits = np.stack([cols[j] & vals[j] for j in js], axis=1).astype(np.float64)  # (n, columns)
        ok = np.stack([vals[j] for j in js], axis=1).astype(np.float64)
        block = max(1, int(4e6 // max(n, 1)))
        for start in range(0, n_resamples, block):
            b = min(block, n_resamples - start)
            idx = rng.integers(0, n, size=(b, n))
            # how often each image is drawn in each replicate; a matrix product then sums the columns
            w = np.bincount((idx + np.arange(b)[:, None] * n).ravel(), minlength=b * n).reshape(b, n)
            w = w.astype(np.float64)
            err_b[start:start + b, js] = errors(w @ hits, w @ ok)
    lo, hi = _percentile(np.asarray(statistic(err_b), dtype=np.float64), level)
    n_img = max(by_len)
    return Interval(float(est), lo, hi, level, f"{'paired ' if paired else ''}bootstrap over {n_img} images", n_img)
