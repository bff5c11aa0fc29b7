"""Known answers for TAP (token-aware average pooling) and ADL (attention diversification loss)."""

from __future__ import annotations

import math

import pytest
import torch

from attnprobe.archs import TokenAwarePooling, adl_layer, adl_loss
from attnprobe.archs.tap import dilated_box_sum, tap_reference_unfold


def _one_hot_tap(dim: int, num_scales: int, branch: int) -> TokenAwarePooling:
    """A TAP whose predictor puts (almost) all weight on one branch, whatever the input."""
    tap = TokenAwarePooling(dim, num_scales).eval()
    with torch.no_grad():
        tap.proj[0].weight.zero_()
        tap.proj[1].bias.zero_()
        tap.proj[1].bias[branch] = 1.0  # constant BN output: 1 for `branch`, 0 elsewhere
        tap.proj[2].weight.zero_()
        tap.proj[2].weight[:, :, 1, 1] = torch.eye(num_scales) * 100.0  # centre tap only: no padding effects
    return tap


def _expected_border_mean(H: int, W: int, d: int) -> torch.Tensor:
    """Zero-padded 3x3 mean (dilation d) of a map of ones: (#in-grid taps) / 9 per position."""
    rows = torch.tensor([sum(0 <= i + k * d < H for k in (-1, 0, 1)) for i in range(H)], dtype=torch.float32)
    cols = torch.tensor([sum(0 <= j + k * d < W for k in (-1, 0, 1)) for j in range(W)], dtype=torch.float32)
    return rows[:, None] * cols[None, :] / 9.0


@pytest.mark.parametrize("d", [1, 2, 3])
def test_branch_d_of_a_constant_map_is_the_zero_padded_mean(d: int) -> None:
    H, W, C = 7, 9, 4
    tap = _one_hot_tap(C, 4, branch=d)
    out = tap(torch.ones(2, H * W, C), (H, W)).reshape(2, H, W, C)
    expected = _expected_border_mean(H, W, d)
    assert torch.allclose(out, expected[None, :, :, None].expand_as(out), atol=1e-6)
    assert out[0, H // 2, W // 2, 0].item() == pytest.approx(1.0, abs=1e-6)  # interior: all 9 taps
    assert out[0, 0, 0, 0].item() == pytest.approx(4 / 9, abs=1e-6)  # corner: 4 of 9 taps


def test_branch_zero_is_identity() -> None:
    tap = _one_hot_tap(3, 4, branch=0)
    x = torch.randn(2, 5 * 6, 3)
    assert torch.allclose(tap(x, (5, 6)), x, atol=1e-6)


def test_single_scale_tap_is_identity_for_any_weights() -> None:
    torch.manual_seed(0)
    tap = TokenAwarePooling(8, 1).eval()
    with torch.no_grad():
        for p in tap.parameters():
            p.normal_()
    x = torch.randn(2, 4 * 4, 8)
    assert torch.equal(tap(x, (4, 4)), x)


@pytest.mark.parametrize("grid", [(14, 14), (5, 11), (3, 2)])
def test_efficient_tap_equals_unfold_reference(grid: tuple[int, int]) -> None:
    torch.manual_seed(0)
    H, W = grid
    tap = TokenAwarePooling(16, 5).eval()
    with torch.no_grad():
        for p in tap.parameters():
            p.normal_(0, 0.5)
        tap.proj[1].running_var.fill_(1.5)
    fmap = torch.randn(3, 16, H, W)
    ref = tap_reference_unfold(tap, fmap)
    assert (tap.forward_map(fmap) - ref).abs().max().item() < 1e-5
    tokens = fmap.flatten(2).transpose(1, 2)
    assert (tap(tokens, (H, W)) - ref.flatten(2).transpose(1, 2)).abs().max().item() < 1e-5
    w = tap.last_weights
    assert w.shape == (3, H, W, 5) and torch.allclose(w.sum(-1), torch.ones(3, H, W))


def test_tap_is_differentiable_and_trains_the_predictor() -> None:
    tap = TokenAwarePooling(4, 3).train()
    x = torch.randn(2, 9, 4, requires_grad=True)
    tap(x, (3, 3)).square().sum().backward()
    assert x.grad is not None and tap.proj[0].weight.grad is not None
    assert tap.proj[0].weight.grad.abs().sum() > 0


def test_dilated_box_sum_counts_neighbours() -> None:
    ones = torch.ones(1, 4, 4, 1)
    s = dilated_box_sum(ones, 1)[0, :, :, 0]
    assert s[0, 0] == 4 and s[0, 1] == 6 and s[1, 1] == 9
    assert torch.equal(dilated_box_sum(ones, 5), ones)  # dilation beyond the grid: only the centre


def test_tap_rejects_a_wrong_grid() -> None:
    with pytest.raises(ValueError, match="grid"):
        TokenAwarePooling(4, 2)(torch.randn(1, 10, 4), (3, 3))


# ---------------------------------------------------------------- ADL


def test_uniform_attention_known_value() -> None:
    # every entry 1/N < tau/N: everything is thresholded away -> cosine of zero vectors = 0
    N = 16
    attn = torch.full((2, 3, N, N), 1.0 / N)
    assert adl_loss([attn], tau=2.0).item() == pytest.approx(0.0, abs=1e-7)
    # with tau < 1 nothing is removed and all rows equal the mean row -> 1 (official: 1 / (1 + 1e-6))
    assert adl_loss([attn], tau=0.5).item() == pytest.approx(1.0 / (1 + 1e-6), abs=1e-7)
    assert adl_loss([attn], tau=0.5, variant="paper").item() == pytest.approx(1.0, abs=1e-7)


def test_identical_rows_give_one() -> None:
    row = torch.tensor([0.7, 0.2, 0.1, 0.0])
    attn = row.expand(1, 2, 4, 4).clone()
    assert adl_layer(attn, tau=1.0).item() == pytest.approx(1.0, abs=1e-6)
    assert adl_layer(attn, tau=1.0, variant="paper").item() == pytest.approx(1.0, abs=1e-6)


def test_disjoint_one_hot_rows_official_and_paper() -> None:
    # identity attention: rows are one-hot and disjoint; the mean row is uniform 1/N.
    N = 4
    attn = torch.eye(N).expand(1, 1, N, N)
    # official: mean row (1/N each) is not > tau/N for tau = 1 -> zeroed -> similarity 0
    assert adl_layer(attn, tau=1.0).item() == pytest.approx(0.0, abs=1e-7)
    # paper: threshold '>=' keeps 1/N; mean of thresholded rows is uniform -> cos = 1/sqrt(N)
    assert adl_layer(attn, tau=1.0, variant="paper").item() == pytest.approx(1 / math.sqrt(N), abs=1e-6)
    # with tau < 1 the official mean row survives too -> 1/sqrt(N)
    assert adl_layer(attn, tau=0.5).item() == pytest.approx(1 / math.sqrt(N), abs=1e-6)


def test_official_and_paper_differ_in_the_mean_row() -> None:
    # official mean row comes from the un-thresholded rows, the paper's from the thresholded ones
    attn = torch.tensor([[0.6, 0.3, 0.1], [0.1, 0.3, 0.6], [0.34, 0.33, 0.33]]).expand(1, 1, 3, 3)
    tau = 1.0  # threshold 1/3
    a = attn[0, 0]
    a_hat = a * (a > 1 / 3)
    m = a.mean(0)
    m_hat = m * (m > 1 / 3)
    official = torch.nn.functional.cosine_similarity(m_hat[None], a_hat, dim=-1).mean()
    a_hat_p = a * (a >= 1 / 3)
    paper = torch.nn.functional.cosine_similarity(a_hat_p.mean(0, keepdim=True), a_hat_p, dim=-1).mean()
    assert adl_layer(attn, tau).item() == pytest.approx(official.item(), abs=1e-6)
    assert adl_layer(attn, tau, variant="paper").item() == pytest.approx(paper.item(), abs=1e-6)
    assert abs(official.item() - paper.item()) > 1e-3


def test_heads_are_averaged_first() -> None:
    h0 = torch.eye(3)
    h1 = torch.eye(3).flip(0)
    attn = torch.stack([h0, h1])[None]  # (1, 2, 3, 3)
    assert adl_layer(attn, 0.5).item() == pytest.approx(adl_layer(attn.mean(1, keepdim=True), 0.5).item())


def test_loss_averages_layers_with_the_official_counter() -> None:
    torch.manual_seed(0)
    maps = [torch.softmax(torch.randn(2, 4, 9, 9) * 3, -1) for _ in range(3)]
    per_layer = torch.stack([adl_layer(m).mean() for m in maps])
    assert adl_loss(maps).item() == pytest.approx(per_layer.sum().item() / (3 + 1e-6), abs=1e-7)
    assert adl_loss(maps, variant="paper").item() == pytest.approx(
        torch.stack([adl_layer(m, variant="paper").mean() for m in maps]).mean().item(), abs=1e-7)


def test_batch_of_one_matches_batch_of_two() -> None:
    torch.manual_seed(1)
    m = torch.softmax(torch.randn(2, 4, 9, 9) * 3, -1)
    both = adl_layer(m)
    assert adl_layer(m[:1]).item() == pytest.approx(both[0].item(), abs=1e-7)


def test_adl_is_differentiable() -> None:
    logits = torch.randn(1, 2, 6, 6, requires_grad=True)
    adl_loss([torch.softmax(logits * 4, -1)], tau=1.0).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_adl_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="variant"):
        adl_loss([torch.ones(1, 1, 2, 2)], variant="nope")
    with pytest.raises(ValueError, match="shaped"):
        adl_layer(torch.ones(2, 3))
    with pytest.raises(ValueError, match="at least one"):
        adl_loss([])
