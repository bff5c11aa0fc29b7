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


# -- bootstrap over images from per-sample correctness ----------------------------------------------------------------
def _acc_diff(err: np.ndarray) -> np.ndarray:
    return (1.0 - err[..., 0]) - (1.0 - err[..., 1])


def test_image_bootstrap_identical_models_give_exactly_zero() -> None:
    hits = np.random.default_rng(0).random(500) < 0.7
    ok = np.ones(500, dtype=bool)
    iv = B.image_bootstrap([hits, hits.copy()], [ok, ok], _acc_diff, n_resamples=300, seed=0)
    assert (iv.estimate, iv.low, iv.high) == (0.0, 0.0, 0.0)
    assert iv.method == "paired bootstrap over 500 images" and iv.n == 500


def test_image_bootstrap_k_differences_is_paired_and_narrow() -> None:
    n, k = 1000, 30
    rng = np.random.default_rng(1)
    base = rng.random(n) < 0.6
    better = base.copy()
    better[np.flatnonzero(~base)[:k]] = True  # right on exactly k more images, same everywhere else
    ok = np.ones(n, dtype=bool)
    iv = B.image_bootstrap([better, base], [ok, ok], _acc_diff, n_resamples=1000, seed=0)
    assert iv.estimate == pytest.approx(k / n) and iv.contains(k / n)
    assert iv.low > 0  # every replicate sees a non-negative difference; the k images make it positive
    unpaired = B.unpaired_bootstrap_difference(better.astype(float), base.astype(float), n_resamples=1000, seed=0)
    assert iv.high - iv.low < 0.5 * (unpaired.high - unpaired.low)
    # known answer: the paired difference is the mean of k ones among n -> sd sqrt(p(1-p)/n)
    sd = math.sqrt((k / n) * (1 - k / n) / n)
    assert iv.half_width == pytest.approx(1.96 * sd, rel=0.2)


def test_image_bootstrap_skipped_samples_count_in_no_error() -> None:
    hits = np.array([True, False, False, True])
    ok = np.array([True, True, False, True])  # sample 2 unreadable: 2 of 3 readable are right
    iv = B.image_bootstrap([hits], [ok], lambda e: 1.0 - e[..., 0], n_resamples=200, seed=0, paired=False)
    assert iv.estimate == pytest.approx(2 / 3) and iv.method == "bootstrap over 4 images"
    with pytest.raises(ValueError):
        B.image_bootstrap([hits], [ok[:3]], lambda e: e[..., 0])


def _bits_store(root, models: dict[str, dict[tuple[str, int], np.ndarray]], with_bits: bool = True,
                chunk: int = 100):
    """A store with per-sample correctness of each (task/condition, severity) cell of each model."""
    from attnprobe.store import CellKey, ChunkCounts, ResultsStore

    store = ResultsStore(root)
    for model, cells in models.items():
        store.register_model(model, "sha-" + model)
        for (cond, sev), hits in cells.items():
            task = "clean" if cond == "clean" else "imagenet_c"
            key = CellKey(model, "sha-" + model, task, f"ds-{cond}-{sev}", "pre", cond, sev)
            n_chunks = math.ceil(hits.size / chunk)
            for c in range(n_chunks):
                part = hits[c * chunk:(c + 1) * chunk]
                store.add_chunk(key, c, ChunkCounts(n=part.size, correct=int(part.sum())),
                                correct_bits=part if with_bits else None)
            store.finish_cell(key, n_chunks)
    return store


def test_counting_summary_pairs_accuracy_difference_over_images(tmp_path) -> None:
    from attnprobe.report.loaders import cells_frame, chunks_frame
    from attnprobe.report.summary import counting_summary

    n, k = 400, 12
    base = np.random.default_rng(2).random(n) < 0.5
    better = base.copy()
    better[np.flatnonzero(~base)[:k]] = True
    store = _bits_store(tmp_path / "a", {"a": {("clean", 0): base}, "b": {("clean", 0): better},
                                         "c": {("clean", 0): base.copy()}})
    s = counting_summary(cells_frame(store), chunks_frame(store), baseline="a", n_resamples=500)
    d = s.differences["b"]["clean"]
    assert d.method == "paired bootstrap over 400 images" and d.estimate == pytest.approx(k / n)
    assert d.contains(k / n) and d.low > 0
    same = s.differences["c"]["clean"]
    assert (same.low, same.estimate, same.high) == (0.0, 0.0, 0.0)
    assert any("paired bootstrap over 400 images" in note for note in s.notes)
    store.close()
    # the same results without per-sample records: the normal approximation, wider
    old = _bits_store(tmp_path / "b", {"a": {("clean", 0): base}, "b": {("clean", 0): better}}, with_bits=False)
    s2 = counting_summary(cells_frame(old), chunks_frame(old), baseline="a", n_resamples=500)
    d2 = s2.differences["b"]["clean"]
    assert "normal approximation" in d2.method and d2.estimate == pytest.approx(d.estimate)
    assert d.high - d.low < 0.5 * (d2.high - d2.low)
    old.close()


def test_counting_summary_pairs_mce_difference_over_images(tmp_path) -> None:
    from attnprobe import robustness as R
    from attnprobe.protocol import alexnet_errors
    from attnprobe.report.loaders import cells_frame, chunks_frame
    from attnprobe.report.summary import counting_summary

    n = 300
    rng = np.random.default_rng(3)
    conds = [(c, s) for c in ("gaussian_noise", "fog") for s in (1, 2, 3, 4, 5)]
    a = {cs: rng.random(n) < 0.8 - 0.1 * cs[1] for cs in conds}
    b = {cs: v | (rng.random(n) < 0.05) for cs, v in a.items()}  # b is right wherever a is, and on a few more
    store = _bits_store(tmp_path, {"a": a, "b": b, "twin": {cs: v.copy() for cs, v in a.items()}})
    s = counting_summary(cells_frame(store), chunks_frame(store), baseline="a", n_resamples=300)
    alex = alexnet_errors()
    errs = {m: {c: {sv: 1.0 - float(v[(c, sv)].mean()) for sv in range(1, 6)} for c in ("gaussian_noise", "fog")}
            for m, v in (("a", a), ("b", b))}
    mce = {m: sum(R.corruption_errors(e, alexnet=alex).values()) / 2 for m, e in errs.items()}
    assert s.table.loc["b", "mce"] == pytest.approx(mce["b"])
    d = s.differences["b"]["mce"]
    assert d.method == "paired bootstrap over 300 images"
    assert d.estimate == pytest.approx(mce["b"] - mce["a"]) and d.high < 0  # b's errors are a subset of a's
    twin = s.differences["twin"]["mce"]
    assert (twin.low, twin.estimate, twin.high) == (0.0, 0.0, 0.0)
    assert s.intervals[("a", "mce")].method == "bootstrap over 300 images"
    store.close()
