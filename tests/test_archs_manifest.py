"""Our full-size variants have exactly the official state-dict keys, shapes and parameter counts.

Models are built on the ``meta`` device (no memory, no init cost), so every variant is checked in well under a
second each.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch

import attnprobe.archs as archs
from attnprobe.archs.registry import VARIANTS, build_variant, count_params, register_timm_models, state_dict_shapes
from attnprobe.errors import UserError

MANIFEST = Path(__file__).resolve().parents[2] / "shared" / "reference" / "official" / "state_dict_manifests.json"


def _manifest() -> dict:
    if not MANIFEST.exists():
        pytest.skip(f"{MANIFEST} not available")
    return json.loads(MANIFEST.read_text())


EXPECTED = [
    "tap_fan_base_16_p4_hybrid", "fan_base_16_p4_hybrid", "tap_fan_tiny_8_p4_hybrid", "fan_tiny_8_p4_hybrid",
    "tap_fan_small_12_p4_hybrid", "fan_small_12_p4_hybrid", "tap_fan_large_16_p4_hybrid", "fan_large_16_p4_hybrid",
    "tap_rvt_base_plus", "rvt_base_plus",
]


@pytest.mark.parametrize("name", EXPECTED)
def test_state_dict_matches_official_manifest(name: str) -> None:
    entry = _manifest()[name]
    kwargs = {k: v for k, v in entry["kwargs"].items() if name.startswith("tap_")}  # FAN ignores num_scales
    with torch.device("meta"):
        model = build_variant(name, **kwargs)
    ours = state_dict_shapes(model)
    theirs = {k: list(v) for k, v in entry["state_dict"].items()}
    assert sorted(set(theirs) - set(ours)) == []
    assert sorted(set(ours) - set(theirs)) == []
    assert {k: ours[k] for k in theirs if ours[k] != theirs[k]} == {}
    assert count_params(model) == entry["num_params"]


def test_manifest_covers_every_listed_variant() -> None:
    assert set(_manifest()) == set(EXPECTED)


@pytest.mark.parametrize("name", ["tap_fan_base_16_p4_hybrid", "fan_base_16_p4_hybrid", "tap_rvt_base_plus",
                                  "rvt_base_plus", "tap_fan_small_12_p16_224", "rvt_tiny_plus"])
def test_timm_create_model_builds_ours(name: str) -> None:
    with torch.device("meta"):
        model = timm.create_model(name, num_classes=7)
    assert isinstance(model, (archs.FAN, archs.RVT))
    assert model.pretrained_cfg["input_size"] == (3, 224, 224)
    assert model.get_classifier().out_features == 7


def test_tap_variants_default_to_four_scales_and_accept_others() -> None:
    with torch.device("meta"):
        default = timm.create_model("tap_fan_tiny_8_p4_hybrid")
        five = timm.create_model("tap_fan_tiny_8_p4_hybrid", num_scales=5)
    assert default.blocks[0].dilation_predictor.num_scales == 4
    assert five.blocks[0].dilation_predictor.num_scales == 5


def test_registration_is_idempotent() -> None:
    assert register_timm_models() == []
    assert all(timm.is_model(name) for name in VARIANTS)


def test_pretrained_download_is_refused_with_a_user_error() -> None:
    with pytest.raises(UserError, match="checkpoint"):
        timm.create_model("tap_rvt_base_plus", pretrained=True)


def test_unknown_family_and_bad_config_are_user_errors() -> None:
    with pytest.raises(UserError, match="choose one of"):
        archs.build_from_config({"family": "fan_hybird"})
    with pytest.raises(UserError, match="invalid"):
        archs.build_from_config({"family": "fan_vit", "embed_dim": 48, "num_heads": 5})
    with pytest.raises(UserError, match="unknown architecture"):
        build_variant("tap_fan_huge")


def test_small_fan_hybrid_runs_on_non_square_input() -> None:
    torch.manual_seed(0)
    model = archs.build_from_config({
        "family": "tap_fan_hybrid", "backbone": {"depths": [1, 1], "dims": [16, 32]}, "embed_dim": 32, "depth": 2,
        "num_heads": 4, "num_classes": 3, "num_scales": 3,
    }).eval()
    with torch.inference_mode():
        out = model(torch.randn(1, 3, 128, 192))
    assert out.shape == (1, 3)
    assert model.blocks[0].dilation_predictor.last_weights.shape == (1, 8, 12, 3)
