"""The segmentation report: Table 4, supplementary Tables IV / V with the paper's numbers, and the mask figures,
drawn by `attnprobe report` from the store alone (two stand-in segmentation models on synthetic trees)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from attnprobe.benchmarks.segmentation import check_segmentation_inputs, evaluate_segmentation
from attnprobe.data.synthetic_seg import write_acdc_tree, write_cityscapes_tree
from attnprobe.report import seg_figures as SF
from attnprobe.report.segmentation import load_segmentation, seg_paper_numbers
from attnprobe.store import ResultsStore
from tests.seg_fixtures import loaded_tiny
from tests.test_seg_benchmark import cheap_corruption

PAPER = {"cityscapes_miou": 82.9, "cityscapes_c_miou": 69.7, "acdc_miou": 63.6,
         "cityscapes_c": {"fog": 80.0, "gaussian_noise": 63.0}, "acdc": {"night": 51.0}}
RUN = {"workers": 0, "batch_size": 3, "keep": 2}


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("segreport")
    cs = write_cityscapes_tree(base / "cs", num_train=1, num_val=4)
    acdc = write_acdc_tree(base / "acdc", {"val": 2})
    out = base / "results"
    sets = [check_segmentation_inputs("cityscapes", cs),
            check_segmentation_inputs("cityscapes-c", cs, on_the_fly=True, backend=cheap_corruption),
            check_segmentation_inputs("acdc", acdc)]
    partial = check_segmentation_inputs("cityscapes-c", cs, on_the_fly=True, corruptions=["fog"], severities=[3])
    with ResultsStore(out) as store:
        for seed, name, card in ((0, "seg_base", {}), (1, "seg_tapadl", {"method": "tapadl", "paper": PAPER})):
            loaded = loaded_tiny(seed, name)
            loaded.card.update(card)
            for inputs in sets:
                evaluate_segmentation(loaded, store, inputs, limit=2 if inputs.set == "cityscapes-c" else None,
                                      **RUN)
            if seed == 0:  # another source of the same set: never mixed into the tables
                evaluate_segmentation(loaded, store, partial, **RUN)
    return out


def test_runs_use_one_source_per_set(store_dir: Path) -> None:
    with ResultsStore(store_dir, readonly=True) as store:
        runs, notes = load_segmentation(store)
    assert set(runs) == {"seg_base", "seg_tapadl"}
    base = runs["seg_base"]
    assert len(base.corrupt) == 72 and base.c_summary["complete"] and base.sources["cityscapes_c"].cells == 72
    assert base.sources["cityscapes_c"].limit == 2 and "(--limit 2 subset)" in base.sources["cityscapes_c"].describe()
    assert any("seg_base cityscapes_c: results on 2 datasets" in n for n in notes)
    assert set(base.acdc) == {"fog", "night", "rain", "snow"} and base.clean is not None
    assert seg_paper_numbers({"paper": PAPER})["c:fog"] == pytest.approx(0.8)


def test_report_tables_and_figures(store_dir: Path, tmp_path: Path) -> None:
    from attnprobe.report import build_report

    res = build_report(store_dir, tmp_path / "report", formats=("png",))
    names = {t.name for t in res.tables}
    assert {"table4_segmentation", "tableIV_cityscapes_c", "tableV_acdc"} <= names
    assert "table2_summary" not in names  # segmentation runs are not empty rows of the classification tables
    t4 = pd.read_csv(tmp_path / "report" / "tables" / "table4_segmentation.csv", index_col=0)
    with ResultsStore(store_dir, readonly=True) as store:
        runs, _ = load_segmentation(store)
    for key, label in (("seg_base", "seg_base"), ("seg_tapadl", "seg_tapadl")):
        row = t4.loc[label]
        r = runs[key]
        assert row["cityscapes"] == pytest.approx(100 * r.clean["miou"], rel=1e-5)
        assert row["cityscapes_c"] == pytest.approx(100 * r.c_summary["average"], rel=1e-5)
        assert row["acdc"] == pytest.approx(100 * np.mean(list(r.acdc.values())), rel=1e-5)
    assert t4.loc["seg_tapadl (paper)", "cityscapes"] == pytest.approx(82.9)
    md = (tmp_path / "report" / "tables" / "table4_segmentation.md").read_text()
    assert "images per cell, 72 cells (--limit 2 subset)" in md and "test-server" in md and "(paper)" in md
    t_iv = (tmp_path / "report" / "tables" / "tableIV_cityscapes_c.tex").read_text()
    assert "Blur" in t_iv and "Weather" in t_iv
    t_v = pd.read_csv(tmp_path / "report" / "tables" / "tableV_acdc.csv", index_col=0)
    assert t_v.loc["seg_tapadl (paper)", "acdc:night"] == pytest.approx(51.0)
    assert math.isnan(t_v.loc["seg_tapadl (paper)", "acdc:fog"])
    cells = pd.read_csv(tmp_path / "report" / "tables" / "segmentation_cells.csv")
    assert len(cells) == 2 * (1 + 72 + 4) + 1 and {"miou", "iou_road", "source"} <= set(cells.columns)
    figs = {f.name: f for f in res.figures}
    assert {"fig6_segmentation", "figV_acdc_masks", "figVI_cityscapes_c_masks"} <= set(figs)
    assert all(p.exists() for f in figs.values() for p in f.files)
    assert "seg_base" in figs["fig6_segmentation"].caption and "red boxes" in figs["fig6_segmentation"].caption
    html = (tmp_path / "report" / "index.html").read_text()
    assert "Table 4 layout" in html and "fig6_segmentation.png" in html


def test_figure_rows_pair_the_same_images(store_dir: Path) -> None:
    with ResultsStore(store_dir, readonly=True) as store:
        kept = SF.kept_predictions(store)
    rows = SF.pair_examples(kept, "seg_base", "seg_tapadl")
    assert rows and all(r.pred_a.shape == r.label.shape == r.pred_b.shape for r in rows)
    assert len({(r.task, r.condition, r.severity, r.image) for r in rows}) == len(rows)
    assert any(not np.array_equal(r.pred_a, r.pred_b) for r in rows)


def test_difference_boxes_and_palette() -> None:
    a = np.zeros((64, 128), np.uint8)
    b = a.copy()
    b[10:30, 20:60] = 13  # a car where the other model sees road
    b[50:52, 100:102] = 2  # a speck: below the size threshold
    boxes = SF.difference_boxes(a, b)
    assert len(boxes) == 1
    y0, y1, x0, x1 = boxes[0]
    assert y0 <= 10 and y1 >= 30 and x0 <= 20 and x1 >= 60 and (y1 - y0) < 40
    assert SF.difference_boxes(a, a) == []
    rgb = SF.colorize(np.array([[0, 13, 255]], np.uint8))
    assert rgb[0].tolist() == [[128, 64, 128], [0, 0, 142], [0, 0, 0]]
