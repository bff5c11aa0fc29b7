"""Token overfocusing: few input tokens (columns) receive most of the attention of all output tokens (rows).

All four measures look at one layer; `row_similarity`, `topk_column_mass` and `column_gini` use the head-averaged
map (as the paper's figures and the ADL do), `row_entropy` averages per-head entropies.
"""

from __future__ import annotations

import torch

from attnprobe.metrics._checks import EPS, as_maps, cosine

#: Names of the values `overfocusing` returns, in display order.
OVERFOCUS_METRICS = ("row_similarity", "topk_column_mass", "row_entropy", "column_gini")


def row_similarity(attn: torch.Tensor, tau: float = 2.0) -> torch.Tensor:
    """The Attention Diversification Loss of one layer (paper Eq. 1-2), per image.

    Heads are averaged; entries of each row below tau/N are zeroed; the mean row (of the un-thresholded rows, as the
    official code) is thresholded the same way; the result is the cosine of each thresholded row with the thresholded
    mean row, averaged over rows. High values mean all output tokens look at the same few input tokens.

    Args:
        attn: (B, H, N, N).
        tau: threshold in units of the uniform attention 1/N (the paper uses 2).

    Returns:
        (B,). Uniform attention gives 0 for tau > 1 (every entry is filtered out) and 1 for tau <= 1.
    """
    a = as_maps(attn).mean(1)  # (B, N, N)
    thr = tau / a.shape[-1]
    rows = a * (a >= thr)  # (B, N, N)
    mean_row = a.mean(1, keepdim=True)  # (B, 1, N)
    mean_row = mean_row * (mean_row >= thr)
    return cosine(rows, mean_row.expand_as(rows)).mean(-1)  # (B,)


def _column_sums(attn: torch.Tensor) -> torch.Tensor:
    return as_maps(attn).mean(1).sum(1)  # (B, N): attention each input token receives, heads averaged


def topk_column_mass(attn: torch.Tensor, k: int = 5) -> torch.Tensor:
    """Share of all attention received by the k most-attended columns of the head-averaged map.

    Args:
        attn: (B, H, N, N).
        k: number of columns (clipped to N).

    Returns:
        (B,) in [k/N, 1]; k/N for uniform attention, 1 when all rows point at <= k columns.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    cols = _column_sums(attn)
    k = min(int(k), cols.shape[-1])
    return cols.topk(k, dim=-1).values.sum(-1) / cols.sum(-1).clamp_min(EPS)


def row_entropy(attn: torch.Tensor) -> torch.Tensor:
    """Mean over heads and rows of each row's entropy, in nats (0 log 0 = 0).

    Returns:
        (B,) in [0, log N]; log N for uniform attention, 0 for one-hot rows.
    """
    a = as_maps(attn)
    plogp = torch.where(a > 0, a * torch.log(a.clamp_min(torch.finfo(a.dtype).tiny)), torch.zeros_like(a))
    return (0.0 - plogp.sum(-1)).mean((1, 2))  # (B,); "0.0 -" keeps one-hot rows at +0, not -0


def column_gini(attn: torch.Tensor) -> torch.Tensor:
    """Gini coefficient of the column sums of the head-averaged map.

    Returns:
        (B,) in [0, (N-1)/N]; 0 when every column receives the same attention, (N-1)/N when one column gets it all.
    """
    cols = _column_sums(attn).sort(dim=-1).values  # (B, N), ascending
    n = cols.shape[-1]
    rank = torch.arange(1, n + 1, device=cols.device, dtype=cols.dtype)
    # G = sum_i (2i - n - 1) x_(i) / (n sum_i x_i), the sorted form of the mean absolute difference
    return ((2 * rank - n - 1) * cols).sum(-1) / (n * cols.sum(-1)).clamp_min(EPS)


def overfocusing(attn: torch.Tensor, k: int = 5, tau: float = 2.0) -> dict[str, torch.Tensor]:
    """All overfocusing measures of one layer.

    Args:
        attn: (B, H, N, N) post-softmax attention.
        k: columns counted by `topk_column_mass`.
        tau: threshold of `row_similarity` (in units of 1/N).

    Returns:
        `{"row_similarity", "topk_column_mass", "row_entropy", "column_gini"}`, each (B,).
    """
    a = as_maps(attn)
    return {
        "row_similarity": row_similarity(a, tau=tau),
        "topk_column_mass": topk_column_mass(a, k=k),
        "row_entropy": row_entropy(a),
        "column_gini": column_gini(a),
    }
