"""`attnprobe.train`: loss and ADL go down, resume continues the same run exactly, cards load in the zoo."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from attnprobe.errors import UserError
from attnprobe.train import AttentionRecorder, TrainConfig, default_run_name, train

# A model and data set small enough for a few seconds of CPU per run.
TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0}


def _cfg(out: Path, **kw) -> TrainConfig:
    base = TrainConfig(train_images=160, val_images=40, batch_size=32, epochs=2, lr=3e-3, warmup_epochs=0.2,
                       threads=1, model_kwargs=dict(TINY), out=str(out))
    return replace(base, **kw)


def _weights(result) -> dict[str, torch.Tensor]:
    return load_file(result.weights)


def test_default_run_names() -> None:
    assert default_run_name("attnprobe_demo_vit_tiny", None, 0.0) == "demo_vit_baseline"
    assert default_run_name("attnprobe_demo_vit_tiny", 4, 0.0) == "demo_vit_tap"
    assert default_run_name("attnprobe_demo_vit_tiny", 1, 1.0) == "demo_vit_adl"
    assert default_run_name("attnprobe_demo_vit_tiny", 4, 1.0) == "demo_vit_tapadl"


def test_recorder_keeps_differentiable_maps_and_restores_state() -> None:
    import timm

    import attnprobe.archs  # noqa: F401  (registers the demo arch)

    model = timm.create_model("attnprobe_demo_vit_tiny", num_scales=3, **TINY).eval()  # no stochastic depth
    x = torch.randn(2, 3, 64, 64)
    with AttentionRecorder(model) as rec:
        out = model(x)
        maps = rec.pop()
        assert len(maps) == 2 and maps[0].shape == (2, 2, 64, 64)
        torch.testing.assert_close(maps[0].sum(-1), torch.ones(2, 2, 64))  # post-softmax rows
        maps[1].sum().backward()  # the maps carry gradients to the weights
        assert model.blocks[0].attn.qkv.weight.grad is not None
        assert all(not m.fused_attn for m in rec.modules)
    assert all(m.fused_attn for m in rec.modules)
    assert not any(m.attn_drop._forward_pre_hooks for m in rec.modules)
    with torch.no_grad():
        torch.testing.assert_close(model(x), out.detach())  # fused and explicit paths agree


def test_training_lowers_the_loss_and_adl_lowers_the_adl_term(tmp_path: Path) -> None:
    # NOTE: tau = 0.5 keeps every entry of a near-uniform map (1/N > 0.5/N), so the rows of a fresh model are all
    # alike and ADL starts near 1; with the default tau = 2 a few steps leave every entry below 2/N and ADL at 0.
    kw = {"epochs": 3, "batch_size": 16, "adl_tau": 0.5}
    base = train(_cfg(tmp_path / "base", **kw))
    adl = train(_cfg(tmp_path / "adl", adl_weight=1.0, **kw))
    assert base.finished and adl.finished
    first, last = base.history[0], base.history[-1]
    assert last["train_loss"] < first["train_loss"] - 0.05
    assert math.isnan(first["train_adl"]) and base.val_adl > 0.95  # measured, not trained
    # With lambda > 0 the ADL term falls during training, and ends below the baseline's (same seed, same data).
    assert adl.history[0]["train_adl"] > 0.95
    assert adl.history[-1]["train_adl"] < adl.history[0]["train_adl"] - 0.1
    assert adl.val_adl < base.val_adl - 0.1
    assert adl.train_loss > adl.train_ce  # loss = CE + lambda * ADL


def test_resume_continues_the_same_run(tmp_path: Path) -> None:
    full = train(_cfg(tmp_path / "full", adl_weight=0.5, tap=3))
    steps_per_epoch = 160 // 32
    part = train(_cfg(tmp_path / "part", adl_weight=0.5, tap=3), stop_after_steps=steps_per_epoch)
    assert not part.finished and part.epoch == 1 and part.weights is None
    resumed = train(_cfg(tmp_path / "part", adl_weight=0.5, tap=3), resume=True)
    assert resumed.finished and len(resumed.history) == 2
    a, b = _weights(full), _weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    # Mid-epoch interruption with step checkpoints resumes exactly too.
    mid = train(_cfg(tmp_path / "mid", adl_weight=0.5, tap=3, save_every=2), stop_after_steps=steps_per_epoch + 2)
    assert not mid.finished
    mid = train(_cfg(tmp_path / "mid", adl_weight=0.5, tap=3, save_every=2), resume=True)
    c = _weights(mid)
    for k in a:
        torch.testing.assert_close(a[k], c[k], rtol=0, atol=0, msg=k)
    for h_full, h_mid in zip(full.history, mid.history):  # the logs agree too, including the interrupted epoch
        for k in ("train_loss", "train_adl", "val_loss", "val_accuracy"):
            assert h_mid[k] == pytest.approx(h_full[k], rel=1e-9), k
    # A finished run is returned as is.
    again = train(_cfg(tmp_path / "full", adl_weight=0.5, tap=3), resume=True)
    assert again.finished and again.val_accuracy == full.val_accuracy


def test_runs_are_never_overwritten_or_resumed_with_other_settings(tmp_path: Path) -> None:
    train(_cfg(tmp_path / "r", epochs=1))
    with pytest.raises(UserError, match="--resume"):
        train(_cfg(tmp_path / "r", epochs=1))
    with pytest.raises(UserError, match="different settings"):
        train(_cfg(tmp_path / "r", epochs=1, lr=1e-3), resume=True)


def test_bad_options_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="epochs"):
        train(_cfg(tmp_path / "x", epochs=0))
    with pytest.raises(UserError, match="adl-weight"):
        train(_cfg(tmp_path / "x", adl_weight=-1.0))
    with pytest.raises(UserError, match="unknown architecture"):
        train(_cfg(tmp_path / "x", arch="no_such_arch"))
    with pytest.raises(UserError, match="data folder not found"):
        train(_cfg(tmp_path / "x", data=str(tmp_path / "missing")))
    with pytest.raises(UserError, match="fewer than one batch"):
        train(_cfg(tmp_path / "x", batch_size=1000))


def test_card_loads_in_the_zoo_and_image_folder_data(tmp_path: Path, monkeypatch) -> None:
    from attnprobe.data.synthetic import SyntheticShapes, write_image_folder

    write_image_folder(SyntheticShapes("train", num_images=70), tmp_path / "data" / "train")
    write_image_folder(SyntheticShapes("val", num_images=20), tmp_path / "data" / "val")
    res = train(_cfg(tmp_path / "run", data=str(tmp_path / "data"), epochs=1, tap=2, adl_weight=0.1,
                     command="attnprobe train --tap 2"))
    assert res.finished and Path(res.card).is_file()
    text = Path(res.card).read_text()
    assert 'arch = "attnprobe_demo_vit_tiny"' in text and 'command = "attnprobe train --tap 2"' in text

    from attnprobe import zoo

    monkeypatch.setenv("ATTNPROBE_MODELS_DIR", str(tmp_path / "run"))
    lm = zoo.load_model(res.name, pretrained=True)
    assert lm.checkpoint_sha256 != zoo.RANDOM_INIT
    assert lm.preprocessing.input_size == 64 and lm.preprocessing.crop_pct == 1.0
    assert lm.card["hparams"]["num_scales"] == 2 and lm.card["hparams"]["adl_weight"] == 0.1
    assert len(lm.card["data"]["classes"]) == 10
    ref = _weights(res)
    for k, v in lm.model.state_dict().items():
        torch.testing.assert_close(v, ref[k])


def test_other_architectures_train_with_tap_and_adl(tmp_path: Path) -> None:
    # A FAN-style model (token attention + channel attention) from attnprobe.archs, shrunk to a few seconds.
    with pytest.raises(UserError, match="tap_fan_tiny_12_p16_224"):  # plain FAN has no TAP: refused, not ignored
        train(_cfg(tmp_path / "plain", arch="fan_tiny_12_p16_224", tap=3, model_kwargs={"depth": 1}))
    cfg = _cfg(tmp_path / "fan", arch="tap_fan_tiny_12_p16_224", tap=3, adl_weight=1.0, adl_tau=0.5, epochs=1,
               model_kwargs={"embed_dim": 32, "depth": 2, "num_heads": 2})
    res = train(cfg)
    assert res.finished and res.train_adl > 0  # ADL saw FAN's token attention
    text = Path(res.card).read_text()
    assert "--arch tap_fan_tiny_12_p16_224" in text and "--model-arg depth=2" in text
    state = _weights(res)
    assert any(k.endswith("dilation_predictor.proj.0.weight") for k in state)  # TAP modules were built
