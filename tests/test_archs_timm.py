"""Our FAN / TAP-FAN / RVT / TAP-RVT pass the checks timm runs on its own models (timm's tests/test_models.py).

Each family is built through ``timm.create_model`` under its official name with tiny dimensions, and checked for:
forward / backward (every parameter gets a gradient), gradient checkpointing (same outputs and gradients),
TorchScript, torch.fx symbolic tracing (forward, backward, and fx + TorchScript), ``features_only=True`` with
``feature_info``, ``forward_intermediates`` / ``prune_intermediate_layers``, ``forward_features`` / ``forward_head``,
``head_hidden_size``, ``reset_classifier`` and the pretrained config (which must agree with the model cards).
TAP is also checked on non-square token grids in every family, against the independent unfold formulation.
"""

from __future__ import annotations

import math
import warnings

import pytest
import timm
import torch
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import attnprobe.archs
from attnprobe import zoo
from attnprobe.archs import FAN, RVT
from attnprobe.archs.tap import TokenAwarePooling, tap_reference_unfold

_STEM = {"depths": [1, 1], "dims": [16, 32, 64, 128]}
# name -> (tiny constructor overrides, input size (H, W)); H != W everywhere except where RVT's mask needs <= 14x14
CASES = {
    "fan_tiny_8_p4_hybrid": (dict(embed_dim=32, depth=2, num_heads=4, backbone=_STEM), (64, 96)),
    "tap_fan_tiny_8_p4_hybrid": (dict(embed_dim=32, depth=2, num_heads=4, backbone=_STEM, num_scales=3), (96, 64)),
    "fan_tiny_12_p16_224": (dict(embed_dim=32, depth=2, num_heads=4), (64, 48)),
    "tap_fan_tiny_12_p16_224": (dict(embed_dim=32, depth=2, num_heads=4, num_scales=2), (48, 80)),
    "rvt_tiny_plus": (dict(base_dims=[8, 8], depth=[2, 1], heads=[2, 4], masked_block=1), (64, 64)),
    "tap_rvt_base_plus": (dict(base_dims=[8], depth=[2], heads=[2], masked_block=1, num_scales=3), (48, 64)),
    "tap_rvt_tiny": (dict(base_dims=[8, 8], depth=[1, 1], heads=[2, 4], num_scales=2), (96, 64)),
}
NAMES = list(CASES)


def _create(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, **{**CASES[name][0], **kwargs})


def _input(name: str, batch: int = 1) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(batch, 3, *CASES[name][1])


def _randomize_norm_stats(model: nn.Module) -> None:
    """Give BatchNorm buffers non-trivial values so that eval-mode checks are not degenerate."""
    gen = torch.Generator().manual_seed(2)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1, generator=gen)
            m.running_var.uniform_(0.5, 1.5, generator=gen)


def _fx_model(model: nn.Module, train: bool = False) -> nn.Module:
    """timm's test recipe: trace with timm's leaf modules / autowrap functions, return the final node."""
    from timm.models import get_notrace_functions, get_notrace_modules

    tracer_kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                         param_shapes_constant=True)
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    return create_feature_extractor(model, train_return_nodes=[train_nodes[-1]], eval_return_nodes=[eval_nodes[-1]],
                                    tracer_kwargs=tracer_kwargs)


# -- forward / backward -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_reaches_every_parameter(name: str) -> None:
    model = _create(name, num_classes=42).train()
    out = model(_input(name, batch=2))
    assert out.shape == (2, 42) and not torch.isnan(out).any()
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []


@pytest.mark.parametrize("name", NAMES)
def test_grad_checkpointing_gives_the_same_outputs_and_gradients(name: str) -> None:
    model = _create(name, num_classes=7).train()
    x = _input(name, batch=2)
    plain = model(x)
    plain.square().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing()
    ckpt = model(x)
    ckpt.square().sum().backward()
    torch.testing.assert_close(ckpt, plain, atol=1e-5, rtol=1e-4)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], atol=1e-5, rtol=1e-4, msg=n)


# -- default cfg, heads, pooling ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_features_head_and_classifier_reset(name: str) -> None:
    model = _create(name).eval()
    _randomize_norm_stats(model)
    x = _input(name)
    assert model.num_classes == 1000 and model.num_features > 0 and model.head_hidden_size == model.num_features
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        logits = model.forward_head(feats)
        assert torch.equal(model(x), logits)
        if isinstance(model, FAN):
            assert feats.ndim == 3 and feats.shape[-1] == model.num_features  # (B, 1 + N, C): non-std like XCiT
        else:
            assert feats.shape[1] == model.num_features and feats.ndim == 4
        assert pre.shape == (1, model.head_hidden_size)
        model.reset_classifier(0)
        assert model.num_classes == 0
        torch.testing.assert_close(model(x), pre)
        model.reset_classifier(0, "")
        torch.testing.assert_close(model(x), feats)
        model.reset_classifier(3, "avg")
        assert model(x).shape == (1, 3) and model.get_classifier().out_features == 3
    fresh = _create(name, num_classes=0, global_pool="").eval()
    assert fresh.num_classes == 0 and fresh.get_classifier().__class__ is nn.Identity
    cfg = model.pretrained_cfg
    state = model.state_dict()
    assert cfg["first_conv"] + ".weight" in state and cfg["classifier"] + ".weight" in state
    assert cfg["crop_pct"] == (0.875 if isinstance(model, RVT) else 1.0)
    assert cfg["interpolation"] == "bicubic" and cfg["input_size"] == (3, 224, 224)


@pytest.mark.parametrize("name", ["rvt_tiny", "tap_rvt_base_plus", "fan_small_12_p4_hybrid", "tap_fan_tiny_12_p16_224"])
def test_pool_size_and_num_features_of_the_full_size_variants(name: str) -> None:
    with torch.device("meta"):  # shapes only: no memory, no compute
        model = timm.create_model(name).eval()
        feats = model.forward_features(torch.empty(1, 3, 224, 224))
    pool = model.pretrained_cfg["pool_size"]
    if isinstance(model, RVT):
        assert tuple(feats.shape) == (1, model.num_features, *pool)
    else:
        assert pool is None and tuple(feats.shape) == (1, 1 + 14 * 14, model.num_features)


def test_pretrained_cfg_agrees_with_every_model_card() -> None:
    checked = 0
    for name, card in zoo.list_cards().items():
        if card["arch"] not in attnprobe.archs.VARIANTS or "preprocessing" not in card:
            continue
        cfg = timm.models.get_pretrained_cfg(card["arch"]).to_dict()
        pre = card["preprocessing"]
        assert cfg["crop_pct"] == pre["crop_pct"], name
        assert cfg["interpolation"] == pre["interpolation"], name
        assert cfg["input_size"][-1] == pre["input_size"], name
        assert list(cfg["mean"]) == pre["mean"] and list(cfg["std"]) == pre["std"], name
        checked += 1
    assert checked >= 8  # fan_t/s/b/l, fan_b_tap/adl/tapadl, rvt_b, rvt_b_tapadl


def test_fan_pretrained_cfg_matches_the_official_fan_config() -> None:
    # TAPADL_FAN/models/{fan,tap_fan}.py `_cfg`: resize 224, crop_pct 1.0, bicubic, ImageNet mean/std
    for name in ("fan_base_16_p4_hybrid", "tap_fan_base_16_p4_hybrid", "fan_small_12_p16_224"):
        cfg = timm.models.get_pretrained_cfg(name).to_dict()
        assert (cfg["crop_pct"], cfg["interpolation"], cfg["mean"]) == (1.0, "bicubic", (0.485, 0.456, 0.406))


# -- TorchScript and torch.fx -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_torchscript_gives_the_eager_output(name: str) -> None:
    model = _create(name).eval()
    _randomize_norm_stats(model)
    x = _input(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated in torch >= 2.10
        scripted = torch.jit.script(model)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_fx_trace_forward_and_torchscript(name: str) -> None:
    model = _create(name).eval()
    _randomize_norm_stats(model)
    x = _input(name)
    with torch.inference_mode():
        eager = model(x)
        fx_out = next(iter(_fx_model(model)(x).values()))
        assert torch.equal(fx_out, eager)
        plain = torch.fx.symbolic_trace(model)  # also without timm's tracer settings
        assert torch.equal(plain(x), eager)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(_fx_model(model))
    with torch.inference_mode():
        torch.testing.assert_close(next(iter(scripted(x).values())), eager, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_fx_trace_backward_reaches_every_parameter(name: str) -> None:
    model = _fx_model(_create(name, num_classes=42).train(), train=True)
    out = next(iter(model(_input(name, batch=2)).values()))
    assert out.shape == (2, 42)
    out.mean().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_fx_trace_leaves_no_proxy_behind_in_tap() -> None:
    model = _create("tap_fan_tiny_8_p4_hybrid").eval()
    torch.fx.symbolic_trace(model)
    assert all(m.last_weights is None for m in model.modules() if isinstance(m, TokenAwarePooling))


# -- features_only / forward_intermediates ------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_features_only_outputs_match_feature_info(name: str) -> None:
    model = _create(name, features_only=True).eval()
    channels, reductions = model.feature_info.channels(), model.feature_info.reduction()
    x = _input(name)
    with torch.no_grad():
        outs = model(x)
    assert len(outs) == len(channels) >= 2
    for c, r, o in zip(channels, reductions, outs):
        assert o.shape[:2] == (1, c)
        assert o.shape[2] <= math.ceil(x.shape[2] / r) + 1 and o.shape[3] <= math.ceil(x.shape[3] / r) + 1
        assert not torch.isnan(o).any()
    assert "model.norm.weight" not in model.state_dict() and "model.head.weight" not in model.state_dict()


def test_fan_hybrid_default_features_are_the_official_segmentation_features() -> None:
    with torch.device("meta"):
        model = timm.create_model("tap_fan_base_16_p4_hybrid", features_only=True)
    assert model.feature_info.channels() == [128, 256, 448, 448]
    assert model.feature_info.reduction() == [4, 8, 16, 16]
    assert model.feature_info.module_name() == ["patch_embed.backbone.stages.0", "patch_embed.backbone.stages.1",
                                                "blocks.15", "cls_attn_blocks.1"]
    with torch.device("meta"):
        large = timm.create_model("fan_large_16_p4_hybrid", features_only=True)
        vit = timm.create_model("fan_small_12_p16_224", features_only=True)
    assert large.feature_info.module_name()[2] == "blocks.18"  # the official out_idx of FAN-L
    assert vit.feature_info.module_name() == ["blocks.4", "blocks.7", "blocks.11", "cls_attn_blocks.1"]


@pytest.mark.parametrize("name", NAMES)
def test_forward_intermediates_agrees_with_forward_features(name: str) -> None:
    model = _create(name).eval()
    _randomize_norm_stats(model)
    x = _input(name)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x), atol=0, rtol=0)
        assert len(inter) == len(model.feature_info)
        for info, f in zip(model.feature_info, inter):
            assert f.shape[1] == info["num_chs"]
            assert f.shape[2:] == (math.ceil(x.shape[2] / info["reduction"]), math.ceil(x.shape[3] / info["reduction"]))
        nlc = model.forward_intermediates(x, indices=2, output_fmt="NLC", intermediates_only=True)
        for f, g in zip(nlc, inter[-2:]):
            torch.testing.assert_close(f, g.flatten(2).transpose(1, 2), atol=0, rtol=0)
        early = model.forward_intermediates(x, indices=[0, 1], stop_early=True, intermediates_only=True)
        for f, g in zip(early, inter[:2]):
            torch.testing.assert_close(f, g, atol=0, rtol=0)
        normed = model.forward_intermediates(x, indices=[-1], norm=True, intermediates_only=True)[0]
        last = inter[-1].flatten(2).transpose(1, 2)
        torch.testing.assert_close(normed.flatten(2).transpose(1, 2), model.norm(last), atol=1e-6, rtol=1e-6)
        model.set_grad_checkpointing()
        again, _ = model.forward_intermediates(x)
        torch.testing.assert_close(again, final, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="out of range"):
        model.forward_intermediates(x, indices=[len(model.feature_info)])


@pytest.mark.parametrize("name", NAMES)
def test_pruned_model_returns_the_same_features(name: str) -> None:
    model = _create(name).eval()
    _randomize_norm_stats(model)
    x = _input(name)
    with torch.no_grad():
        full = model.forward_intermediates(x, intermediates_only=True)
        wanted = [0, 1] if len(full) > 2 else [0]
        taken = model.prune_intermediate_layers(wanted, prune_norm=True)
        pruned = model.forward_intermediates(x, indices=wanted, intermediates_only=True)
    assert taken == wanted
    for f, g in zip(pruned, [full[i] for i in wanted]):
        torch.testing.assert_close(f, g, atol=0, rtol=0)
    keys = model.state_dict()
    assert not any(k.startswith(("head.", "norm.")) for k in keys)


def test_fan_pruning_keeps_class_attention_only_when_its_output_is_requested() -> None:
    model = _create("tap_fan_tiny_8_p4_hybrid")
    model.prune_intermediate_layers([0, 1, 3, -1], prune_norm=True)
    assert len(model.blocks) == 2 and len(model.cls_attn_blocks) == 2 and model.cls_token is not None
    model = _create("tap_fan_tiny_8_p4_hybrid")
    model.prune_intermediate_layers([0, 2], prune_norm=True)
    assert len(model.blocks) == 1 and len(model.cls_attn_blocks) == 0 and model.cls_token is None


# -- TAP on non-square token grids --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [n for n in NAMES if "tap_" in n])
def test_every_tap_sees_its_true_non_square_grid(name: str) -> None:
    """Each TAP gets the true (H, W) of its block's token grid (derived here from the input size alone), and its
    output equals the unfold formulation applied to that (H, W) map of the block input."""
    model = _create(name).eval()
    _randomize_norm_stats(model)
    x = _input(name)
    seen: list[tuple[int, int]] = []

    def true_grid(module_name: str) -> tuple[int, int]:
        stage = int(module_name.split(".")[1]) if module_name.startswith("transformers.") else 0
        return tuple(math.ceil(size / 16 / 2 ** stage) for size in x.shape[2:])

    def make_check(expected: tuple[int, int]):
        def check(module: TokenAwarePooling, args: tuple, output: torch.Tensor) -> None:
            tokens, grid = args
            assert tuple(grid) == expected
            seen.append(expected)
            B, _, C = tokens.shape
            fmap = tokens.transpose(1, 2).reshape(B, C, *expected)  # (B, C, H, W) built from the true grid
            reference = tap_reference_unfold(module, fmap).flatten(2).transpose(1, 2)  # (B, N, C)
            torch.testing.assert_close(output, reference, atol=1e-5, rtol=1e-5)
        return check

    handles = [m.register_forward_hook(make_check(true_grid(n)))
               for n, m in model.named_modules() if isinstance(m, TokenAwarePooling)]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    assert len(seen) == len(handles) > 0
    assert any(H != W for H, W in seen)


def test_tap_transposed_input_gives_transposed_pooling_with_symmetric_predictor() -> None:
    """With a transpose-symmetric predictor, TAP of the transposed grid is the transposed TAP (a non-square check that
    does not rely on any other implementation)."""
    torch.manual_seed(0)
    tap = TokenAwarePooling(6, 4).eval()
    with torch.no_grad():
        for conv in (tap.proj[0], tap.proj[2]):
            conv.weight.copy_((conv.weight + conv.weight.transpose(-1, -2)) / 2)
        tap.proj[1].running_mean.normal_(0, 0.1)
    fmap = torch.randn(2, 6, 5, 9)
    with torch.no_grad():
        out = tap.forward_map(fmap)
        out_t = tap.forward_map(fmap.transpose(-1, -2).contiguous())
    torch.testing.assert_close(out_t, out.transpose(-1, -2), atol=1e-6, rtol=1e-6)
