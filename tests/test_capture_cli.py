"""The diagnostics commands on real timm architectures (random weights, `--ckpt -`): every kind of attention map goes
through `heads`, `overfocus`, `stability` and `attention` without a traceback; a model without token attention gets
exit code 2 and one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from attnprobe.cli import app

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def run_json(*args: str) -> dict:
    code, out, err = invoke(*args, "--json", "--quiet")
    assert code == 0, err
    return json.loads(out)


def test_every_command_on_spatial_reduction_attention(tmp_path: Path) -> None:
    """PVT-v2: keys reduced 8x / 4x / 2x per side in stages 1-3 (N_q != N_k), one head in stage 1."""
    common = ["--model", "pvt_v2_b0", "--ckpt", "-", "--n", "1", "--out", str(tmp_path)]
    stab = run_json("stability", *common, "--severity", "2")["results"][0]
    assert len(stab["layers"]) == 8  # every map of PVT-v2-b0, not only the 2 square ones of its last stage
    assert [lay["kind"] for lay in stab["layers"]] == ["reduced"] * 6 + ["token"] * 2
    assert [(lay["queries"], lay["keys"]) for lay in stab["layers"][::2]] == [(3136, 49), (784, 49), (196, 49),
                                                                             (49, 49)]
    assert all(-1e-6 <= lay["mean_cosine"] <= 1 + 1e-6 for lay in stab["layers"])
    heads = run_json("heads", *common)["results"][0]
    assert [lay["layer"] for lay in heads["layers"]] == [2, 3, 4, 5, 6, 7]  # stage 1 has a single head
    assert heads["notes"] == ["head similarity is undefined for single-head attention and left out (layers 0-1)"]
    over = run_json("overfocus", *common)["results"][0]
    assert len(over["layers"]) == 8 and all(lay["row_similarity"] is not None for lay in over["layers"])
    arts = run_json("attention", *common)["results"][0]["artifacts"]
    from attnprobe.diagnostics import load_maps

    saved = load_maps(arts[0]["path"])
    assert saved["meta"]["kinds"] == ["reduced"] * 6 + ["token"] * 2
    assert saved["attn"][0].shape == (1, 3136, 49)  # (heads, 56 x 56 queries, keys reduced to 7 x 7)


def test_twins_locally_grouped_windows(tmp_path: Path) -> None:
    """The issue's example: `attnprobe heads --model twins_svt_small` ended in a traceback (5-D window maps)."""
    code, out, err = invoke("heads", "--model", "twins_svt_small", "--ckpt", "-", "--n", "1", "--out", str(tmp_path))
    assert code == 0, err
    assert "Traceback" not in out + err and "mean" in out
    layers = run_json("stability", "--model", "twins_svt_small", "--ckpt", "-", "--n", "1", "--out",
                      str(tmp_path))["results"][0]["layers"]
    assert [lay["kind"] for lay in layers[:2]] == ["window", "reduced"]  # LSA and GSA alternate
    assert layers[0]["windows"] == 64 and (layers[0]["queries"], layers[0]["keys"]) == (49, 49)


@pytest.mark.parametrize("name", ["levit_128s", "efficientvit_m0", "crossvit_tiny_240"])
def test_heads_and_overfocus_on_more_families(name: str, tmp_path: Path) -> None:
    for command in ("heads", "overfocus"):
        code, out, err = invoke(command, "--model", name, "--ckpt", "-", "--n", "1", "--out", str(tmp_path))
        assert code == 0, err
        assert "Traceback" not in out + err and "mean" in out


def test_table_text_and_notes_for_single_head_layers(tmp_path: Path) -> None:
    code, out, err = invoke("heads", "--model", "shvit_s1", "--ckpt", "-", "--n", "1", "--out", str(tmp_path))
    assert code == 0, err
    assert "head similarity is undefined for single-head attention and left out (layers 0-8)" in out


@pytest.mark.parametrize("name, why", [("resnet18", "no attention layer"), ("convnext_atto", "no attention layer"),
                                       ("xcit_nano_12_p16_224", "has no token attention, only 2 class-attention")])
def test_model_without_token_attention_is_one_line(name: str, why: str, tmp_path: Path) -> None:
    for command in ("heads", "stability"):
        code, out, err = invoke(command, "--model", name, "--ckpt", "-", "--n", "1", "--out", str(tmp_path))
        assert code == 2 and out == ""
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and why in lines[0] and "Traceback" not in err
