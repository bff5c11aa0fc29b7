"""Attention stability: how much a map changes between two runs of the same image (paper Fig. 1 right, Fig. 5)."""

from __future__ import annotations

import torch

from attnprobe.metrics._checks import EPS, as_maps, cosine


def attention_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity between the flattened N_q x N_k maps of the same image and head in two runs.

    Defined for any N_q, N_k (spatial-reduction, pooling, class attention) as long as both runs have the same shape,
    which they do for the same model and input size: the same queries and keys are compared entry by entry.

    Args:
        a: (B, H, N_q, N_k) attention of the first run (e.g. clean images).
        b: (B, H, N_q, N_k) attention of the second run (e.g. the same images corrupted).

    Returns:
        (B, H); 1 for identical maps, 0 for maps with disjoint support.
    """
    a, b = as_maps(a, "a"), as_maps(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    b = b.to(a.dtype)
    if a.shape[-1] * a.shape[-2] <= _FLAT_MAX:
        return cosine(a.flatten(2), b.flatten(2))  # (B, H)
    # NOTE: a segmentation window's maps have 4096 x 4096 entries; one dot per row (BLAS), then a float64 sum over
    # the rows, is 3x faster than `vecdot` over the flattened map and as accurate (1e-7; a single float32 BLAS dot
    # over 16.7 M entries is off by several percent)
    dot = _row_dots(a, b)
    norms = _row_dots(a, a) * _row_dots(b, b)
    return (dot / norms.sqrt().clamp_min(EPS)).to(a.dtype)  # (B, H)


#: Maps up to this many entries use one exact `vecdot` per head; larger ones sum per-row dots (`attention_cosine`).
_FLAT_MAX = 1 << 16


def _row_dots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, H, N_q, N_k) x 2 -> (B, H) float64: sum over rows of the per-row dot products."""
    return torch.einsum("bhqk,bhqk->bhq", a, b).sum(-1, dtype=torch.float64)
