"""Checkpoint reading: file formats, wrapper dicts, prefixes, strict loading and its one-line error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from attnprobe import checkpoints
from attnprobe.errors import CheckpointMismatchError, UserError


def _model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))


@pytest.mark.parametrize("suffix", [".pth", ".pth.tar", ".bin", ".safetensors"])
@pytest.mark.parametrize("wrapper", [None, "state_dict", "model"])
def test_formats_and_wrappers_roundtrip(tmp_path: Path, suffix: str, wrapper: str | None) -> None:
    src = _model()
    state = {f"module.{k}": v for k, v in src.state_dict().items()}  # as saved by DistributedDataParallel
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        if wrapper:
            pytest.skip("safetensors files hold a flat tensor dict")
        save_file(state, str(path))
    else:
        torch.save({wrapper: state, "epoch": 3} if wrapper else state, path)
    dst = _model()
    checkpoints.load_weights(dst, checkpoints.read_state_dict(path), arch="toy")
    for a, b in zip(src.state_dict().values(), dst.state_dict().values()):
        assert torch.equal(a, b)


def test_ema_only_when_asked(tmp_path: Path) -> None:
    plain, ema = _model(), _model()
    path = tmp_path / "train.pth.tar"
    torch.save({"state_dict": plain.state_dict(), "state_dict_ema": ema.state_dict()}, path)
    w = checkpoints.read_state_dict(path)
    assert torch.equal(w["0.weight"], plain.state_dict()["0.weight"])
    w = checkpoints.read_state_dict(path, use_ema=True)
    assert torch.equal(w["0.weight"], ema.state_dict()["0.weight"])
    torch.save({"state_dict": plain.state_dict()}, path)
    with pytest.raises(UserError, match="no EMA weights"):
        checkpoints.read_state_dict(path, use_ema=True)


def test_training_checkpoint_with_pickled_objects(tmp_path: Path) -> None:
    import argparse

    path = tmp_path / "ckpt.pth.tar"
    torch.save({"state_dict": _model().state_dict(), "args": argparse.Namespace(lr=1.0)}, path)
    assert "0.weight" in checkpoints.read_state_dict(path)


def test_mismatch_error_counts_and_names_keys(tmp_path: Path) -> None:
    state = _model().state_dict()
    state.pop("1.bias")
    state["extra.weight"] = torch.zeros(1)
    state["0.weight"] = torch.zeros(5, 4)
    with pytest.raises(CheckpointMismatchError) as e:
        checkpoints.load_weights(_model(), state, arch="toy_arch", source="x.pth")
    msg = str(e.value)
    assert "\n" not in msg
    assert "'toy_arch'" in msg and "1 missing (1.bias)" in msg and "1 unexpected (extra.weight)" in msg
    assert "1 mis-shaped (0.weight (5, 4)≠(3, 4))" in msg


def test_unreadable_and_missing_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read checkpoint"):
        checkpoints.read_state_dict(bad)
    with pytest.raises(UserError, match="checkpoint not found"):
        checkpoints.read_state_dict(tmp_path / "nope.pth")


def test_offline_download_says_to_pass_ckpt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTNPROBE_CACHE", str(tmp_path))
    with pytest.raises(UserError, match="--ckpt PATH"):
        checkpoints.fetch_checkpoint("http://127.0.0.1:9/tapadl_fan_base.pth.tar", timeout=2)
    assert not list(tmp_path.iterdir())  # no half-written file left behind


def test_download_verifies_sha256(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    payload = tmp_path / "src" / "w.pth"
    payload.parent.mkdir()
    torch.save(_model().state_dict(), payload)
    good = hashlib.sha256(payload.read_bytes()).hexdigest()
    monkeypatch.setenv("ATTNPROBE_CACHE", str(tmp_path / "cache"))
    got = checkpoints.fetch_checkpoint(payload.as_uri(), sha256=good)
    assert checkpoints.file_sha256(got) == good
    (tmp_path / "cache" / "w.pth").unlink()
    with pytest.raises(UserError, match="checksum mismatch"):
        checkpoints.fetch_checkpoint(payload.as_uri(), sha256="0" * 64)
