"""Segmentation models beyond the fixtures: full-size manifests, zoo cards and loading, checkpoint errors, the slide
inference against an independent transcription of the official loop, and the public API names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

import attnprobe
from attnprobe import zoo
from attnprobe.archs.registry import count_params, state_dict_shapes
from attnprobe.errors import UserError
from attnprobe.segmentation.inference import infer, slide_windows
from attnprobe.segmentation.model import EncoderDecoder, build_segmentor_from_config

REF = Path(__file__).resolve().parents[2] / "shared" / "reference" / "segmentation"
MANIFESTS = {
    "segformer_tap_fan_base_16_p4_hybrid": "tapadl_fan_base_segmentation (tap_fan_base_16_p4_hybrid + SegFormerHead)",
    "segformer_fan_base_16_p4_hybrid": "fan_base_hybrid_segmentation (fan_base_16_p4_hybrid + SegFormerHead)",
}
# constructor overrides that shrink the zoo's FAN-B segmentation models to a few thousand parameters
TINY = dict(embed_dim=32, depth=2, num_heads=4, backbone={"depths": [1, 1], "dims": [16, 32, 64, 128]},
            decoder_embed_dim=32, head_channels=16)
TINY_CLS = {k: v for k, v in TINY.items() if k not in ("decoder_embed_dim", "head_channels")}


def _manifest(name: str) -> dict:
    path = REF / "seg_state_dict_manifests.json"
    if not path.exists():
        pytest.skip(f"{path} not available")
    return json.loads(path.read_text())[MANIFESTS[name]]


def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=gen) * 0.3 + (1.0 if t.ndim == 1 and t.numel() < 5 else 0.0))
        for name, t in model.state_dict().items():
            if name.endswith("running_var"):
                t.uniform_(0.5, 1.5, generator=gen)
    return model.eval()


# -- full-size models: the official state dicts -------------------------------------------------------------------
@pytest.mark.parametrize("arch", list(MANIFESTS))
def test_full_size_state_dict_matches_the_official_manifest(arch: str) -> None:
    entry = _manifest(arch)
    with torch.device("meta"):
        model = timm.create_model(arch, **({"num_scales": 4} if "tap_" in arch else {}))
    ours = state_dict_shapes(model)
    theirs = {k: list(v) for k, v in entry["state_dict"].items()}
    assert sorted(set(theirs) - set(ours)) == [] and sorted(set(ours) - set(theirs)) == []
    assert {k: ours[k] for k in theirs if ours[k] != theirs[k]} == {}
    assert count_params(model) == entry["num_params"]
    assert count_params(model.backbone) == entry["num_params_backbone"]
    assert count_params(model.decode_head) == entry["num_params_decode_head"]
    assert sorted(name for name, _ in model.named_buffers()) == sorted(entry["buffers"])
    facts = entry["backbone_facts"]
    channels = [model.backbone.feature_info[i]["num_chs"] for i in model.feature_indices]
    strides = [model.backbone.feature_info[i]["reduction"] for i in model.feature_indices]
    assert channels == facts["feature_channels"] and strides == facts["feature_strides"]
    assert model.feature_indices[2] == model.backbone.num_stem_features + facts["out_idx"]


def test_segmentation_backbone_keys_are_the_classifier_keys_without_head_and_norm() -> None:
    with torch.device("meta"):
        seg = timm.create_model("segformer_tap_fan_base_16_p4_hybrid", num_scales=4)
        cls = timm.create_model("tap_fan_base_16_p4_hybrid", num_scales=4)
    backbone = {k.removeprefix("backbone."): v for k, v in state_dict_shapes(seg).items() if k.startswith("backbone.")}
    classifier = state_dict_shapes(cls)
    assert sorted(set(classifier) - set(backbone)) == ["head.bias", "head.weight", "norm.bias", "norm.weight"]
    assert {k: classifier[k] for k in backbone} == backbone


# -- zoo cards and loading ----------------------------------------------------------------------------------------
def test_segmentation_cards() -> None:
    cards = zoo.list_cards()
    tapadl, base = cards["fan_b_tapadl_seg"], cards["fan_b_seg"]
    assert tapadl["checkpoint"]["url"] == \
        "https://github.com/guoyongcs/TAPADL/releases/download/v1.0/tapadl_fan_base_segmentation.pth"
    assert tapadl["kwargs"]["num_scales"] == 4 and not base["checkpoint"]
    for card in (tapadl, base):
        seg = card["segmentation"]
        assert card["task"] == "segmentation"
        assert (seg["mode"], seg["crop_size"], seg["stride"], seg["img_scale"]) == ("slide", [1024] * 2, [768] * 2,
                                                                                  [2048, 1024])
        assert seg["mean"] == [123.675, 116.28, 103.53] and seg["num_classes"] == 19 and seg["ignore_index"] == 255
    assert (tapadl["paper"]["cityscapes_miou"], tapadl["paper"]["cityscapes_c_miou"]) == (82.9, 69.7)
    assert (base["paper"]["cityscapes_miou"], base["paper"]["acdc_miou"]) == (82.2, 60.6)
    per_corruption = tapadl["paper"]["cityscapes_c"]
    assert len(per_corruption) == 16 and abs(sum(per_corruption.values()) / 16 - 69.7) < 0.1


def test_create_model_loads_an_mmseg_checkpoint_strictly(tmp_path: Path) -> None:
    src = _randomize(attnprobe.create_model("fan_b_tapadl_seg", pretrained=False, **TINY))
    assert isinstance(src, EncoderDecoder) and src.test_cfg["crop_size"] == (1024, 1024)
    path = tmp_path / "tapadl_fan_base_segmentation.pth"
    meta = {"CLASSES": ("road", "sidewalk"), "PALETTE": [[128, 64, 128], [244, 35, 232]], "mmcv_version": "1.7.0"}
    torch.save({"meta": meta, "state_dict": src.state_dict()}, path)
    model = attnprobe.create_model("fan_b_tapadl_seg", checkpoint=path, **TINY)
    loaded = zoo.load_model("fan_b_tapadl_seg", checkpoint=str(path), **TINY)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = src(x)
        torch.testing.assert_close(model(x), expected, atol=0, rtol=0)
        torch.testing.assert_close(loaded.model(x), expected, atol=0, rtol=0)
    assert not loaded.model.training and loaded.arch == "segformer_tap_fan_base_16_p4_hybrid"
    assert loaded.checkpoint_path == str(path) and len(loaded.checkpoint_sha256) == 64


def test_pretrained_downloads_the_card_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from attnprobe import checkpoints

    src = _randomize(attnprobe.create_model("fan_b_tapadl_seg", pretrained=False, **TINY))
    path = tmp_path / "tapadl_fan_base_segmentation.pth"
    torch.save({"meta": {}, "state_dict": src.state_dict()}, path)
    asked = []
    monkeypatch.setattr(checkpoints, "fetch_checkpoint", lambda url, sha=None: asked.append(url) or path)
    model = zoo.create_model("fan_b_tapadl_seg", pretrained=True, **TINY)
    assert asked == [zoo.load_card("fan_b_tapadl_seg")["checkpoint"]["url"]]
    assert torch.equal(model.decode_head.linear_pred.weight, src.decode_head.linear_pred.weight)


def test_offline_download_and_missing_weights_say_pass_ckpt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    card = dict(zoo.load_card("fan_b_tapadl_seg"))
    card["checkpoint"] = {"url": "http://127.0.0.1:9/tapadl_fan_base_segmentation.pth"}
    real = zoo.load_card
    monkeypatch.setattr(zoo, "load_card", lambda name: card if name == "fan_b_tapadl_seg" else real(name))
    monkeypatch.setenv("ATTNPROBE_CACHE", str(tmp_path))
    with pytest.raises(UserError, match="pass it with --ckpt PATH"):
        zoo.load_model("fan_b_tapadl_seg", pretrained=True, **TINY)
    with pytest.raises(UserError, match="--ckpt"):
        zoo.load_model("fan_b_seg", pretrained=True, **TINY)


def test_classification_checkpoint_in_a_segmentation_model_names_the_head_keys(tmp_path: Path) -> None:
    cls = attnprobe.create_model("fan_b_tapadl", pretrained=False, **TINY_CLS)
    path = tmp_path / "tapadl_fan_base.pth.tar"
    torch.save({"state_dict": cls.state_dict(), "epoch": 299}, path)
    with pytest.raises(UserError) as err:
        attnprobe.create_model("fan_b_tapadl_seg", checkpoint=path, **TINY)
    message = str(err.value)
    assert "\n" not in message and "not a segmentation checkpoint" in message
    assert "decode_head.* keys are missing" in message and "decode_head.conv_seg.weight" in message


def test_segmentation_checkpoint_in_a_classifier_says_so(tmp_path: Path) -> None:
    seg = attnprobe.create_model("fan_b_tapadl_seg", pretrained=False, **TINY)
    path = tmp_path / "seg.pth"
    torch.save({"meta": {}, "state_dict": seg.state_dict()}, path)
    with pytest.raises(UserError) as err:
        attnprobe.create_model("fan_b_tapadl", checkpoint=path, **TINY_CLS)
    message = str(err.value)
    assert "\n" not in message and "is a segmentation checkpoint" in message and "fan_b_tapadl_seg" in message


def test_segmentation_config_errors_are_user_errors() -> None:
    config = {"family": "tap_fan_hybrid", "backbone": {"embed_dim": 32, "depth": 2, "num_heads": 4, "out_idx": 1,
                                                       "hybrid": {"depths": [1, 1], "dims": [16, 32]},
                                                       "num_scales": 2},
              "decode_head": {"type": "SegFormerHead", "in_channels": [16, 32, 32, 32], "channels": 8,
                              "num_classes": 5, "decoder_params": {"embed_dim": 16}}}
    model = attnprobe.build_from_config(config)
    assert isinstance(model, EncoderDecoder) and model.decode_head.linear_pred.out_channels == 5
    with pytest.raises(UserError, match="do not match the backbone"):
        build_segmentor_from_config({**config, "decode_head": {**config["decode_head"], "in_channels": [8] * 4}})
    with pytest.raises(UserError, match="only SegFormerHead"):
        build_segmentor_from_config({**config, "decode_head": {**config["decode_head"], "type": "UPerHead"}})
    with pytest.raises(UserError, match="not 'rvt'"):
        build_segmentor_from_config({**config, "family": "rvt"})
    with pytest.raises(UserError, match="out_idx 7"):
        build_segmentor_from_config({**config, "backbone": {**config["backbone"], "out_idx": 7}})


# -- inference ----------------------------------------------------------------------------------------------------
def _official_slide(model: torch.nn.Module, img: torch.Tensor, crop: tuple, stride: tuple) -> torch.Tensor:
    """mmseg 0.13 ``EncoderDecoder.slide_inference`` transcribed (F.pad of every window into a full canvas)."""
    (h_stride, w_stride), (h_crop, w_crop) = stride, crop
    batch, _, h_img, w_img = img.shape
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    preds, count = None, img.new_zeros((batch, 1, h_img, w_img))
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1, x1 = h_idx * h_stride, w_idx * w_stride
            y2, x2 = min(y1 + h_crop, h_img), min(x1 + w_crop, w_img)
            y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
            logit = model.encode_decode(img[:, :, y1:y2, x1:x2])
            preds = img.new_zeros((batch, logit.shape[1], h_img, w_img)) if preds is None else preds
            preds += F.pad(logit, (int(x1), int(preds.shape[3] - x2), int(y1), int(preds.shape[2] - y2)))
            count[:, :, y1:y2, x1:x2] += 1
    return preds / count


@pytest.mark.parametrize(("size", "crop", "stride"), [((80, 144), (64, 64), (48, 40)), ((48, 112), (64, 64), (32, 32)),
                                                      ((96, 64), (64, 96), (16, 48))])
def test_slide_inference_equals_the_official_loop(size: tuple, crop: tuple, stride: tuple) -> None:
    model = _randomize(attnprobe.create_model("fan_b_tapadl_seg", num_classes=5, pretrained=False, **TINY), seed=3)
    torch.manual_seed(0)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        expected = _official_slide(model, x, crop, stride)
        ours = infer(model, x, mode="slide", crop=crop, stride=stride)
        batched = infer(model, x, mode="slide", crop=crop, stride=stride, batch_windows=4)
        resized = infer(model, x, mode="slide", crop=crop, stride=stride, output_size=(50, 70))
    assert torch.equal(ours, expected)  # bit for bit: same windows, same order of the sums
    torch.testing.assert_close(batched, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(resized, F.interpolate(ours, size=(50, 70), mode="bilinear", align_corners=False))
    windows = slide_windows(*size, crop, stride)
    assert all(0 <= y1 < y2 <= size[0] and 0 <= x1 < x2 <= size[1] for y1, y2, x1, x2 in windows)


def test_infer_defaults_errors_and_grad() -> None:
    model = _randomize(attnprobe.create_model("fan_b_seg", num_classes=3, pretrained=False, **TINY))
    x = torch.randn(1, 3, 64, 64)
    model.test_cfg = {"mode": "slide", "crop_size": (32, 32), "stride": (32, 32)}
    with torch.no_grad():
        assert torch.equal(infer(model, x), infer(model, x, mode="slide", crop=32, stride=32))
    with pytest.raises(UserError, match="unknown inference mode"):
        infer(model, x, mode="sliding")
    model.test_cfg = {}
    with pytest.raises(UserError, match="needs crop"):
        infer(model, x, mode="slide")
    assert not infer(model, x, mode="whole").requires_grad
    assert infer(model, x, mode="whole", enable_grad=True).requires_grad


def test_capture_sees_every_window_of_a_slide_inference() -> None:
    model = _randomize(attnprobe.create_model("fan_b_tapadl_seg", num_classes=3, pretrained=False, **TINY))
    x = torch.randn(1, 3, 64, 128)
    seen = []
    with torch.no_grad(), attnprobe.AttentionCapture(model, reduce=lambda m: seen.append((m.kind, m.attn.shape))):
        infer(model, x, mode="slide", crop=(64, 64), stride=(64, 64))
    windows = len(slide_windows(64, 128, (64, 64), (64, 64)))
    assert windows == 2
    assert seen.count(("token", torch.Size([1, 4, 16, 16]))) == windows * TINY["depth"]
    assert seen.count(("class", torch.Size([1, 4, 1, 17]))) == windows * 2


def test_public_names() -> None:
    assert attnprobe.segmentation.infer is infer
    assert attnprobe.segmentation.EncoderDecoder is EncoderDecoder
    assert timm.is_model("segformer_tap_fan_base_16_p4_hybrid")
