"""Known-answer tests of the report's confidence intervals."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from attnprobe.report import bootstrap as B


def test_constant_data_gives_zero_width() -> None:
    iv = B.bootstrap_mean(np.full(50, 0.7), n_resamples=200, seed=1)
    assert iv.estimate == pytest.approx(0.7)
    assert iv.low == pytest.approx(0.7) and iv.high == pytest.approx(0.7)
    assert iv.half_width == pytest.approx(0.0)


def test_interval_contains_mean_and_is_seeded() -> None:
    x = np.random.default_rng(0).normal(0.5, 0.1, 400)
    a = B.bootstrap_mean(x, n_resamples=500, seed=3)
    b = B.bootstrap_mean(x, n_resamples=500, seed=3)
    assert a == b
    assert a.low < x.mean() < a.high
    # the percentile interval of a mean is close to +-1.96 standard errors
    se = x.std(ddof=1) / math.sqrt(x.size)
    assert a.half_width == pytest.approx(1.96 * se, rel=0.2)


def test_paired_difference_is_narrower_than_unpaired() -> None:
    rng = np.random.default_rng(0)
    ids = [f"img{i}" for i in range(300)]
    shared = rng.normal(0.5, 0.2, 300)  # image difficulty, shared by both models
    a = pd.Series(shared + 0.05 + rng.normal(0, 0.01, 300), index=ids)
    b = pd.Series(shared + rng.normal(0, 0.01, 300), index=ids)
    paired = B.paired_bootstrap_difference(a, b, n_resamples=500, seed=0)
    unpaired = B.unpaired_bootstrap_difference(a.to_numpy(), b.to_numpy(), n_resamples=500, seed=0)
    assert paired.estimate == pytest.approx(unpaired.estimate)
    assert paired.contains(0.05) and not paired.contains(0.0)
    assert paired.half_width < unpaired.half_width / 5
    assert paired.n == 300


def test_paired_difference_uses_common_images_only() -> None:
    a = pd.Series({"x": 1.0, "y": 2.0, "z": 100.0})
    b = pd.Series({"x": 0.0, "y": 1.0})
    iv = B.paired_bootstrap_difference(a, b, n_resamples=100)
    assert iv.estimate == pytest.approx(1.0) and iv.n == 2
    with pytest.raises(ValueError, match="no image ids"):
        B.paired_bootstrap_difference(pd.Series({"p": 1.0}), pd.Series({"q": 1.0}))


def test_paired_means_resample_the_same_images() -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(0, 1, 200)
    table = pd.DataFrame({"m1": base, "m2": base + 1.0, "m3": np.nan})
    table.loc[:10, "m3"] = 0.0  # a column with missing images drops those rows for every column
    out = B.paired_bootstrap_means(table[["m1", "m2"]], n_resamples=300, seed=0)
    # identical up to a shift: identical intervals shifted by 1
    assert out["m2"].low - out["m1"].low == pytest.approx(1.0)
    assert out["m2"].high - out["m1"].high == pytest.approx(1.0)
    sub = B.paired_bootstrap_means(table, n_resamples=50)
    assert sub["m1"].n == 11


def test_wilson_interval_known_values() -> None:
    iv = B.wilson_interval(50, 100)
    # Wilson 95% interval of 50/100 is [0.4038, 0.5962]
    assert iv.low == pytest.approx(0.4038, abs=1e-3) and iv.high == pytest.approx(0.5962, abs=1e-3)
    edge = B.wilson_interval(0, 20)
    assert edge.low == pytest.approx(0.0, abs=1e-12) and edge.high == pytest.approx(0.1611, abs=1e-3)
    assert math.isnan(B.wilson_interval(0, 0).estimate)


def test_chunk_bootstrap_paired_difference() -> None:
    rng = np.random.default_rng(0)
    k, size = 40, 100
    hard = rng.uniform(0.2, 0.6, k)  # chunk difficulty shared by both models
    n = np.full((2, 1, k), size, dtype=float)
    correct = np.stack([rng.binomial(size, 1 - hard), rng.binomial(size, 1 - hard - 0.02)])[:, None, :]
    iv = B.chunk_bootstrap(correct, n, lambda e: e[..., 1, 0] - e[..., 0, 0], n_resamples=500, seed=0)
    assert iv.estimate == pytest.approx((correct[0].sum() - correct[1].sum()) / (k * size))
    assert iv.low < iv.estimate < iv.high
    assert "40 chunks" in iv.method


def test_interval_format() -> None:
    assert B.Interval(0.437, 0.435, 0.439).format() == "43.7 ± 0.2"
    assert B.Interval(math.nan, math.nan, math.nan).format() == "–"
