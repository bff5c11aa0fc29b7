"""Known answers for every attention metric (uniform attention, one-hot rows, identical heads, disjoint rows)."""

from __future__ import annotations

import math

import pytest
import torch

from attnprobe.metrics import (
    attention_cosine,
    column_gini,
    head_similarity,
    overfocusing,
    row_entropy,
    row_similarity,
    topk_column_mass,
    window_mean,
)

N = 16


def uniform(b: int = 2, h: int = 3, n: int = N) -> torch.Tensor:
    return torch.full((b, h, n, n), 1.0 / n)


def one_column(col: int = 0, b: int = 2, h: int = 3, n: int = N) -> torch.Tensor:
    a = torch.zeros(b, h, n, n)
    a[..., col] = 1.0
    return a


def diagonal(b: int = 2, h: int = 3, n: int = N) -> torch.Tensor:
    return torch.eye(n).expand(b, h, n, n).clone()


def random_maps(b: int = 2, h: int = 4, n: int = N, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (3 * torch.randn(b, h, n, n, generator=g)).softmax(-1)


# -- attention_cosine ---------------------------------------------------------------------------------------------
def test_attention_cosine_identical_maps_is_one() -> None:
    a = random_maps()
    out = attention_cosine(a, a)
    assert out.shape == (2, 4)
    torch.testing.assert_close(out, torch.ones(2, 4))


def test_attention_cosine_disjoint_maps_is_zero() -> None:
    assert attention_cosine(one_column(0), one_column(1)).abs().max() == 0


def test_attention_cosine_known_value_and_per_head() -> None:
    # uniform vs one-hot rows: <u, e> / (|u| |e|) = (N * 1/N) / (1 * sqrt(N)) = 1/sqrt(N)
    out = attention_cosine(uniform(), one_column(3))
    torch.testing.assert_close(out, torch.full((2, 3), 1 / math.sqrt(N)))
    b = uniform().clone()
    b[:, 1] = one_column(3)[:, 1]  # only head 1 changes
    out = attention_cosine(uniform(), b)
    torch.testing.assert_close(out[:, 0], torch.ones(2))
    torch.testing.assert_close(out[:, 1], torch.full((2,), 1 / math.sqrt(N)))


def test_attention_cosine_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        attention_cosine(uniform(n=4), uniform(n=5))
    with pytest.raises(ValueError):
        attention_cosine(torch.ones(2, 3, 4), torch.ones(2, 3, 4))


def test_attention_cosine_half_precision_input() -> None:
    a = random_maps()
    out = attention_cosine(a.half(), a.half())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.ones(2, 4), atol=1e-3, rtol=0)


# -- head_similarity ----------------------------------------------------------------------------------------------
def test_head_similarity_identical_heads_is_one() -> None:
    a = random_maps(h=1).expand(2, 5, N, N)
    torch.testing.assert_close(head_similarity(a), torch.ones(2))


def test_head_similarity_disjoint_heads_is_zero() -> None:
    a = torch.stack([one_column(c, h=1)[:, 0] for c in range(4)], dim=1)  # head h attends only to column h
    torch.testing.assert_close(head_similarity(a), torch.zeros(2))


def test_head_similarity_mean_over_pairs() -> None:
    # heads 0 and 1 identical, head 2 disjoint: pairs (0,1)=1, (0,2)=0, (1,2)=0 -> 1/3
    a = torch.stack([one_column(0, h=1)[:, 0], one_column(0, h=1)[:, 0], one_column(5, h=1)[:, 0]], dim=1)
    torch.testing.assert_close(head_similarity(a), torch.full((2,), 1 / 3))


def test_head_similarity_matches_brute_force() -> None:
    a = random_maps(b=3, h=4, seed=1)
    flat = a.flatten(2)
    expected = []
    for b in range(3):
        sims = [torch.nn.functional.cosine_similarity(flat[b, i], flat[b, j], dim=0)
                for i in range(4) for j in range(i + 1, 4)]
        expected.append(torch.stack(sims).mean())
    torch.testing.assert_close(head_similarity(a), torch.stack(expected))


def test_head_similarity_needs_two_heads() -> None:
    with pytest.raises(ValueError, match="at least 2 heads"):
        head_similarity(uniform(h=1))


# -- overfocusing -------------------------------------------------------------------------------------------------
def test_overfocusing_uniform_attention() -> None:
    out = overfocusing(uniform(), k=5, tau=2.0)
    assert set(out) == {"row_similarity", "topk_column_mass", "row_entropy", "column_gini"}
    assert all(v.shape == (2,) for v in out.values())
    torch.testing.assert_close(out["row_similarity"], torch.zeros(2))  # everything is below 2/N
    torch.testing.assert_close(out["topk_column_mass"], torch.full((2,), 5 / N))
    torch.testing.assert_close(out["row_entropy"], torch.full((2,), math.log(N)))
    torch.testing.assert_close(out["column_gini"], torch.zeros(2), atol=1e-6, rtol=0)
    # with tau <= 1 nothing is filtered: every row equals the mean row
    torch.testing.assert_close(row_similarity(uniform(), tau=1.0), torch.ones(2))


def test_overfocusing_one_hot_rows_on_one_column() -> None:
    out = overfocusing(one_column(7), k=5, tau=2.0)
    torch.testing.assert_close(out["row_similarity"], torch.ones(2))
    torch.testing.assert_close(out["topk_column_mass"], torch.ones(2))
    torch.testing.assert_close(out["row_entropy"], torch.zeros(2))
    torch.testing.assert_close(out["column_gini"], torch.full((2,), (N - 1) / N))


def test_overfocusing_disjoint_rows_diagonal() -> None:
    a = diagonal()
    torch.testing.assert_close(topk_column_mass(a, k=5), torch.full((2,), 5 / N))
    torch.testing.assert_close(row_entropy(a), torch.zeros(2))
    torch.testing.assert_close(column_gini(a), torch.zeros(2), atol=1e-6, rtol=0)
    # the mean row is uniform (1/N): filtered out at tau=2, kept at tau=1 where cos(e_i, u) = 1/sqrt(N)
    torch.testing.assert_close(row_similarity(a, tau=2.0), torch.zeros(2))
    torch.testing.assert_close(row_similarity(a, tau=1.0), torch.full((2,), 1 / math.sqrt(N)))


def test_row_similarity_averages_heads_first() -> None:
    # head 0 looks at column 0, head 1 at column 1: the head average gives every row [.5, .5, 0, ...]
    a = torch.cat([one_column(0, h=1), one_column(1, h=1)], dim=1)
    torch.testing.assert_close(row_similarity(a, tau=2.0), torch.ones(2))
    torch.testing.assert_close(topk_column_mass(a, k=2), torch.ones(2))
    torch.testing.assert_close(topk_column_mass(a, k=1), torch.full((2,), 0.5))


def test_row_entropy_two_way_split() -> None:
    a = torch.zeros(1, 2, 4, 4)
    a[..., :2] = 0.5
    torch.testing.assert_close(row_entropy(a), torch.full((1,), math.log(2)))


def test_column_gini_matches_mean_absolute_difference() -> None:
    a = random_maps(b=3, seed=2)
    cols = a.mean(1).sum(1)  # (B, N)
    n = cols.shape[-1]
    mad = (cols[:, :, None] - cols[:, None, :]).abs().sum((1, 2))
    expected = mad / (2 * n * cols.sum(-1))
    torch.testing.assert_close(column_gini(a), expected)


def test_topk_column_mass_k_larger_than_tokens_and_invalid_k() -> None:
    torch.testing.assert_close(topk_column_mass(random_maps(), k=10 * N), torch.ones(2))
    with pytest.raises(ValueError):
        topk_column_mass(uniform(), k=0)


def test_metrics_keep_float64() -> None:
    out = overfocusing(uniform().double())
    assert all(v.dtype == torch.float64 for v in out.values())


def test_row_similarity_matches_official_adl(reference_dir) -> None:
    """The fixtures' `adl_tau2` is the official ADL: mean over layers (counter started at 1e-6) of row similarity."""
    for name in ("fan_hybrid_small", "tap_fan_hybrid_small", "tap_fan_vit_small", "tap_rvt_small"):
        fx = torch.load(reference_dir / "official" / f"{name}.pt", weights_only=True)
        per_layer = [row_similarity(a, tau=2.0).mean() for a in fx["attn"]]
        adl = sum(per_layer) / (len(per_layer) + 1e-6)
        assert abs(adl.item() - fx["adl_tau2"].item()) < 1e-5, name


# -- windows ------------------------------------------------------------------------------------------------------
def test_window_mean() -> None:
    v = torch.arange(12.0).reshape(6, 2)  # 2 images x 3 windows, 2 heads
    torch.testing.assert_close(window_mean(v, 3), torch.tensor([[2.0, 3.0], [8.0, 9.0]]))
    assert window_mean(v, 1) is v
    with pytest.raises(ValueError):
        window_mean(v, 4)


# -- queries != keys (spatial reduction, pooling, class attention) ------------------------------------------------
def rect_uniform(nq: int = 8, nk: int = 4, b: int = 2, h: int = 3) -> torch.Tensor:
    return torch.full((b, h, nq, nk), 1.0 / nk)


def rect_one_column(col: int = 0, nq: int = 8, nk: int = 4, b: int = 2, h: int = 3) -> torch.Tensor:
    a = torch.zeros(b, h, nq, nk)
    a[..., col] = 1.0
    return a


def test_overfocusing_uses_the_key_count_when_queries_differ() -> None:
    out = overfocusing(rect_uniform(), k=1, tau=2.0)
    torch.testing.assert_close(out["row_similarity"], torch.zeros(2))  # 1/4 < 2/4: everything filtered
    torch.testing.assert_close(out["topk_column_mass"], torch.full((2,), 1 / 4))  # k / N_k, not k / N_q
    torch.testing.assert_close(out["row_entropy"], torch.full((2,), math.log(4)))
    torch.testing.assert_close(out["column_gini"], torch.zeros(2))
    torch.testing.assert_close(row_similarity(rect_uniform(), tau=1.0), torch.ones(2))  # 1/4 >= 1/4 kept
    focused = overfocusing(rect_one_column(2), k=1, tau=2.0)
    torch.testing.assert_close(focused["row_similarity"], torch.ones(2))
    torch.testing.assert_close(focused["topk_column_mass"], torch.ones(2))
    torch.testing.assert_close(focused["row_entropy"], torch.zeros(2))
    torch.testing.assert_close(focused["column_gini"], torch.full((2,), 3 / 4))  # (N_k - 1) / N_k


def test_row_similarity_is_undefined_for_one_query() -> None:
    cls_map = rect_one_column(1, nq=1, nk=5)
    with pytest.raises(ValueError, match="N_q >= 2"):
        row_similarity(cls_map)
    out = overfocusing(cls_map, k=1)
    assert "row_similarity" not in out  # left out, not a meaningless 1
    torch.testing.assert_close(out["topk_column_mass"], torch.ones(2))
    torch.testing.assert_close(out["column_gini"], torch.full((2,), 4 / 5))


def test_cosine_and_head_similarity_with_queries_differing_from_keys() -> None:
    out = attention_cosine(rect_uniform(), rect_one_column(3))
    torch.testing.assert_close(out, torch.full((2, 3), 1 / math.sqrt(4)))  # per row 1/sqrt(N_k), rows alike
    torch.testing.assert_close(attention_cosine(rect_uniform(), rect_uniform()), torch.ones(2, 3))
    heads = torch.stack([rect_one_column(0, h=1)[:, 0], rect_one_column(0, h=1)[:, 0], rect_one_column(3, h=1)[:, 0]],
                        dim=1)
    torch.testing.assert_close(head_similarity(heads), torch.full((2,), 1 / 3))
    with pytest.raises(ValueError, match="same shape"):
        attention_cosine(rect_uniform(nk=4), rect_uniform(nk=5))
