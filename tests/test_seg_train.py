"""`attnprobe train` on segmentation models: CE (ignore 255) + lambda * ADL with the batch axis kept, synthetic street
scenes, validation mIoU, resume, and a card that `attnprobe seg` evaluates with the run's protocol."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from attnprobe.errors import UserError
from attnprobe.train import AttentionRecorder, TrainConfig, resolve_task, train
from tests.conftest import REFERENCE

SEG_ARCH = "segformer_tap_fan_base_16_p4_hybrid"
# a tiny TAP-FAN-Hybrid + SegFormer: 8 x 8 tokens per 64 x 64 crop (hybrid patch 1: token stride 8)
TINY = {"embed_dim": 32, "depth": 2, "num_heads": 4, "backbone": {"depths": [1, 1], "dims": [16, 32, 64, 128]},
        "decoder_embed_dim": 32, "head_channels": 16, "hybrid_patch_size": 1}


def _cfg(out: Path, **kw) -> TrainConfig:
    base = TrainConfig(arch=SEG_ARCH, tap=4, adl_weight=0.5, train_images=16, val_images=4, batch_size=8, epochs=2,
                       lr=2e-3, warmup_epochs=0.5, threads=1, model_kwargs=dict(TINY), out=str(out))
    return replace(base, **kw)


@pytest.fixture(scope="module")
def sharp_init(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Initial weights with peaked attention (q and k scaled up), so that the ADL term is not zero from the start
    (near-uniform attention is below the tau / N threshold everywhere: ADL 0)."""
    from attnprobe import zoo

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = zoo.load_model(SEG_ARCH, pretrained=False, num_scales=4, **TINY).model
    state = {k: (v * 20 if ".attn.q." in k or ".attn.kv." in k else v) for k, v in model.state_dict().items()}
    path = tmp_path_factory.mktemp("init") / "sharp.pth"
    torch.save(state, path)
    return path


def test_task_is_resolved_from_the_architecture(tmp_path: Path) -> None:
    assert resolve_task(TrainConfig(arch=SEG_ARCH)).task == "segmentation"
    assert resolve_task(TrainConfig()).task == "classification"
    with pytest.raises(UserError, match="unknown task"):
        resolve_task(TrainConfig(task="detection"))
    with pytest.raises(UserError, match="is not a segmentation architecture"):
        train(TrainConfig(task="segmentation", train_images=8, val_images=2, batch_size=4, epochs=1,
                          out=str(tmp_path / "x")))
    with pytest.raises(UserError, match="multiple of 16"):
        train(_cfg(tmp_path / "y", img_size=40))


@pytest.mark.skipif(not (REFERENCE / "segmentation" / "seg_tap_fan_hybrid_small.pt").exists(),
                    reason="segmentation reference fixtures not found")
def test_the_training_adl_is_the_per_image_adl_of_the_fixture() -> None:
    """The maps the trainer records on a segmentation model give the official ADL with the batch axis kept
    (`adl_per_sample`), not the official training value at batch 1 (0, `.squeeze()`)."""
    import attnprobe
    from attnprobe.archs.adl import adl_loss

    ref = torch.load(REFERENCE / "segmentation" / "seg_tap_fan_hybrid_small.pt", weights_only=True)
    model = attnprobe.build_from_config(ref["config"])
    model.load_state_dict(ref["state_dict"])
    model.eval()
    with AttentionRecorder(model) as rec, torch.no_grad():
        model(ref["input"])
        maps = rec.pop()
    assert len(maps) == len(ref["attn"]) and ref["adl"].item() == 0.0
    assert abs(adl_loss(maps, tau=2.0).item() - ref["adl_per_sample"].item()) < 1e-5


def test_segmentation_training_end_to_end(tmp_path: Path, sharp_init: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from attnprobe.benchmarks.seg_protocol import SegProtocol
    from attnprobe.benchmarks.segmentation import check_segmentation_inputs, evaluate_segmentation
    from attnprobe.cli import app
    from attnprobe.data.synthetic_seg import write_cityscapes_tree
    from attnprobe.train import install_model
    from attnprobe.zoo import load_model

    args = ["train", "--arch", SEG_ARCH, "--tap", "4", "--adl-weight", "0.5", "--train-images", "16", "--val-images",
            "4", "--batch-size", "8", "--epochs", "2", "--warmup-epochs", "0.5", "--threads", "1", "--init",
            str(sharp_init), "--name", "seg_tiny", "--out", str(tmp_path / "run"), "--json"]
    for k, v in TINY.items():
        args += ["--model-arg", f"{k}={json.dumps(v)}"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.stderr
    r = json.loads(res.stdout)
    assert r["finished"] and r["val_miou"] is not None and 0 <= r["val_miou"] <= 1
    for h in r["history"]:  # loss = CE + lambda * ADL, per step, hence per epoch mean
        assert h["train_adl"] > 0 and math.isclose(h["train_loss"], h["train_ce"] + 0.5 * h["train_adl"],
                                                   rel_tol=1e-6)  # float32 per step
        assert "val_miou" in h
    card = Path(r["card"]).read_text()
    assert 'task = "segmentation"' in card and "crop_size = [64, 64]" in card and "img_scale = [128, 64]" in card
    assert "attnprobe train --arch segformer_tap_fan_base_16_p4_hybrid" in card
    models = tmp_path / "models"
    install_model(tmp_path / "run", models, subdir="demo")
    monkeypatch.setenv("ATTNPROBE_MODELS_DIR", str(models))
    loaded = load_model("seg_tiny")
    proto = SegProtocol.for_model(loaded)
    assert (proto.crop, proto.stride, proto.pipeline.scale) == ((64, 64), (48, 48), (128, 64))
    cs = write_cityscapes_tree(tmp_path / "cs", num_train=1, num_val=2)
    rep = evaluate_segmentation(loaded, None, check_segmentation_inputs("cityscapes", cs), keep=0, workers=0)
    assert rep.cells[0].n == 2 and rep.miou is not None


def test_segmentation_resume_continues_the_same_run(tmp_path: Path, sharp_init: Path) -> None:
    full = train(_cfg(tmp_path / "full", init=str(sharp_init)))
    part = train(_cfg(tmp_path / "part", init=str(sharp_init)), stop_after_steps=3)
    assert not part.finished and part.step == 3
    resumed = train(_cfg(tmp_path / "part", init=str(sharp_init)), resume=True)
    assert resumed.finished
    a, b = load_file(full.weights), load_file(resumed.weights)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.val_miou == full.val_miou


def test_init_from_an_imagenet_classifier_fills_the_backbone(tmp_path: Path) -> None:
    from attnprobe import zoo
    from attnprobe.segmentation.training import _load_init

    cls_kwargs = {k: v for k, v in TINY.items() if k not in ("decoder_embed_dim", "head_channels")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cls = zoo.load_model("tap_fan_base_16_p4_hybrid", pretrained=False, num_scales=4, **cls_kwargs).model
        seg = zoo.load_model(SEG_ARCH, pretrained=False, num_scales=4, **TINY).model
    torch.manual_seed(1)
    with torch.no_grad():
        for p in cls.parameters():
            p.normal_()
    torch.save(cls.state_dict(), tmp_path / "cls.pth")
    head_before = {k: v.clone() for k, v in seg.state_dict().items() if k.startswith("decode_head.")}
    _load_init(seg, str(tmp_path / "cls.pth"))
    own = seg.state_dict()
    shared = [k for k in cls.state_dict() if f"backbone.{k}" in own]
    assert len(shared) > 20 and all(torch.equal(own[f"backbone.{k}"], cls.state_dict()[k]) for k in shared)
    assert all(torch.equal(own[k], v) for k, v in head_before.items())  # the head starts fresh
    torch.save({"foo": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="no weight"):
        _load_init(seg, str(tmp_path / "other.pth"))


def test_bundled_segmentation_models_are_small_and_record_their_training() -> None:
    import sys

    from attnprobe.segmentation.demo import SEG_DEMO_MODELS, segmentation_demo_available

    tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
    models = Path(__file__).resolve().parents[1] / "models"
    assert segmentation_demo_available()
    for name in SEG_DEMO_MODELS:
        with open(models / f"{name}.toml", "rb") as f:
            card = tomllib.load(f)
        assert (models / card["checkpoint"]["file"]).stat().st_size <= 2 * 1024 * 1024
        assert card["task"] == "segmentation" and card["segmentation"]["crop_size"] == [64, 64]
        cmd = card["training"]["command"]
        assert cmd.startswith("attnprobe train --arch segformer_") and "--seed 0" in cmd
        assert card["results"]["val_miou"] > 0.5  # they learned the synthetic scenes
    with open(models / "demo_seg_tapadl.toml", "rb") as f:
        tapadl = tomllib.load(f)
    with open(models / "demo_seg_baseline.toml", "rb") as f:
        base = tomllib.load(f)
    assert "--adl-weight 1.0" in tapadl["training"]["command"] and tapadl["method"] == "tapadl"
    assert tapadl["results"]["val_adl"] < base["results"]["val_adl"]  # ADL lowers the overfocusing term


@pytest.mark.slow
def test_segmentation_demo_quick_fills_table4_and_fig6(tmp_path: Path) -> None:
    from attnprobe.report import build_report
    from attnprobe.segmentation.demo import run_segmentation_demo
    from attnprobe.store import ResultsStore

    with ResultsStore(tmp_path / "results") as store:
        rows = run_segmentation_demo(store, tmp_path / "results", quick=True)
        again = run_segmentation_demo(store, tmp_path / "results", quick=True)  # resumes: every cell cached
    assert rows == again and set(rows) == {"demo_seg_baseline", "demo_seg_tapadl"}
    assert all(r["cityscapes"] > 0.3 and r["acdc"] is not None for r in rows.values())
    res = build_report(tmp_path / "results", tmp_path / "report", formats=("png",))
    assert {"table4_segmentation", "tableIV_cityscapes_c", "tableV_acdc"} <= {t.name for t in res.tables}
    assert {"fig6_segmentation", "figV_acdc_masks", "figVI_cityscapes_c_masks",
            "figIV_segmentation_attention"} <= {f.name for f in res.figures}
