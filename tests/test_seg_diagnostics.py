"""Diagnostics on segmentation models: `stability`, `overfocus`, `heads`, `attention` run on one window of a tiny
TAP-FAN-Hybrid + SegFormer (1024 tokens here), one image per pass, kept maps pooled; supplementary Fig. IV."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from attnprobe.cli import app
from attnprobe.diagnostics.reducer import pool_map
from tests.seg_fixtures import write_fan_card

runner = CliRunner()


def test_pool_map_keeps_rows_stochastic_and_block_sums() -> None:
    g = torch.Generator().manual_seed(0)
    attn = torch.softmax(torch.randn(2, 3, 16, 16, generator=g), dim=-1)  # (B, H, N, N) on a 4 x 4 grid
    pooled, f = pool_map(attn, max_tokens=4)
    assert f == 2 and pooled.shape == (2, 3, 4, 4)
    torch.testing.assert_close(pooled.sum(-1), torch.ones(2, 3, 4))
    grid = attn.reshape(2, 3, 4, 4, 4, 4)  # (B, H, qy, qx, ky, kx)
    want = grid[:, :, 0:2, 2:4, 2:4, 0:2].mean(dim=(2, 3)).sum(dim=(2, 3))  # query block (0, 1), key block (1, 0)
    torch.testing.assert_close(pooled[:, :, 1, 2], want)
    same, f1 = pool_map(attn, max_tokens=16)
    assert f1 == 1 and same is attn
    odd = torch.softmax(torch.randn(1, 1, 15, 15, generator=g), -1)
    assert pool_map(odd, max_tokens=4)[1] == 1  # not a square grid: left as it is


@pytest.fixture()
def seg_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    models = tmp_path / "models"
    card = write_fan_card(models, "fan_seg_tiny")
    # NOTE: a 512 x 512 window: 32 x 32 = 1024 tokens (the official 1024 x 1024 window has 4096)
    card.write_text(card.read_text() + "\n[preprocessing]\ninput_size = 512\ninterpolation = \"bilinear\"\n"
                    "crop_pct = 1.0\nmean = [0.485, 0.456, 0.406]\nstd = [0.229, 0.224, 0.225]\n")
    monkeypatch.setenv("ATTNPROBE_MODELS_DIR", str(models))
    return tmp_path


def run(*args: str) -> tuple[int, str, str]:
    res = runner.invoke(app, list(args))
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.stdout, res.stderr


def test_diagnostics_accept_a_segmentation_model(seg_env: Path) -> None:
    out = str(seg_env / "out")
    common = ["--model", "fan_seg_tiny", "--ckpt", "-", "--n", "2", "--out", out, "--json", "--quiet"]
    code, stdout, err = run("stability", *common, "--corruption", "gaussian_noise", "--severity", "3",
                            "--keep-maps", "1")
    assert code == 0, err
    r = json.loads(stdout)["results"][0]
    assert len(r["layers"]) == 2 and all(lay["n_images"] == 2 for lay in r["layers"])
    assert r["layers"][0]["keys"] == 1024 and 0 < r["mean_cosine"] <= 1
    for cmd in ("heads", "overfocus"):
        code, stdout, err = run(cmd, *common)
        assert code == 0, err
        assert json.loads(stdout)["results"]
    from attnprobe.diagnostics import load_maps
    from attnprobe.store import ResultsStore

    with ResultsStore(out, readonly=True) as store:
        arts = store.artifacts(kind="attention_maps")
    assert {a["condition"] for a in arts} == {"clean", "gaussian_noise"}
    maps = load_maps(arts[0]["abspath"])
    assert maps["meta"]["token_pool"] == 2 and maps["meta"]["grid"] == [16, 16]
    assert maps["attn"][0].shape == (4, 256, 256) and maps["image"].shape == (512, 512, 3)
    np.testing.assert_allclose(maps["attn"][-1].sum(-1), 1.0, atol=2e-2)  # float16 rows still sum to 1


def test_report_draws_segmentation_attention_apart(seg_env: Path) -> None:
    from attnprobe.report import build_report

    out = str(seg_env / "out")
    code, _, err = run("attention", "--model", "fan_seg_tiny", "--ckpt", "-", "--n", "1", "--corruption",
                       "gaussian_noise", "--out", out, "--quiet")
    assert code == 0, err
    res = build_report(out, seg_env / "report", formats=("png",))
    names = {f.name for f in res.figures}
    assert "figIV_segmentation_attention" in names
    assert not names & {"fig1_attention_maps", "fig3_attention_grid"}  # not mixed into the classification figures
    fig = next(f for f in res.figures if f.name == "figIV_segmentation_attention")
    assert "4-token blocks" in fig.caption and all(p.exists() for p in fig.files)
