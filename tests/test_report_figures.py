"""Every figure function renders from small stored results and writes a non-empty file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from attnprobe.report import figures as F
from attnprobe.report.build import load_report_data
from attnprobe.report.loaders import attention_map_refs, load_attention_pair, read_attention_npz
from attnprobe.report.style import DPI, FULL_WIDTH, ModelStyles, method_kind, save_figure
from attnprobe.report.summary import counting_summary
from attnprobe.report.synthetic import make_synthetic_store
from attnprobe.store import ResultsStore


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("figstore")
    make_synthetic_store(root, n_images=5, n_samples=100, chunk_size=100, layers=3, heads=3, grid=5,
                         corruptions=["gaussian_noise", "fog"]).close()
    with ResultsStore(root, readonly=True) as store:
        yield load_report_data(store)


def _check_png(paths: list[Path], max_width_in: float = 2 * FULL_WIDTH) -> None:
    png = next(p for p in paths if p.suffix == ".png")
    assert png.stat().st_size > 2000
    with Image.open(png) as im:
        w, h = im.size
    assert 100 < w <= max_width_in * DPI and h > 100


def _colorbars(fig) -> list:
    return [ax for ax in fig.axes if hasattr(ax, "_colorbar")]


def _maps_axes(fig) -> list:
    return [ax for ax in fig.axes if not hasattr(ax, "_colorbar")]


def _load_first_image(data) -> list:
    refs = [r for r in data.maps if r.corrupted_path and r.image == data.maps[0].image]
    return [load_attention_pair(r) for r in refs]


def test_fig1_attention_maps(data, tmp_path: Path) -> None:
    maps = _load_first_image(data)
    assert len(maps) == 4 and maps[0].maps_clean.shape == (3, 3, 25, 25)
    fig = F.fig1_attention_maps(maps, data.styles)
    assert len(_maps_axes(fig)) == 2 * 5  # clean / corrupted rows; input + 4 models
    bars = _colorbars(fig)  # one per model: each model's maps have their own scale
    assert len(bars) == 4 and all(b.get_position().y1 < min(a.get_position().y0 for a in _maps_axes(fig))
                                  for b in bars)
    paths = save_figure(fig, tmp_path / "fig1", ("png", "pdf", "svg"))
    assert all(p.stat().st_size > 0 for p in paths)
    _check_png(paths)


def test_fig_stability_distribution(data, tmp_path: Path) -> None:
    cos = data.diagnostics["attention_cosine"]
    fig = F.fig_stability_distribution(cos, data.styles, "gaussian_noise", 3, n_resamples=50)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [data.styles.label(k) for k in data.keys]
    _check_png(save_figure(fig, tmp_path / "fig5", ("png",)))
    with pytest.raises(ValueError, match="no attention-cosine values"):
        F.fig_stability_distribution(cos, data.styles, "snow", 1)


def test_fig3_grid(data, tmp_path: Path) -> None:
    maps = [load_attention_pair(r) for r in data.maps if r.corrupted_path]
    fig = F.fig3_attention_grid(maps, data.styles)
    images = {m.image for m in maps}
    assert len(_maps_axes(fig)) == len(images) * 2 * 5 and len(_colorbars(fig)) == 4
    # one scale per model over all its images: the bar's top is the top of every map of that model
    tops = {round(im.get_clim()[1], 9) for ax in _maps_axes(fig) for im in ax.get_images()
            if im.get_cmap().name == F.MAP_CMAP}
    assert tops <= {round(b._colorbar.norm.vmax, 9) for b in _colorbars(fig)}
    _check_png(save_figure(fig, tmp_path / "fig3", ("png",)))


def test_fig4_heads_with_and_without_stored_similarity(data, tmp_path: Path) -> None:
    maps = _load_first_image(data)
    fig = F.fig4_heads(maps, data.styles, head_similarity={maps[0].key: 0.63})
    titles = [t.get_text() for t in fig.texts]
    assert any("head similarity 0.63 (mean over images)" in t for t in titles)
    assert any("(this image)" in t for t in titles)  # the others are computed from the drawn maps
    assert len(_colorbars(fig)) == 4  # one per model row
    _check_png(save_figure(fig, tmp_path / "fig4", ("png",)))


def test_head_cosine_known_values() -> None:
    same = np.ones((3, 4, 4)) / 4
    assert F.head_cosine(same) == pytest.approx(1.0)
    eye = np.stack([np.eye(4), np.roll(np.eye(4), 1, axis=1)])  # disjoint supports
    assert F.head_cosine(eye) == pytest.approx(0.0)


def test_figI_maps_and_curves(data, tmp_path: Path) -> None:
    maps = _load_first_image(data)
    fig = F.figI_layer_maps(maps, data.styles)
    assert len(_maps_axes(fig)) == 8 * 3 and len(_colorbars(fig)) == 4  # 4 models x 2 rows x 3 layers; a bar each
    _check_png(save_figure(fig, tmp_path / "figI_maps", ("png",)))
    fig = F.figI_layer_curves(data.diagnostics, data.styles, n_resamples=50)
    assert len(fig.axes) == 2
    lines = fig.axes[1].get_lines()
    assert len(lines) == 4 and list(lines[0].get_xdata()) == [1, 2, 3]  # layers counted from 1
    _check_png(save_figure(fig, tmp_path / "figI_curves", ("png",)))
    # a model with stability values but no overfocusing values is drawn on the right only, and still in the legend
    frames = dict(data.diagnostics)
    over = frames["topk_column_mass"]
    frames["topk_column_mass"] = over[over["key"] != "fan_b_tapadl"]
    fig = F.figI_layer_curves(frames, data.styles, n_resamples=20)
    legend = fig.legends[0]
    assert sorted(t.get_text() for t in legend.get_texts()) == sorted(data.styles.label(k) for k in data.keys)
    fig.canvas.draw()
    top = max(ax.get_window_extent().y1 for ax in fig.axes)
    assert legend.get_window_extent().y0 >= top - 1  # above the panels, never over the data


def test_fig7_hyperparameter(data, tmp_path: Path) -> None:
    pts = pd.DataFrame({"key": ["a", "b", "c", "d"], "value": [0.01, 0.1, 1.0, 10.0],
                        "metric": [0.45, 0.445, 0.44, 0.47], "low": [0.44, 0.44, 0.435, 0.465],
                        "high": [0.46, 0.45, 0.445, 0.475]})
    fig = F.fig7_hyperparameter(pts, "lambda", "mCE (%)", baseline=0.461)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "ADL weight λ"
    assert ax.lines[0].get_ydata()[2] == pytest.approx(44.0)
    _check_png(save_figure(fig, tmp_path / "fig7", ("png",)))
    # every run, the method line and the baseline are in the legend, which lies outside the axes
    styles = ModelStyles(["base", "a", "b", "c", "d"], baseline="base")
    fig = F.fig7_hyperparameter(pts.assign(group="ADL"), "lambda", "mCE (%)", styles, baseline=0.461,
                                baseline_label="base")
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert set(labels) == {"ADL", "base", "a", "b", "c", "d"}
    fig.canvas.draw()
    assert ax.get_legend().get_window_extent().x0 >= ax.get_window_extent().x1
    markers = {c.get_label(): c.lines[0].get_color() for c in ax.containers}
    assert markers == {k: styles.color(k) for k in "abcd"}  # each run in its own colour
    assert F.hparam_value({"hparams": {"num_scales": 4}}, "K") == 4.0
    assert F.hparam_value({"adl_tau": 2}, "tau") == 2.0
    assert F.hparam_value({}, "K") is None


def test_corruption_heatmap(data, tmp_path: Path) -> None:
    errors = counting_summary(data.cells, None).errors
    errors["fan_b"].pop("fog")  # a missing corruption is drawn grey, not dropped
    fig = F.fig_corruption_heatmap(errors, data.styles)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["Gaussian", "Fog"]
    row = np.ma.filled(ax.images[0].get_array()[1].astype(float), np.nan)
    assert np.isnan(row).all()
    _check_png(save_figure(fig, tmp_path / "heat", ("png",)))


def test_styles_are_stable_and_baseline_grey() -> None:
    s = ModelStyles(["fan_b_tapadl", "fan_b", "fan_b_adl", "fan_b_tap", "rvt_b"], baseline="fan_b")
    assert s.models[0] == "fan_b" and s.color("fan_b") == "#7a7a7a"
    assert s.models[:4] == ["fan_b", "fan_b_tap", "fan_b_adl", "fan_b_tapadl"]
    assert len({s.color(m) for m in s.models}) == 5
    again = ModelStyles(["rvt_b", "fan_b", "fan_b_tap", "fan_b_adl", "fan_b_tapadl"], baseline="fan_b")
    assert all(again.color(m) == s.color(m) for m in s.models)
    # a model keeps its colour whatever else the report holds (colours come from its own name and card)
    cards = {"fan_b_tap": {"hparams": {"num_scales": 4}}, "fan_b_tap_k2": {"hparams": {"num_scales": 2}}}
    alone = ModelStyles(["fan_b", "fan_b_tap_k2"], cards, baseline="fan_b")
    many = ModelStyles(["fan_b", "fan_b_tap", "fan_b_tap_k2", "fan_b_adl", "rvt_b", "deit_b"], cards,
                       baseline="fan_b")
    assert alone.color("fan_b_tap_k2") == many.color("fan_b_tap_k2") != many.color("fan_b_tap")
    assert many.color("fan_b_tap") == "#0072B2"  # TAP at the paper's K = 4: the TAP colour
    assert len({many.color(m) for m in many.models}) == 6
    assert ModelStyles(["x", "y"], {"y": {"color": "#123456"}}, baseline="x").color("y") == "#123456"
    assert method_kind("tap_fan_base_16_p4_hybrid") == "tap"
    assert method_kind("x", {"method": "TAP & ADL"}) == "tapadl"
    assert F.wrap_label("fan_b_adl_lam0.01", 0.4) == "fan_b_\nadl_\nlam0.01"
    assert F.wrap_label("FAN-B-Hybrid + TAP & ADL", 1.2) == "FAN-B-Hybrid\n+ TAP & ADL"
    titled = ModelStyles(["fan_b", "fan_b@0123abcd"], {"fan_b": {"title": "FAN-B-Hybrid"}})
    assert titled.label("fan_b") == "FAN-B-Hybrid" and titled.label("fan_b@0123abcd") == "fan_b @0123abcd"


def test_attention_files_pair_clean_and_corrupted_and_drop_prefix_tokens(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    rng = np.random.default_rng(0)
    for cond, sev in (("clean", 0), ("fog", 2)):
        attn = rng.random((2, 2, 50, 50)).astype(np.float16)
        meta = {"num_prefix_tokens": 1, "condition": cond}
        p = tmp_path / "maps" / f"{cond}.npz"
        p.parent.mkdir(exist_ok=True)
        np.savez_compressed(p, image=np.zeros((8, 8, 3), np.uint8), attn=attn, meta=np.array(json.dumps(meta)))
        store.add_artifact("vit", "abc", "attention_maps", "ds", cond, sev, "im1", p, meta=meta)
    refs = attention_map_refs(store)
    assert len(refs) == 1 and refs[0].condition == "fog" and refs[0].clean_path.endswith("clean.npz")
    m = load_attention_pair(refs[0])
    assert m.maps_clean.shape == (2, 2, 49, 49) and m.maps_corrupted.shape == (2, 2, 49, 49)
    assert m.prefix_tokens == 1
    assert read_attention_npz(refs[0].corrupted_path)["attn"].dtype == np.float32
    store.close()
