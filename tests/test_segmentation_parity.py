"""Parity of our FAN / TAP-FAN segmentation models with the official TAP/ADL code (mmseg 0.13), on the fixtures.

Each fixture (``shared/reference/segmentation``) holds an official EncoderDecoder's config, random weights and
outputs: backbone features, head logits, whole and slide logits (with the slide count), predictions, token and
class attention maps, TAP branch weights, ADL values, and the same on a non-square input. Ours must load the weights
strictly and reproduce every tensor within 1e-4 (ADL within 1e-5). Where the official code fails (TAP-FAN whole-image
inference on a non-square token grid), ours must work; it is checked against the official TAP algorithm with the true
(H, W) grid.
"""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import attnprobe
from attnprobe import AttentionCapture, adl_loss
from attnprobe.archs.tap import TokenAwarePooling, tap_reference_unfold
from attnprobe.segmentation.inference import infer, slide_count, slide_windows

REF = Path(__file__).resolve().parents[2] / "shared" / "reference" / "segmentation"
FIXTURES = ["seg_tap_fan_hybrid_small", "seg_fan_hybrid_small"]
ATOL = 1e-4


def _load(name: str) -> dict:
    path = REF / f"{name}.pt"
    if not path.exists():
        pytest.skip(f"segmentation fixture {path} not available")
    return torch.load(path, weights_only=True)


def _close(ours: torch.Tensor, theirs: torch.Tensor, atol: float = ATOL) -> None:
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, atol=atol, rtol=0)


def _build(ref: dict) -> torch.nn.Module:
    model = attnprobe.build_from_config(ref["config"])
    model.load_state_dict(ref["state_dict"], strict=True)
    return model.eval()


@pytest.fixture(scope="module", params=FIXTURES)
def case(request: pytest.FixtureRequest) -> tuple[dict, torch.nn.Module]:
    ref = _load(request.param)
    return ref, _build(ref)


def _official_adl_squeezed(attn: list[torch.Tensor], th: float = 2.0) -> torch.Tensor:
    """The official segmentation ADL (encoder_decoder.py:306-321) as written, including its ``.squeeze()``."""
    total, counter = torch.zeros(()), 1e-6
    for a in attn:
        mask = a.mean(dim=1).squeeze()  # NOTE: with B = 1 the batch axis disappears here
        threshold = th / mask.shape[-1]
        score = mask.mean(dim=1, keepdim=True)  # B = 1: the mean over KEYS (1/N), not the mean row
        mask = (mask > threshold) * mask
        score = (score > threshold) * score
        total = total + F.cosine_similarity(score, mask, dim=-1).mean()
        counter += 1
    return total / counter


# -- weights and features -----------------------------------------------------------------------------------------
def test_state_dict_is_exactly_the_official_one(case: tuple) -> None:
    ref, model = case
    ours = model.state_dict()
    assert list(ours) == list(ref["state_dict"])  # same keys, even in the same order
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in ref["state_dict"].items()}
    assert "decode_head.conv_seg.weight" in ours and "backbone.norm.weight" not in ours


def test_backbone_features_match(case: tuple) -> None:
    ref, model = case
    with torch.no_grad():
        feats = model.extract_features(ref["input"])
    assert [tuple(f.shape) for f in feats] == [tuple(s) for s in ref["config"]["feature_shapes"]]
    for ours, theirs in zip(feats, ref["features"]):
        _close(ours, theirs)


def test_features_come_from_the_classification_forward_intermediates(case: tuple) -> None:
    ref, model = case
    assert isinstance(model.backbone, attnprobe.archs.FAN)
    with torch.no_grad():
        _, feats = model.backbone.forward_intermediates(ref["input"], indices=model.feature_indices)
    for ours, theirs in zip(feats, ref["features"]):
        _close(ours, theirs)


def test_head_and_whole_logits_match(case: tuple) -> None:
    ref, model = case
    with torch.no_grad():
        _close(model.decode_head(ref["features"]), ref["head_logits"])
        whole = model(ref["input"])
        _close(whole, ref["whole_logits"])
        torch.testing.assert_close(infer(model, ref["input"], mode="whole"), whole, atol=0, rtol=0)


# -- slide inference ----------------------------------------------------------------------------------------------
def test_slide_windows_and_count_are_the_official_ones(case: tuple) -> None:
    ref, _ = case
    cfg = ref["config"]["test_cfg"]
    crop, stride = tuple(cfg["crop_size"]), tuple(cfg["stride"])
    assert [list(w) for w in slide_windows(192, 192, crop, stride)] == ref["config"]["slide_windows"]
    assert [list(w) for w in slide_windows(128, 256, crop, stride)] == ref["config"]["slide_windows_wide"]
    assert torch.equal(slide_count(192, 192, crop, stride), ref["slide_count"])


def test_slide_logits_and_predictions_match(case: tuple) -> None:
    ref, model = case
    with torch.no_grad():
        slide = infer(model, ref["input"])  # the model's test_cfg: slide, crop 128, stride 96
        explicit = infer(model, ref["input"], mode="slide", crop=(128, 128), stride=(96, 96))
        batched = infer(model, ref["input"], mode="slide", crop=(128, 128), stride=(96, 96), batch_windows=3)
    _close(slide, ref["slide_logits"])
    assert torch.equal(slide, explicit)
    torch.testing.assert_close(batched, slide, atol=1e-5, rtol=0)
    with torch.no_grad():
        whole = model(ref["input"])
    for ours, theirs, pred in ((slide, ref["slide_logits"], ref["pred"]), (whole, ref["whole_logits"],
                                                                           ref["pred_whole"])):
        top2 = theirs.topk(2, dim=1).values
        near_tie = (top2[:, 0] - top2[:, 1]) < 2 * ATOL  # argmax may differ only where the official top-2 tie
        assert ((ours.argmax(1) == pred) | near_tie).all()
        assert (ours.argmax(1) == pred).float().mean() > 0.999


def test_slide_on_a_wide_image_matches(case: tuple) -> None:
    ref, model = case
    with torch.no_grad():
        wide = infer(model, ref["input_wide"], mode="slide", crop=(128, 128), stride=(96, 96))
    _close(wide, ref["slide_logits_wide"])


# -- attention, TAP, ADL ------------------------------------------------------------------------------------------
def test_attention_capture_gives_the_official_maps(case: tuple) -> None:
    ref, model = case
    with torch.no_grad(), AttentionCapture(model) as cap:
        logits = model(ref["input"])
    _close(logits, ref["whole_logits"])
    assert len(cap.maps) == len(ref["attn"]) and len(cap.cls_maps) == len(ref["cls_attn"])
    for ours, theirs in zip(cap.maps, ref["attn"]):
        _close(ours, theirs)
    for ours, theirs in zip(cap.cls_maps, ref["cls_attn"]):
        _close(ours, theirs)


def test_tap_branch_weights_match(case: tuple) -> None:
    ref, model = case
    if "tap_pred_scale" not in ref:
        pytest.skip("FAN baseline: no TAP")
    with torch.no_grad():
        model(ref["input"])
    taps = [blk.dilation_predictor for blk in model.backbone.blocks]
    assert len(taps) == len(ref["tap_pred_scale"])
    for tap, theirs in zip(taps, ref["tap_pred_scale"]):
        _close(tap.last_weights.unsqueeze(1), theirs)  # ours (B, H, W, K), official (B, 1, H, W, K)


def test_adl_official_squeeze_is_zero_and_ours_keeps_the_batch_axis(case: tuple) -> None:
    """The fixture's ``adl`` is 0.0 because the official function squeezes away the batch axis at B = 1 (training used
    one image per GPU), so its "mean row" is the mean over keys, 1/N < tau/N, and is thresholded to zero. Our
    ``adl_loss`` keeps the batch axis: it equals the official value on the maps duplicated to B = 2."""
    ref, model = case
    with torch.no_grad(), AttentionCapture(model) as cap:
        model(ref["input"])
    assert _official_adl_squeezed(ref["attn"]).item() == ref["adl"].item() == 0.0
    assert _official_adl_squeezed(cap.maps).item() == 0.0
    assert abs(adl_loss(cap.maps, tau=2.0).item() - ref["adl_per_sample"].item()) < 1e-5
    doubled = [torch.cat([a, a]) for a in ref["attn"]]
    assert abs(_official_adl_squeezed(doubled).item() - ref["adl_per_sample"].item()) < 1e-5


# -- non-square token grids ---------------------------------------------------------------------------------------
def test_fan_whole_image_on_a_non_square_grid_matches() -> None:
    ref = _load("seg_fan_hybrid_small")
    model = _build(ref)
    assert ref["whole_wide_error"] == ""
    with torch.no_grad(), AttentionCapture(model) as cap:
        whole = model(ref["input_wide"])
        feats = model.extract_features(ref["input_wide"])
    for ours, theirs in zip(feats, ref["features_wide"]):
        _close(ours, theirs)
    with torch.no_grad():
        head = model.decode_head(feats)
    _close(head, ref["head_logits_wide"])
    _close(whole, F.interpolate(ref["head_logits_wide"], size=(128, 256), mode="bilinear", align_corners=False))
    for ours, theirs in zip(cap.maps, ref["attn_wide"]):
        _close(ours, theirs)
    for ours, theirs in zip(cap.cls_maps, ref["cls_attn_wide"]):
        _close(ours, theirs)


def _official_tap_reshape(tokens: torch.Tensor) -> torch.Tensor:
    """The official TAPFANBlock's grid reshape (tap_fan.py:545-546): N tokens as int(sqrt(N)) x int(sqrt(N))."""
    B, N, C = tokens.shape
    return tokens.reshape(B, int(N ** 0.5), int(N ** 0.5), C).permute(0, 3, 1, 2)


def test_tap_fan_whole_image_works_where_the_official_code_raises() -> None:
    ref = _load("seg_tap_fan_hybrid_small")
    model = _build(ref)
    tokens = torch.zeros(1, 8 * 16, 48)  # the 8 x 16 token grid of the 128 x 256 input
    with pytest.raises(RuntimeError) as err:
        _official_tap_reshape(tokens)
    assert f"RuntimeError: {err.value}" == ref["whole_wide_error"]  # the official failure, reproduced

    def unfold_with_true_grid(self: TokenAwarePooling, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        B, _, C = x.shape
        fmap = x.transpose(1, 2).reshape(B, C, *grid)  # (B, C, H, W), the official layout with the true (H, W)
        return tap_reference_unfold(self, fmap).flatten(2).transpose(1, 2)  # (B, N, C)

    with torch.no_grad():
        ours = model(ref["input_wide"])
        grids = [tuple(blk.dilation_predictor.last_weights.shape[1:3]) for blk in model.backbone.blocks]
        for blk in model.backbone.blocks:  # the official TAP algorithm (nn.Unfold, mean of 9 taps), grid fixed
            blk.dilation_predictor.forward = types.MethodType(unfold_with_true_grid, blk.dilation_predictor)
        reference = model(ref["input_wide"])
    assert grids == [(8, 16)] * len(grids)
    assert ours.shape == (1, 19, 128, 256) and torch.isfinite(ours).all()
    _close(ours, reference, atol=1e-5)


def test_official_reshape_silently_misshapes_a_perfect_square_non_square_grid() -> None:
    """4 x 16 = 64 tokens pass the official reshape as 8 x 8 and pool the wrong neighbours; ours uses 4 x 16."""
    torch.manual_seed(0)
    tap = TokenAwarePooling(8, 4).eval()
    tokens = torch.randn(1, 64, 8)
    with torch.no_grad():
        ours = tap(tokens, (4, 16))
        official = tap_reference_unfold(tap, _official_tap_reshape(tokens)).flatten(2).transpose(1, 2)
        true_grid = tap_reference_unfold(tap, tokens.transpose(1, 2).reshape(1, 8, 4, 16)).flatten(2).transpose(1, 2)
    torch.testing.assert_close(ours, true_grid, atol=1e-5, rtol=0)
    assert (ours - official).abs().max() > 0.1
