"""Token overfocusing: few input tokens (columns) receive most of the attention of all output tokens (rows).

All four measures look at one layer; `row_similarity`, `topk_column_mass` and `column_gini` use the head-averaged
map (as the paper's figures and the ADL do), `row_entropy` averages per-head entropies.

Rows are queries (N_q), columns keys (N_k); for self-attention N_q = N_k = N. When the queries and keys differ
(spatial reduction, pooling, subsampling, class attention) every measure is over the N_k keys: the threshold of
`row_similarity` is tau / N_k (tau times uniform attention over the keys), `topk_column_mass` counts k of the N_k
columns (k / N_k for uniform attention), `row_entropy` is at most log N_k, `column_gini` compares the N_k column sums.
`row_similarity` compares queries with each other, so it needs N_q >= 2 (one query is trivially similar to the
mean of itself: it raises ValueError rather than return a meaningless 1).
"""

from __future__ import annotations

import torch

from attnprobe.metrics._checks import EPS, as_maps, cosine

#: Names of the values `overfocusing` returns, in display order.
OVERFOCUS_METRICS = ("row_similarity", "topk_column_mass", "row_entropy", "column_gini")


def row_similarity(attn: torch.Tensor, tau: float = 2.0) -> torch.Tensor:
    """The Attention Diversification Loss of one layer (paper Eq. 1-2), per image.

    Heads are averaged; entries of each row below tau/N_k are zeroed; the mean row (of the un-thresholded rows, as
    the official code) is thresholded the same way; the result is the cosine of each thresholded row with the
    thresholded mean row, averaged over rows. High values mean all queries look at the same few keys.

    Args:
        attn: (B, H, N_q, N_k) with N_q >= 2.
        tau: threshold in units of the uniform attention 1/N_k (the paper uses 2).

    Returns:
        (B,). Uniform attention gives 0 for tau > 1 (every entry is filtered out) and 1 for tau <= 1.

    Raises:
        ValueError: for a single query (N_q = 1, e.g. class attention), where the measure is undefined.
    """
    a = as_maps(attn).mean(1)  # (B, N_q, N_k)
    if a.shape[-2] < 2:
        raise ValueError("row_similarity compares queries with their mean and needs N_q >= 2; got one query "
                         f"(map {tuple(attn.shape)}), e.g. class attention")
    thr = tau / a.shape[-1]
    rows = a * (a >= thr)  # (B, N_q, N_k)
    mean_row = a.mean(1, keepdim=True)  # (B, 1, N_k)
    mean_row = mean_row * (mean_row >= thr)
    return cosine(rows, mean_row.expand_as(rows)).mean(-1)  # (B,)


def _column_sums(attn: torch.Tensor) -> torch.Tensor:
    return as_maps(attn).mean(1).sum(1)  # (B, N_k): attention each key receives, heads averaged


def topk_column_mass(attn: torch.Tensor, k: int = 5) -> torch.Tensor:
    """Share of all attention received by the k most-attended columns of the head-averaged map.

    Args:
        attn: (B, H, N_q, N_k).
        k: number of columns (clipped to N_k).

    Returns:
        (B,) in [k/N_k, 1]; k/N_k for uniform attention, 1 when all rows point at <= k columns.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    cols = _column_sums(attn)
    k = min(int(k), cols.shape[-1])
    return cols.topk(k, dim=-1).values.sum(-1) / cols.sum(-1).clamp_min(EPS)


def row_entropy(attn: torch.Tensor) -> torch.Tensor:
    """Mean over heads and rows of each row's entropy, in nats (0 log 0 = 0).

    Returns:
        (B,) in [0, log N_k]; log N_k for uniform attention, 0 for one-hot rows.
    """
    a = as_maps(attn)
    plogp = torch.where(a > 0, a * torch.log(a.clamp_min(torch.finfo(a.dtype).tiny)), torch.zeros_like(a))
    return (0.0 - plogp.sum(-1)).mean((1, 2))  # (B,); "0.0 -" keeps one-hot rows at +0, not -0


def column_gini(attn: torch.Tensor) -> torch.Tensor:
    """Gini coefficient of the column sums of the head-averaged map.

    Returns:
        (B,) in [0, (N_k-1)/N_k]; 0 when every column receives the same attention, (N_k-1)/N_k when one column gets
        it all.
    """
    cols = _column_sums(attn).sort(dim=-1).values  # (B, N_k), ascending
    n = cols.shape[-1]
    rank = torch.arange(1, n + 1, device=cols.device, dtype=cols.dtype)
    # G = sum_i (2i - n - 1) x_(i) / (n sum_i x_i), the sorted form of the mean absolute difference
    return ((2 * rank - n - 1) * cols).sum(-1) / (n * cols.sum(-1)).clamp_min(EPS)


def overfocusing(attn: torch.Tensor, k: int = 5, tau: float = 2.0) -> dict[str, torch.Tensor]:
    """All overfocusing measures of one layer.

    Args:
        attn: (B, H, N_q, N_k) post-softmax attention.
        k: columns counted by `topk_column_mass`.
        tau: threshold of `row_similarity` (in units of 1/N_k).

    Returns:
        `{"row_similarity", "topk_column_mass", "row_entropy", "column_gini"}`, each (B,); `row_similarity` is left
        out for a single query (N_q = 1), where it is undefined.
    """
    a = as_maps(attn)
    out = {"row_similarity": row_similarity(a, tau=tau)} if a.shape[-2] >= 2 else {}
    return {**out, "topk_column_mass": topk_column_mass(a, k=k), "row_entropy": row_entropy(a),
            "column_gini": column_gini(a)}
