"""Attention capture: parity with the official fixtures, one test per supported family, error paths."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from attnprobe.capture import AttentionCapture, LayerMap, find_attention_layers
from attnprobe.errors import UserError

FIXTURES = ("fan_hybrid_small", "tap_fan_hybrid_small", "tap_fan_vit_small", "tap_rvt_small")


def _fused_flags(model: nn.Module) -> list:
    return [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")]


def _check_rows(maps: list[torch.Tensor]) -> None:
    for a in maps:
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]), atol=1e-5, rtol=0)
        assert a.min() >= 0


def _tiny(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=5, **kwargs).eval()


# -- official fixtures (FAN, TAP-FAN hybrid and ViT, TAP-RVT) ----------------------------------------------------
@pytest.mark.parametrize("name", FIXTURES)
def test_capture_matches_official_fixture(reference_dir, name: str) -> None:
    import attnprobe

    fx = torch.load(reference_dir / "official" / f"{name}.pt", weights_only=True)
    model = attnprobe.build_from_config(fx["config"])
    model.load_state_dict(fx["state_dict"], strict=True)
    model.eval()
    before = _fused_flags(model)
    with torch.no_grad(), AttentionCapture(model) as cap:
        logits = model(fx["input"])
    assert _fused_flags(model) == before  # fused attention restored
    torch.testing.assert_close(logits, fx["logits"], atol=1e-4, rtol=0)
    assert len(cap.maps) == len(fx["attn"])
    for ours, ref in zip(cap.maps, fx["attn"]):
        assert ours.shape == ref.shape
        torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)
    assert len(cap.cls_maps) == len(fx["cls_attn"])  # FAN's class-attention blocks, none for RVT
    for ours, ref in zip(cap.cls_maps, fx["cls_attn"]):
        torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)
    assert all(w == 1 for w in cap.windows)
    # FAN's channel attention (sigmoid) is never captured as token attention
    assert all(layer.kind in ("token", "class") for layer in cap.layers)
    assert not any("mlp" in layer.name for layer in cap.layers)


# -- timm families ------------------------------------------------------------------------------------------------
def test_vit_capture_keeps_logits_and_restores_fused_attn() -> None:
    model = _tiny("vit_tiny_patch16_224", img_size=32, depth=3)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        assert _fused_flags(model) == [True] * 3
        with AttentionCapture(model) as cap:
            assert _fused_flags(model) == [False] * 3  # explicit softmax path while capturing
            out = model(x)
    assert _fused_flags(model) == [True] * 3
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    assert [tuple(a.shape) for a in cap.maps] == [(2, 3, 5, 5)] * 3  # 4 patches + class token
    assert [layer.name for layer in cap.map_layers] == ["blocks.0.attn", "blocks.1.attn", "blocks.2.attn"]
    assert cap.cls_maps == []
    _check_rows(cap.maps)


def test_vit_maps_equal_manual_attention() -> None:
    model = _tiny("vit_tiny_patch16_224", img_size=32, depth=1)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad(), AttentionCapture(model) as cap:
        model(x)
        tokens = model.norm_pre(model._pos_embed(model.patch_embed(x)))
        blk = model.blocks[0]
        B, N, C = tokens.shape
        qkv = blk.attn.qkv(blk.norm1(tokens)).reshape(B, N, 3, 3, C // 3).permute(2, 0, 3, 1, 4)
        manual = ((qkv[0] * blk.attn.scale) @ qkv[1].transpose(-2, -1)).softmax(-1)
    torch.testing.assert_close(cap.maps[0], manual, atol=1e-5, rtol=0)


def test_deit_distilled_two_prefix_tokens() -> None:
    model = _tiny("deit_tiny_distilled_patch16_224", img_size=32, depth=2)
    with torch.no_grad(), AttentionCapture(model) as cap:
        model(torch.randn(1, 3, 32, 32))
    assert [tuple(a.shape) for a in cap.maps] == [(1, 3, 6, 6)] * 2


def test_swin_window_maps() -> None:
    model = _tiny("swin_tiny_patch4_window7_224", img_size=56, depths=(2, 2), num_heads=(2, 4), embed_dim=16,
                  window_size=7)
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        ref = model(x)
        with AttentionCapture(model) as cap:
            out = model(x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    # 56/4 = 14 tokens per side -> 4 windows of 7x7 in stage 1; 7 per side -> 1 window in stage 2
    assert cap.windows == [4, 4, 1, 1]
    assert [tuple(a.shape) for a in cap.maps] == [(8, 2, 49, 49)] * 2 + [(2, 4, 49, 49)] * 2
    assert cap.per_image(0).shape == (2, 4, 2, 49, 49)
    assert all(layer.windowed for layer in cap.map_layers)
    _check_rows(cap.maps)


def test_cait_talking_heads_and_class_attention() -> None:
    model = _tiny("cait_xxs24_224", img_size=32, depth=2, embed_dim=48, num_heads=4)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        with AttentionCapture(model) as cap:
            out = model(x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    assert [tuple(a.shape) for a in cap.maps] == [(2, 4, 4, 4)] * 2  # post-softmax, before talking-heads mixing
    _check_rows(cap.maps)
    assert [tuple(a.shape) for a in cap.cls_maps] == [(2, 4, 1, 5)] * 2
    _check_rows(cap.cls_maps)


def test_find_attention_layers_skips_channel_attention() -> None:
    model = _tiny("xcit_nano_12_p16_224", img_size=32, depth=2)
    layers = find_attention_layers(model)
    assert [layer.kind for layer in layers] == ["class", "class"]  # XCA (channel attention) is not token attention


# -- streaming and bookkeeping ------------------------------------------------------------------------------------
def test_reduce_without_keeping_maps() -> None:
    model = _tiny("vit_tiny_patch16_224", img_size=32, depth=3)
    seen: list[LayerMap] = []

    def reduce(lm: LayerMap) -> float:
        seen.append(lm)
        return float(lm.attn.mean())

    with torch.no_grad(), AttentionCapture(model, reduce=reduce, keep_maps=False) as cap:
        model(torch.randn(2, 3, 32, 32))
        assert len(cap.reduced) == 3
        model(torch.randn(2, 3, 32, 32))
        assert len(cap.reduced) == 3  # reset at each call of the model
        with pytest.raises(RuntimeError, match="keep_maps=False"):
            _ = cap.maps
    assert [lm.index for lm in seen] == [0, 1, 2, 0, 1, 2]
    assert all(lm.batch_size == 2 and lm.num_windows == 1 and lm.kind == "token" for lm in seen)


def test_maps_hold_only_the_last_pass() -> None:
    model = _tiny("vit_tiny_patch16_224", img_size=32, depth=2)
    with torch.no_grad(), AttentionCapture(model) as cap:
        model(torch.randn(3, 3, 32, 32))
        model(torch.randn(1, 3, 32, 32))
    assert [a.shape[0] for a in cap.maps] == [1, 1]


def test_keep_maps_false_needs_reduce() -> None:
    with pytest.raises(ValueError):
        AttentionCapture(nn.Linear(2, 2), keep_maps=False)


# -- error paths --------------------------------------------------------------------------------------------------
def test_model_without_attention_raises_user_error() -> None:
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(UserError, match="no attention layer"):
        with AttentionCapture(cnn):
            pass


def test_no_forward_pass_is_an_error_not_an_empty_list() -> None:
    model = _tiny("vit_tiny_patch16_224", img_size=32, depth=1)
    with AttentionCapture(model) as cap:
        pass
    with pytest.raises(RuntimeError, match="no forward pass"):
        _ = cap.maps


def test_state_restored_after_exception() -> None:
    model = _tiny("vit_tiny_patch16_224", img_size=32, depth=2)
    n_hooks = sum(len(m._forward_pre_hooks) for m in model.modules())
    with pytest.raises(RuntimeError, match="boom"):
        with AttentionCapture(model):
            raise RuntimeError("boom")
    assert _fused_flags(model) == [True, True]
    assert sum(len(m._forward_pre_hooks) for m in model.modules()) == n_hooks


def test_class_attention_only_model_explains_itself() -> None:
    model = _tiny("xcit_nano_12_p16_224", img_size=32, depth=1)
    with torch.no_grad(), AttentionCapture(model) as cap:
        model(torch.randn(1, 3, 32, 32))
    assert len(cap.cls_maps) == 2
    with pytest.raises(RuntimeError, match="only class attention"):
        _ = cap.maps


# -- kinds, layouts and the safety nets of the softmax-level capture ------------------------------------------------
class _AlwaysFused(nn.Module):
    """Has a `fused_attn` flag but ignores it: only the scaled_dot_product_attention safety net can see its map."""

    def __init__(self, dim: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.fused_attn, self.num_heads = True, heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.bias = nn.Parameter(torch.randn(heads, 5, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=self.bias)
        return out.transpose(1, 2).reshape(B, N, C)


def test_fused_call_without_flag_still_yields_the_map() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(_AlwaysFused()).eval()
    x = torch.randn(3, 5, 8)
    with torch.no_grad():
        ref = model(x)
        with AttentionCapture(model) as cap:
            out = model(x)
        q, k, _ = model[0].qkv(x).reshape(3, 5, 3, 2, -1).permute(2, 0, 3, 1, 4)
        manual = ((q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5 + model[0].bias).softmax(-1)
    assert torch.equal(out, ref)  # the fused call itself is untouched
    torch.testing.assert_close(cap.maps[0], manual, atol=1e-6, rtol=0)
    assert cap.kinds == ["token"]


def test_pvt_spatial_reduction_maps_are_token_attention_not_class() -> None:
    model = _tiny("pvt_v2_b0")
    with torch.no_grad(), AttentionCapture(model) as cap:
        model(torch.randn(2, 3, 64, 64))
    assert len(cap.maps) == 8 and cap.cls_maps == []  # all 8 maps of PVT-v2-b0 (issue 12: only 2 were found)
    assert cap.kinds == ["reduced"] * 6 + ["token"] * 2
    assert [tuple(a.shape[-2:]) for a in cap.maps[::2]] == [(256, 4), (64, 4), (16, 4), (4, 4)]
    _check_rows(cap.maps)


def test_twins_grouped_windows_are_standard_shaped() -> None:
    model = _tiny("twins_svt_small", depths=(2, 2, 2, 2), embed_dims=(16, 32, 64, 128), num_heads=(1, 2, 4, 8))
    with torch.no_grad(), AttentionCapture(model) as cap:
        model(torch.randn(2, 3, 64, 64))
    assert all(a.ndim == 4 for a in cap.maps)  # the locally-grouped maps were 5-D (B, windows, H, n, n)
    assert cap.kinds[:2] == ["window", "reduced"] and cap.windows[0] == 9  # 16 x 16 tokens padded to 3 x 3 windows
    assert cap.per_image(0).shape == (2, 9, 1, 49, 49)
    _check_rows(cap.maps)


def test_records_keep_the_order_of_computation_across_lists() -> None:
    model = _tiny("crossvit_tiny_240", img_size=48, img_scale=(1.0, 1.0))
    with torch.no_grad(), AttentionCapture(model) as cap:
        model(torch.randn(1, 3, 48, 48))
    kinds = [r.kind for r in cap.records]
    assert kinds.count("cross") == len(cap.cls_maps) == 6 and kinds.count("token") == len(cap.maps)
    assert kinds.index("cross") < len(kinds) - kinds[::-1].index("token") - 1  # interleaved, not appended
    assert [r.index for r in cap.records if r.kind == "cross"] == list(range(6))
    assert all(a.shape[-2] == 1 for a in cap.cls_maps)  # one class token queries the other branch


def test_excluded_softmaxes_are_listed_and_explained() -> None:
    from attnprobe.capture import find_excluded_attention, no_token_attention_message

    model = _tiny("xcit_nano_12_p16_224", img_size=32, depth=2)
    excluded = find_excluded_attention(model)
    assert [e.module_type for e in excluded] == ["XCA", "XCA"] and "channel" in excluded[0].reason
    message = no_token_attention_message(model, "xcit", need_token=True)
    assert message is not None and "\n" not in message and "only 2 class-attention layer(s)" in message
    assert no_token_attention_message(model) is None  # the capture itself works: class attention only


def test_softmax_wrappers_are_removed_after_the_last_capture() -> None:
    import torch.nn.functional as F

    originals = (torch.softmax, F.scaled_dot_product_attention, "softmax" in torch.Tensor.__dict__)
    model = _tiny("vit_tiny_patch16_224", img_size=32, depth=1)
    with AttentionCapture(model), AttentionCapture(model):
        assert torch.softmax is not originals[0]
    assert (torch.softmax, F.scaled_dot_product_attention, "softmax" in torch.Tensor.__dict__) == originals
