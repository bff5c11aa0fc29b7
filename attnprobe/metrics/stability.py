"""Attention stability: how much a map changes between two runs of the same image (paper Fig. 1 right, Fig. 5)."""

from __future__ import annotations

import torch

from attnprobe.metrics._checks import as_maps, cosine


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
    return cosine(a.flatten(2), b.flatten(2).to(a.dtype))  # (B, H)
