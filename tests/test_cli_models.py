"""`attnprobe models` / `attnprobe info`, and the one-line error for a checkpoint of another architecture."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from typer.testing import CliRunner

from attnprobe import zoo
from attnprobe.cli import app
from tests.conftest import TINY_VIT_KWARGS

runner = CliRunner()


def test_models_lists_zoo_with_params_and_weights() -> None:
    result = runner.invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)["models"]}
    assert rows["fan_b_tapadl"]["params"] == 50_735_528  # = official manifest num_params
    assert rows["fan_b_tapadl"]["weights"] in ("by URL", "local (cached)")
    assert rows["fan_b_tap"]["weights"].startswith("none")
    assert rows["deit_b"]["weights"] == "timm hub"


def test_info_finds_token_and_class_attention() -> None:
    result = runner.invoke(app, ["info", "fan_t", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    kinds = [layer["kind"] for layer in info["attention_layers"]]
    assert kinds.count("token") == 8 and kinds.count("class") == 2
    assert info["checkpoint_sha256"] == zoo.RANDOM_INIT


def test_wrong_checkpoint_is_one_line_nonzero(tmp_path: Path) -> None:
    path = tmp_path / "vit.pth"
    torch.save(zoo.create_model("vit_tiny_patch16_224", pretrained=False, **TINY_VIT_KWARGS).state_dict(), path)
    result = runner.invoke(app, ["info", "fan_t", "--ckpt", str(path)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "does not fit architecture 'fan_tiny_8_p4_hybrid'" in lines[0]
    assert "Traceback" not in result.output


def test_missing_checkpoint_file_is_one_line() -> None:
    result = runner.invoke(app, ["info", "fan_t", "--ckpt", "/nonexistent/x.pth"])
    assert result.exit_code == 2 and "checkpoint not found" in result.output
