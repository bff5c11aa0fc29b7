"""Parity of our FAN / TAP-FAN / TAP-RVT with the official code, on the reference fixtures.

Each fixture holds an official model's config, random weights, an input, and the official logits, per-block token
attention maps, FAN class-attention maps and ADL(tau=2). Ours must load the weights strictly and reproduce all of
them (logits and maps within 1e-4, ADL within 1e-5).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from attnprobe.archs import adl_loss, build_from_config, set_fused_attn

REF = Path(__file__).resolve().parents[2] / "shared" / "reference" / "official"
FIXTURES = ["tap_fan_hybrid_small", "fan_hybrid_small", "tap_fan_vit_small", "tap_rvt_small"]


def _load(name: str) -> dict:
    path = REF / f"{name}.pt"
    if not path.exists():
        pytest.skip(f"reference fixture {path} not available")
    return torch.load(path, weights_only=True)


def _run_capturing(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list, list]:
    """Logits plus the token and class attention maps, via the attn_drop contract."""
    set_fused_attn(model, False)
    maps: dict[str, list[torch.Tensor]] = {"token": [], "class": []}
    hooks = []
    for module in model.modules():
        kind = getattr(module, "attention_kind", None)
        if kind is not None:
            hooks.append(module.attn_drop.register_forward_pre_hook(
                lambda _m, inp, kind=kind: maps[kind].append(inp[0].detach().clone())))
    try:
        with torch.inference_mode():
            logits = model(x)
    finally:
        for h in hooks:
            h.remove()
        set_fused_attn(model, True)
    return logits, maps["token"], maps["class"]


@pytest.fixture(scope="module", params=FIXTURES)
def case(request: pytest.FixtureRequest) -> tuple[dict, torch.nn.Module, torch.Tensor, list, list]:
    ref = _load(request.param)
    model = build_from_config(ref["config"])
    model.load_state_dict(ref["state_dict"], strict=True)
    model.eval()
    logits, token_maps, class_maps = _run_capturing(model, ref["input"])
    return ref, model, logits, token_maps, class_maps


def test_logits_match(case: tuple) -> None:
    ref, _, logits, _, _ = case
    assert logits.shape == ref["logits"].shape
    assert (logits - ref["logits"]).abs().max().item() < 1e-4


def test_every_token_attention_map_matches(case: tuple) -> None:
    ref, _, _, token_maps, _ = case
    assert len(token_maps) == len(ref["attn"])
    for ours, theirs in zip(token_maps, ref["attn"]):
        assert ours.shape == theirs.shape
        assert (ours - theirs).abs().max().item() < 1e-4


def test_class_attention_maps_match(case: tuple) -> None:
    ref, _, _, _, class_maps = case
    assert len(class_maps) == len(ref["cls_attn"])
    for ours, theirs in zip(class_maps, ref["cls_attn"]):
        assert ours.shape == theirs.shape
        assert (ours - theirs).abs().max().item() < 1e-4


def test_adl_of_our_maps_matches_official(case: tuple) -> None:
    ref, _, _, token_maps, _ = case
    assert abs(adl_loss(token_maps, tau=2.0).item() - ref["adl_tau2"].item()) < 1e-5
    assert abs(adl_loss(ref["attn"], tau=2.0).item() - ref["adl_tau2"].item()) < 1e-5


def test_fused_attention_gives_the_same_logits(case: tuple) -> None:
    ref, model, logits_explicit, _, _ = case
    set_fused_attn(model, True)
    with torch.inference_mode():
        fused = model(ref["input"])
    assert (fused - logits_explicit).abs().max().item() < 1e-5
    assert (fused - ref["logits"]).abs().max().item() < 1e-4


def test_capture_does_not_change_logits(case: tuple) -> None:
    ref, model, logits_captured, _, _ = case
    set_fused_attn(model, False)
    try:
        with torch.inference_mode():
            plain = model(ref["input"])
    finally:
        set_fused_attn(model, True)
    assert torch.equal(plain, logits_captured)


def test_channel_attention_is_not_token_attention() -> None:
    ref = _load("fan_hybrid_small")
    model = build_from_config(ref["config"])
    kinds = [getattr(m, "attention_kind", None) for m in model.modules()]
    assert kinds.count("token") == ref["config"]["depth"]
    assert kinds.count("class") == 2
    assert not hasattr(model.blocks[0].mlp, "attention_kind")


def test_strict_load_rejects_a_wrong_num_scales() -> None:
    ref = _load("tap_fan_hybrid_small")
    model = build_from_config({**ref["config"], "num_scales": 3})
    with pytest.raises(RuntimeError, match="size mismatch"):
        model.load_state_dict(ref["state_dict"], strict=True)
