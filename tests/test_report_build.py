"""`attnprobe report` and the plot commands: everything from the store, no model, clear errors."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from attnprobe.cli import app
from attnprobe.report import build_report
from attnprobe.report.synthetic import make_synthetic_store

runner = CliRunner()


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("results")
    make_synthetic_store(root, n_images=5, n_samples=100, chunk_size=50, layers=3, heads=3, grid=5,
                         hparam_sweep=True).close()
    return root


@pytest.fixture(scope="module")
def report(store_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    import attnprobe.zoo as zoo

    def no_model(*a, **k):  # the report must never load a model
        raise AssertionError("report loaded a model")

    mp = pytest.MonkeyPatch()
    mp.setattr(zoo, "load_model", no_model)
    mp.setattr(zoo, "create_model", no_model)
    digest = hashlib.sha256((store_dir / "results.sqlite").read_bytes()).hexdigest()
    # PDF and SVG output are checked in test_report_figures and the CLI test; PNG keeps this fixture quick
    res = build_report(store_dir, tmp_path_factory.mktemp("report"), n_resamples=50, formats=("png",))
    mp.undo()
    # opened read-only: the store file is untouched
    assert hashlib.sha256((store_dir / "results.sqlite").read_bytes()).hexdigest() == digest
    return res


def test_report_writes_every_figure_and_table(report) -> None:
    figs = {f.name for f in report.figures}
    assert figs == {"imagenet_c_heatmap", "fig5_stability", "figI_layer_curves", "fig1_attention_maps",
                    "fig3_attention_grid", "fig4_heads", "figI_layer_maps", "fig7_k", "fig7_lambda"}
    for f in report.figures:
        assert ".png" in {p.suffix for p in f.files}
        assert all(p.exists() and p.stat().st_size > 0 for p in f.files)
    tabs = {t.name for t in report.tables}
    assert tabs == {"table2_summary", "table3_corruption_errors", "differences_vs_baseline", "attention_stability",
                    "layer_diagnostics"}
    for t in report.tables:
        assert sorted(p.suffix for p in t.files) == [".csv", ".md", ".tex"]


def test_index_html_links_and_captions(report) -> None:
    html = report.index.read_text()
    for f in report.figures:
        png = next(p for p in f.files if p.suffix == ".png")
        rel = png.relative_to(report.out_dir).as_posix()
        assert f'src="{rel}"' in html  # relative links: the folder can be moved or zipped
    assert "file://" not in html and str(report.out_dir) not in html.split("Results store:")[0]
    sha = hashlib.sha256(b"fan_b_tapadl").hexdigest()
    assert sha[:12] in html  # checkpoint named in the captions
    assert "synthetic-val-0001" in html  # dataset fingerprint in the captions
    assert "Cosine similarity between each head" in html
    assert "(paper)" in html and "<table" in html


def test_stability_table_has_paired_intervals(report) -> None:
    md = (report.out_dir / "tables" / "attention_stability.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| fan_b_tapadl |")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert re.fullmatch(r"0\.\d\d ± 0\.\d\d", cells[1]) and cells[2].startswith("+")
    assert "paired over images" in md


def test_report_cli_json_and_no_model(store_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import attnprobe.zoo as zoo

    monkeypatch.setattr(zoo, "load_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("model loaded")))
    r = runner.invoke(app, ["report", str(store_dir), "--out", str(tmp_path / "r"), "--format", "svg",
                            "--model", "fan_b", "--model", "fan_b_tapadl", "--ce-reference", "fan_b",
                            "--n-bootstrap", "20", "--json"])
    assert r.exit_code == 0, r.output
    payload = json.loads(r.stdout)
    assert {f["name"] for f in payload["figures"]} >= {"fig1_attention_maps", "fig5_stability"}
    assert all(p.endswith((".svg", ".csv")) for f in payload["figures"] for p in f["files"])
    assert any("not by AlexNet" in n for n in payload["notes"])
    md = (tmp_path / "r" / "tables" / "table3_corruption_errors.md").read_text()
    assert "normalised by fan_b" in md


@pytest.mark.parametrize("args, message", [
    (["--baseline", "ghost"], "--baseline 'ghost' is not in the results store"),
    (["--format", "png,gif"], "unknown figure format"),
    (["--ce-reference", "nobody"], "--ce-reference 'nobody'"),
    (["--model", "nobody"], "not in the results store"),
    (["--corruption", "snow"], "no attention-stability values"),
])
def test_report_cli_user_errors(store_dir: Path, tmp_path: Path, args: list[str], message: str) -> None:
    r = runner.invoke(app, ["report", str(store_dir), "--out", str(tmp_path / "r"), "--n-bootstrap", "10", *args])
    assert r.exit_code == 2
    assert message in " ".join(r.output.split())
    assert "Traceback" not in r.output


def test_report_cli_missing_store(tmp_path: Path) -> None:
    r = runner.invoke(app, ["report", str(tmp_path / "nothing"), "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and "no results store" in r.output


def test_report_out_must_differ_from_store(store_dir: Path) -> None:
    r = runner.invoke(app, ["report", str(store_dir), "--out", str(store_dir)])
    assert r.exit_code == 2 and "--out must not be the results directory" in " ".join(r.output.split())


def test_plot_commands_draw_from_the_store(store_dir: Path, tmp_path: Path) -> None:
    for cmd, names in (("plot-stability", {"fig5_stability", "figI_layer_curves"}),
                       ("plot-maps", {"fig1_attention_maps", "fig3_attention_grid", "figI_layer_maps"}),
                       ("plot-heads", {"fig4_heads"})):
        r = runner.invoke(app, [cmd, str(store_dir), "--out", str(tmp_path / cmd), "--format", "png", "--json",
                                "--model", "fan_b", "--model", "fan_b_tapadl"])
        assert r.exit_code == 0, r.output
        payload = json.loads(r.stdout)
        assert payload["computed"] == []
        assert {f["name"] for f in payload["figures"]} == names
        assert all(Path(p).stat().st_size > 0 for f in payload["figures"] for p in f["files"])


def test_plot_command_without_data_says_what_to_run(tmp_path: Path) -> None:
    r = runner.invoke(app, ["plot-maps", str(tmp_path / "empty")])
    assert r.exit_code == 2
    text = " ".join(r.output.split())
    assert "no attention maps" in text and "attnprobe attention" in text and "--model" in text
    r = runner.invoke(app, ["plot-maps", str(tmp_path / "empty"), "--image", "x", "--model", "m", "--ckpt", "a",
                            "--ckpt", "b"])
    assert r.exit_code == 2 and "--ckpt" in r.output


@pytest.mark.slow
def test_plot_heads_computes_missing_maps_with_a_tiny_model(tmp_path: Path) -> None:
    out = tmp_path / "res"
    r = runner.invoke(app, ["plot-heads", str(out), "--model", "test_vit", "--ckpt", "-", "--n", "1", "--format",
                            "png", "--json", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    payload = json.loads(r.stdout)
    assert payload["computed"] == ["test_vit"]
    [fig] = payload["figures"]
    assert Path(fig["files"][0]).stat().st_size > 0
    assert (out / "results.sqlite").exists()
    # a second call finds the maps in the store and computes nothing
    r = runner.invoke(app, ["plot-heads", str(out), "--model", "test_vit", "--format", "png", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["computed"] == []
