"""The model zoo: cards parse, names resolve (zoo, official, timm), weights load strictly, errors are clear."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from attnprobe import zoo
from attnprobe.errors import UserError
from tests.conftest import TINY_VIT_KWARGS

REQUIRED_ZOO = ["fan_b", "fan_b_tap", "fan_b_adl", "fan_b_tapadl", "rvt_b", "rvt_b_tapadl", "deit_b", "swin_b",
                "fan_t", "fan_s", "fan_l"]


def test_required_cards_exist_with_preprocessing_and_paper_numbers() -> None:
    cards = zoo.list_cards()
    for name in REQUIRED_ZOO:
        card = cards[name]
        pre = zoo.Preprocessing.from_mapping(card["preprocessing"])
        assert pre.input_size == 224 and 0.8 <= pre.crop_pct <= 1.0
        assert card["paper"]["clean_acc"] > 50  # percentages, as printed in the papers
    assert cards["fan_b_tapadl"]["kwargs"]["num_scales"] == 4
    assert cards["fan_b_tapadl"]["checkpoint"]["url"].endswith("tapadl_fan_base.pth.tar")
    assert cards["rvt_b_tapadl"]["checkpoint"]["url"].endswith("tapadl_rvt_base.pth.tar")


def test_every_card_architecture_is_registered() -> None:
    import timm

    zoo._ensure_registered()
    for name, card in zoo.list_cards().items():
        assert timm.is_model(card["arch"]), f"{name}: {card['arch']} is not registered"


def test_timm_name_random_init_is_eval_and_identified() -> None:
    with pytest.warns(zoo.RandomWeightsWarning):
        loaded = zoo.load_model("vit_tiny_patch16_224", pretrained=False, **TINY_VIT_KWARGS)
    assert not loaded.model.training
    assert loaded.checkpoint_sha256 == zoo.RANDOM_INIT
    assert loaded.preprocessing.input_size == 32  # from timm's pretrained_cfg of the model as built


def test_checkpoint_roundtrip_and_sha(tmp_path: Path) -> None:
    src = zoo.create_model("vit_tiny_patch16_224", pretrained=False, **TINY_VIT_KWARGS)
    path = tmp_path / "tiny.pth"
    torch.save({"state_dict": src.state_dict()}, path)
    loaded = zoo.load_model("vit_tiny_patch16_224", checkpoint=path, **TINY_VIT_KWARGS)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(src(x), loaded.model(x))
    from attnprobe.checkpoints import file_sha256

    assert loaded.checkpoint_sha256 == file_sha256(path)


def test_unknown_model_suggests_names() -> None:
    with pytest.raises(UserError, match="unknown model 'fan_b_tapadll'.*did you mean"):
        zoo.create_model("fan_b_tapadll")


def test_pretrained_without_public_weights_says_pass_ckpt() -> None:
    with pytest.raises(UserError, match="--ckpt"):
        zoo.load_model("fan_b_tap", pretrained=True)


def test_offline_url_download_says_pass_ckpt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cards = zoo.list_cards()
    card = dict(cards["fan_b_tapadl"])
    card["checkpoint"] = {"url": "http://127.0.0.1:9/tapadl_fan_base.pth.tar"}
    monkeypatch.setattr(zoo, "load_card", lambda name: card if name == "fan_b_tapadl" else None)
    monkeypatch.setenv("ATTNPROBE_CACHE", str(tmp_path))
    with pytest.raises(UserError, match="pass it with --ckpt PATH"):
        zoo.load_model("fan_b_tapadl", pretrained=True)


def test_eval_transform_sizes_and_pickles() -> None:
    import pickle

    from PIL import Image

    from attnprobe.data.transforms import eval_transform, resize_size

    pre = zoo.Preprocessing(input_size=224, crop_pct=0.875)
    assert resize_size(pre) == 256  # timm: floor(224 / 0.875)
    t = pickle.loads(pickle.dumps(eval_transform(pre)))
    x = t(Image.new("RGB", (300, 400), (255, 0, 0)))
    assert x.shape == (3, 224, 224)
    assert torch.allclose(x[0], torch.full((224, 224), (1 - 0.485) / 0.229), atol=1e-5)
