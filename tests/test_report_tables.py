"""Tables: right rows and columns, the paper's rounding, Markdown / LaTeX / CSV output, summary numbers."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from attnprobe import robustness as R
from attnprobe.errors import UserError
from attnprobe.protocol import alexnet_errors, benchmark_corruptions
from attnprobe.report import tables as T
from attnprobe.report.bootstrap import Interval
from attnprobe.report.loaders import cells_frame, chunks_frame, paper_numbers
from attnprobe.report.summary import counting_summary
from attnprobe.report.synthetic import make_synthetic_store

# Table 2 of the TAP/ADL paper (FAN-B-Hybrid rows), as fractions
FAN = {"clean": 0.839, "mce": 0.461, "mfr": 0.313, "imagenet_a": 0.396, "imagenet_r": 0.527}
TAPADL = {"clean": 0.843, "mce": 0.437, "mfr": 0.292, "imagenet_a": 0.423, "imagenet_r": 0.546}


def _summary() -> pd.DataFrame:
    return pd.DataFrame([FAN, TAPADL], index=["fan_b", "fan_b_tapadl"])


def test_summary_table_reproduces_paper_layout() -> None:
    t = T.summary_table(_summary(), labels={"fan_b": "FAN-B-Hybrid", "fan_b_tapadl": "+ TAP & ADL"},
                        baseline="fan_b")
    assert list(t.display.index) == ["FAN-B-Hybrid", "+ TAP & ADL"]
    assert list(t.display.columns) == ["Clean acc. ↑", "IN-C mCE ↓", "IN-P mFR ↓", "IN-A ↑", "IN-R ↑"]
    assert list(t.display.loc["FAN-B-Hybrid"]) == ["83.9", "46.1", "31.3", "39.6", "52.7"]
    # the paper's row: 84.3 (+0.4) 43.7 (-2.4) 29.2 (-2.1) 42.3 (+2.7) 54.6 (+1.9)
    assert list(t.display.loc["+ TAP & ADL"]) == ["84.3 (+0.4)", "43.7 (-2.4)", "29.2 (-2.1)", "42.3 (+2.7)",
                                                  "54.6 (+1.9)"]
    assert t.numeric.loc["+ TAP & ADL", "mce_delta"] == pytest.approx(-2.4)
    assert t.numeric.loc["FAN-B-Hybrid", "clean"] == pytest.approx(83.9)
    assert any("against FAN-B-Hybrid" in n for n in t.notes)


def test_summary_table_intervals_paper_rows_and_partial() -> None:
    s = _summary()
    s["mce_partial"] = [False, True]
    iv = {("fan_b", "clean"): Interval(0.839, 0.837, 0.841)}
    paper = {"fan_b_tapadl": {"clean": 0.843, "mce": 0.437}}
    t = T.summary_table(s, baseline="fan_b", intervals=iv, paper=paper)
    assert t.display.loc["fan_b", "Clean acc. ↑"] == "83.9 ± 0.2"
    # a partial mean CE is starred, never compared with a complete mCE, and explained in a note
    assert t.display.loc["fan_b_tapadl", "IN-C mCE ↓"] == "43.7*"
    assert any("not an mCE" in n for n in t.notes)
    assert list(t.display.index) == ["fan_b", "fan_b_tapadl", "fan_b_tapadl (paper)"]
    assert t.display.loc["fan_b_tapadl (paper)", "Clean acc. ↑"] == "84.3"
    assert t.display.loc["fan_b_tapadl (paper)", "IN-R ↑"] == "–"


def test_missing_columns_are_left_out() -> None:
    s = pd.DataFrame({"clean": [0.8, 0.81], "pgd": [math.nan, math.nan]}, index=["a", "b"])
    t = T.summary_table(s)
    assert list(t.display.columns) == ["Clean acc. ↑"]


def _errors(scale: float) -> dict[str, dict[int, float]]:
    alex = alexnet_errors()
    return {c: {s: min(0.99, alex[c] * scale * (0.8 + 0.1 * s)) for s in range(1, 6)} for c in benchmark_corruptions()}


def test_ce_table_rounding_and_groups(tmp_path: Path) -> None:
    rows = {"fan_b": _errors(0.46), "partial": {"gaussian_noise": _errors(0.4)["gaussian_noise"]}}
    ce = R.ce_table(rows, percent=True)
    t = T.ce_table(ce, paper={"fan_b": {"mce": 0.461, "ce:gaussian_noise": 0.4012}})
    assert list(t.display.columns)[:4] == ["mCE", "Gaussian", "Shot", "Impulse"]
    assert len(t.display.columns) == 16
    assert t.display.loc["fan_b", "mCE"] == f"{R.mce(rows['fan_b']) * 100:.1f}"
    assert t.display.loc["fan_b", "Gaussian"] == f"{ce.loc['fan_b', ('Noise', 'Gaussian')]:.2f}"
    assert t.display.loc["partial", "mCE"] == "partial (1/15)"
    assert t.display.loc["partial", "Shot"] == "–"
    assert t.display.loc["fan_b (paper)", "Gaussian"] == "40.12"
    assert t.groups == [("", 1), ("Noise", 3), ("Blur", 4), ("Weather", 4), ("Digital", 4)]
    files = T.write_table(t, tmp_path)
    tex = (tmp_path / "table3_corruption_errors.tex").read_text()
    assert r"\multicolumn{3}{c}{Noise}" in tex and r"\cmidrule(lr){2-4}" not in tex
    assert r"\cmidrule(lr){3-5}" in tex and r"\toprule" in tex and r"\bottomrule" in tex
    md = (tmp_path / "table3_corruption_errors.md").read_text().splitlines()
    assert md[2].startswith("| Model | mCE | Gaussian")
    assert md[3] == "|:---|" + "---:|" * 16
    csv = pd.read_csv(tmp_path / "table3_corruption_errors.csv", index_col=0)
    assert list(csv.columns)[:2] == ["mce", "gaussian_noise"]
    assert csv.loc["fan_b", "mce"] == pytest.approx(R.mce(rows["fan_b"]) * 100, abs=1e-4)
    assert math.isnan(csv.loc["partial", "mce"])
    assert [p.suffix for p in files] == [".md", ".tex", ".csv"]


def test_latex_escaping() -> None:
    assert T.latex_escape("fan_b 43.7 ± 0.2 & 5%") == r"fan\_b 43.7 $\pm$ 0.2 \& 5\%"


def test_paper_numbers_from_card() -> None:
    p = paper_numbers({"paper": {"clean_acc": 84.3, "mce": 43.7, "imagenet_a": 0.423, "ce": {"fog": 35.27}}})
    assert p == pytest.approx({"clean": 0.843, "mce": 0.437, "imagenet_a": 0.423, "ce:fog": 0.3527})
    assert paper_numbers({}) == {}


@pytest.fixture(scope="module")
def small_store(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("store")
    store = make_synthetic_store(root, n_images=4, n_samples=200, chunk_size=100, map_images=0)
    yield store
    store.close()


def test_counting_summary_matches_robustness_formulas(small_store) -> None:
    cells = cells_frame(small_store)
    s = counting_summary(cells, chunks_frame(small_store), baseline="fan_b", n_resamples=100)
    assert set(s.table.index) == {"fan_b", "fan_b_tap", "fan_b_adl", "fan_b_tapadl"}
    for key in s.table.index:
        assert s.table.loc[key, "mce"] == pytest.approx(R.mce(s.errors[key]))
        assert not s.table.loc[key, "mce_partial"]
        clean = cells[(cells["key"] == key) & (cells["task"] == "clean")].iloc[0]
        assert s.table.loc[key, "clean"] == pytest.approx(clean["correct"] / clean["n"])
        assert 0 < s.table.loc[key, "mfr"] < 2
    # 2 chunks per cell: too few for a chunk bootstrap, so the normal approximation is used and said
    assert any("normal approximation" in n for n in s.notes)
    d = s.differences["fan_b_tapadl"]["mce"]
    assert d.estimate == pytest.approx(s.table.loc["fan_b_tapadl", "mce"] - s.table.loc["fan_b", "mce"])
    assert d.low < d.estimate < d.high


def test_counting_summary_model_reference_and_partial(small_store) -> None:
    cells = cells_frame(small_store)
    s = counting_summary(cells, None, ce_reference="fan_b")
    assert s.table.loc["fan_b", "mce"] == pytest.approx(1.0)  # a model normalised by itself
    assert any("not AlexNet" in n for n in s.notes)
    with pytest.raises(UserError, match="--ce-reference 'nope'"):
        counting_summary(cells, None, ce_reference="nope")
    part = cells[~((cells["task"] == "imagenet_c") & (cells["condition"] != "fog"))]
    s2 = counting_summary(part, None)
    assert s2.table["mce_partial"].all()
    assert s2.ce is not None and s2.ce.attrs["partial_rows"]
    t = T.ce_table(s2.ce)
    assert all(v == "partial (1/15)" for v in t.display["mCE"])
    with pytest.raises(UserError, match="--baseline 'ghost'"):
        counting_summary(cells, None, baseline="ghost")


def test_diagnostics_frame_averages_heads_in_sql(small_store) -> None:
    from attnprobe.report.loaders import diagnostic_values, diagnostics_frame

    per_head = diagnostics_frame(small_store, "attention_cosine", per_head=True)
    avg = diagnostics_frame(small_store, "attention_cosine")
    assert len(per_head) == 4 * len(avg)  # 4 heads
    expect = per_head.groupby(["key", "condition", "image", "layer"])["value"].mean()
    got = avg.set_index(["key", "condition", "image", "layer"])["value"]
    assert got.sort_index().to_numpy() == pytest.approx(expect.sort_index().to_numpy())
    vals = diagnostic_values(small_store, "attention_cosine", "gaussian_noise", 3, max_values=10)
    assert set(vals) == {"fan_b", "fan_b_tap", "fan_b_adl", "fan_b_tapadl"} and all(v.size == 10 for v in vals.values())
