"""CLI: `attnprobe mfr`, `attnprobe ood`, `attnprobe pgd` on tiny data with a tiny zoo model (no downloads)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from attnprobe import protocol
from attnprobe.cli import app
from attnprobe.store import CellKey, ResultsStore
from tests.imagenet_c_fixtures import make_class_tree, make_models_dir, save_tiny_checkpoint
from tests.test_imagenet_p import make_p_tree


@pytest.fixture()
def zoo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ATTNPROBE_MODELS_DIR", str(make_models_dir(tmp_path / "models")))
    return tmp_path


def _run(*args: str) -> object:
    return CliRunner().invoke(app, list(args))


def _json(result: object) -> dict:
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    return json.loads(result.stdout)  # type: ignore[attr-defined]


def test_mfr_released_tree_json_and_resume(zoo: Path) -> None:
    make_p_tree(zoo / "p", ("rotate", "gaussian_noise"), per_class=1)
    out = zoo / "out"
    args = ["mfr", "--model", "tiny_vit", "--data", str(zoo / "p"), "-p", "rotate", "-p", "gaussian_noise",
            "--out", str(out), "--workers", "0", "--batch-size", "16", "--json"]
    payload = _json(_run(*args))
    [row] = payload["results"]
    assert row["model"] == "tiny_vit" and row["source"] == "released" and row["difficulty"] == 1
    assert row["mfr"] is None  # only 2 of the 10 test perturbations
    per = {p["perturbation"]: p for p in row["perturbations"]}
    assert set(per) == {"rotate", "gaussian_noise"} and per["rotate"]["videos"] == 3
    assert 0.0 <= per["rotate"]["flip_probability"] <= 1.0 and not per["rotate"]["cached"]
    assert any("unnormalised" in n for n in row["notes"])
    again = _json(_run(*args))
    assert all(p["cached"] for p in again["results"][0]["perturbations"])
    with ResultsStore(out, readonly=True) as store:
        assert {c["condition"] for c in store.cells(task="imagenet_p")} == {"rotate", "gaussian_noise"}


def test_mfr_two_models_and_text_output(zoo: Path) -> None:
    make_p_tree(zoo / "p", ("rotate",), per_class=1)
    a = save_tiny_checkpoint(zoo / "a.pth", seed=1)
    b = save_tiny_checkpoint(zoo / "b.pth", seed=2)
    res = _run("mfr", "-m", "tiny_vit", "-m", "tiny_vit", "--ckpt", str(a), "--ckpt", str(b), "--data",
               str(zoo / "p"), "-p", "rotate", "--difficulty", "2", "--out", str(zoo / "out"), "--workers", "0")
    assert res.exit_code == 0, res.output
    assert res.stdout.count("tiny_vit") >= 2 and "difficulty 2" in res.stdout and "results store" in res.stdout


def test_mfr_errors_are_one_line(zoo: Path) -> None:
    make_p_tree(zoo / "p", ("rotate",), per_class=1)
    cases = [
        (["mfr", "--data", str(zoo / "p")], "no model given"),
        (["mfr", "-m", "tiny_vit", "-p", "rotate"], "either --data"),
        (["mfr", "-m", "tiny_vit", "--data", str(zoo / "p"), "-p", "rotation"], "unknown ImageNet-P perturbation"),
        (["mfr", "-m", "tiny_vit", "--data", str(zoo / "p"), "-p", "gaussian_noise"], "missing"),
        (["mfr", "-m", "tiny_vit", "--clean", str(zoo / "p")], "--clean needs --on-the-fly"),
        (["mfr", "-m", "tiny_vit", "--on-the-fly"], "--on-the-fly needs --clean"),
        (["mfr", "-m", "tiny_vit", "-m", "tiny_vit", "--ckpt", str(zoo / "x.pth"), "--data", str(zoo / "p")],
         "--ckpt"),
        (["mfr", "-m", "no_such_model_xyz", "--data", str(zoo / "p"), "-p", "rotate", "--workers", "0"],
         "unknown model"),
    ]
    for args, needle in cases:
        res = CliRunner().invoke(app, args + ["--out", str(zoo / "out")])
        assert res.exit_code == 2, (args, res.output)
        assert needle in res.output, (args, res.output)
        assert "Traceback" not in res.output


def test_mfr_on_the_fly_is_labelled_regenerated(zoo: Path) -> None:
    val = zoo / "val"
    rng = np.random.default_rng(0)
    for w in ("n01440764", "n01443537"):
        (val / w).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(val / w / "a.png")
    # the tiny model takes 32-px inputs; regenerated frames are 224 px, so use a timm model that accepts any size
    (zoo / "models" / "tiny_cnn.toml").write_text(
        'name = "tiny_cnn"\narch = "test_resnet"\nfamily = "timm"\n[preprocessing]\ninput_size = 224\n'
        'crop_pct = 1.0\ninterpolation = "bilinear"\n')
    payload = _json(_run("mfr", "-m", "tiny_cnn", "--ckpt", "-", "--clean", str(val), "--on-the-fly", "-p",
                         "brightness", "--limit", "1", "--out", str(zoo / "out"), "--workers", "0", "--json"))
    [row] = payload["results"]
    assert row["source"] == "regenerated" and row["perturbations"][0]["regenerated"]
    assert any("regenerated" in n for n in row["notes"])


def test_ood_cli(zoo: Path) -> None:
    wnids = protocol.load("imagenet_r_indices")["wnids"]
    make_class_tree(zoo / "r", wnids=(wnids[0], wnids[1]), per_class=2)
    payload = _json(_run("ood", "-m", "tiny_vit", "--set", "r", "--data", str(zoo / "r"), "--out", str(zoo / "out"),
                         "--workers", "0", "--json"))
    [row] = payload["results"]
    assert row["set"] == "imagenet_r" and row["n"] == 4 and 0.0 <= row["accuracy"] <= 1.0
    text = _run("ood", "-m", "tiny_vit", "--set", "r", "--data", str(zoo / "r"), "--out", str(zoo / "out"),
                "--workers", "0")
    assert text.exit_code == 0 and "ImageNet-R top-1 accuracy" in text.stdout
    bad = _run("ood", "-m", "tiny_vit", "--set", "a", "--data", str(zoo / "r"), "--out", str(zoo / "out"))
    assert bad.exit_code == 2 and "not one of the 200 ImageNet-A classes" in bad.output


def test_pgd_cli(zoo: Path) -> None:
    make_class_tree(zoo / "val", per_class=2)
    payload = _json(_run("pgd", "-m", "tiny_vit", "--data", str(zoo / "val"), "--limit", "4", "--out",
                         str(zoo / "out"), "--workers", "0", "--json"))
    [row] = payload["results"]
    assert row["n"] == 4 and row["steps"] == 5 and row["eps_255"] == pytest.approx(1.0)
    assert 0.0 <= row["robust_accuracy"] <= 1.0
    with ResultsStore(zoo / "out", readonly=True) as store:
        [cell] = store.cells(task="pgd")
        assert cell["condition"] == "pgd5"
        key = CellKey(*(cell[c] for c in ("model", "checkpoint_sha256", "task", "dataset", "preprocessing",
                                          "condition", "severity")))
        bits = store.sample_correctness(key)  # per-image robust correctness, for paired intervals in the report
        assert bits is not None and len(bits) == 4 and int(bits.sum()) == cell["correct"]
    missing = _run("pgd", "-m", "tiny_vit", "--data", str(zoo / "nope"), "--out", str(zoo / "out"))
    assert missing.exit_code == 2 and "does not exist" in missing.output
