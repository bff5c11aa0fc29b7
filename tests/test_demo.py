"""`attnprobe train` and `attnprobe demo` from the command line; the demo end to end in its reduced mode."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from attnprobe.cli import app
from attnprobe.demo import DEMO_MODELS, SWEEP_MODELS, SyntheticRecord, synthetic_image_set

runner = CliRunner()
MODELS = Path(__file__).resolve().parents[1] / "models"


def _json(stdout: str) -> dict:
    return json.loads(stdout)


def test_train_cli_writes_weights_card_and_json(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train", "--epochs", "1", "--train-images", "64", "--val-images", "16", "--batch-size", "32",
            "--tap", "2", "--adl-weight", "0.5", "--threads", "1", "--out", str(out), "--json"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    payload = _json(res.stdout)
    assert payload["finished"] and payload["name"] == "demo_vit_tapadl"
    assert Path(payload["weights"]).is_file() and Path(payload["card"]).is_file()
    card = Path(payload["card"]).read_text()
    assert "--adl-weight 0.5" in card and "seed = 0" in card
    # Running the same command again without --resume would overwrite the run: refused with one line.
    again = runner.invoke(app, args[:-1])
    assert again.exit_code == 2 and "--resume" in again.stderr and "Traceback" not in again.output
    resumed = runner.invoke(app, args + ["--resume"])
    assert resumed.exit_code == 0 and _json(resumed.stdout)["val_accuracy"] == payload["val_accuracy"]


@pytest.mark.parametrize("extra, message", [(["--epochs", "0"], "--epochs"), (["--adl-tau", "0"], "--adl-tau"),
                                            (["--arch", "nope"], "unknown architecture")])
def test_train_cli_bad_options(tmp_path: Path, extra: list[str], message: str) -> None:
    res = runner.invoke(app, ["train", "--out", str(tmp_path / "r"), *extra])
    assert res.exit_code == 2 and message in res.stderr


def test_synthetic_records_render_the_set() -> None:
    from attnprobe.data.synthetic import render_image

    images = synthetic_image_set(3, seed=0)
    assert images.ids == ["val/000000", "val/000001", "val/000002"] and len(images) == 3
    rec = images.records[2]
    assert isinstance(rec, SyntheticRecord)
    np.testing.assert_array_equal(np.asarray(rec.load()), render_image(0, "val", 2)[0])


def test_demo_without_bundled_models_says_how_to_get_them(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ATTNPROBE_MODELS_DIR", str(tmp_path))
    res = runner.invoke(app, ["demo", "--quick", "--out", str(tmp_path / "demo")])
    assert res.exit_code == 2 and "make_demo_models.sh" in res.stderr


def test_bundled_demo_models_are_small_and_reproducible() -> None:
    tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")

    for name in DEMO_MODELS + tuple(m for m in SWEEP_MODELS if (MODELS / f"{m}.toml").exists()):
        with open(MODELS / f"{name}.toml", "rb") as f:
            card = tomllib.load(f)
        weights = MODELS / card["checkpoint"]["file"]
        assert weights.is_file() and weights.stat().st_size <= 5 * 1024 * 1024
        assert card["training"]["command"].startswith("attnprobe train ") and "seed" in card["training"]
        assert card["arch"] == "attnprobe_demo_vit_tiny" and card["preprocessing"]["input_size"] == 64


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    res = runner.invoke(app, ["demo", "--quick", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    payload = _json(res.stdout)
    summary = payload["summary"]
    assert list(summary["models"]) == list(DEMO_MODELS)
    base = summary["models"]["demo_vit_baseline"]
    assert base["mce_vs_baseline"] == pytest.approx(1.0)  # CE normalised by the demo baseline
    for r in summary["models"].values():
        assert 0.0 <= r["clean_accuracy"] <= 1.0
        assert -1.0 <= r["stability_gaussian_noise_s3"] <= 1.0 and not math.isnan(r["row_similarity"])
    # The store, the report page, the key figures and tables.
    assert (out / "results" / "results.sqlite").is_file()
    page = (out / "index.html").read_text()
    assert "What the demo models show" in page and "normalised by" in page
    figures = {Path(p).stem for p in payload["figures"]}
    assert {"fig1_attention_maps", "fig5_stability", "imagenet_c_heatmap", "fig4_heads"} <= figures
    tables = {Path(p).stem for p in payload["tables"]}
    assert {"table2_summary", "table3_corruption_errors", "attention_stability"} <= tables
    assert "table4_segmentation" in tables and "fig6_segmentation" in figures  # the bundled segmentation models
    assert (out / "summary.md").read_text().count("| Demo ViT") == 4


def test_train_cli_rejects_malformed_model_args(tmp_path: Path) -> None:
    res = runner.invoke(app, ["train", "--out", str(tmp_path / "r"), "--model-arg", "depth"])
    assert res.exit_code == 2 and "KEY=VALUE" in res.stderr


def _strict_json(text: str) -> dict:
    """Parse refusing NaN and Infinity, as jq, JavaScript and most JSON readers do."""
    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_train_cli_resume_reuses_the_stored_settings_and_json_is_strict(tmp_path: Path) -> None:
    from attnprobe.train import TrainConfig, train

    out = tmp_path / "run"
    cfg = TrainConfig(train_images=64, val_images=16, batch_size=32, epochs=2, lr=3e-3, seed=3, threads=1,
                      out=str(out), model_kwargs={"embed_dim": 16, "depth": 1, "num_heads": 2})
    stopped = train(cfg, stop_after_steps=3)  # killed in epoch 2
    assert not stopped.finished
    # the README's form: only --out and --resume; every setting (2 epochs, lr, seed, the model) comes from the run
    res = runner.invoke(app, ["train", "--out", str(out), "--resume", "--json"])
    assert res.exit_code == 0, res.output
    payload = _strict_json(res.stdout)
    assert payload["finished"] and payload["epoch"] == 2 and len(payload["history"]) == 2
    assert payload["train_adl"] is None and payload["history"][0]["train_adl"] is None  # no ADL: null, not NaN
    assert (out / "log.jsonl").read_text().count("NaN") == 0
    for line in (out / "log.jsonl").read_text().splitlines():
        _strict_json(line)
    assert "--seed 3" in Path(payload["card"]).read_text()  # the card records the original command
    # options given again must agree with the run; session options (threads) may change
    same = runner.invoke(app, ["train", "--out", str(out), "--resume", "--epochs", "2", "--seed", "3",
                               "--threads", "1", "--json"])
    assert same.exit_code == 0 and _strict_json(same.stdout)["val_accuracy"] == payload["val_accuracy"]
    other = runner.invoke(app, ["train", "--out", str(out), "--resume", "--epochs", "5"])
    assert other.exit_code == 2 and "--epochs 5 differs" in other.stderr and "--epochs 2" in other.stderr
