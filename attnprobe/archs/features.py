"""Helpers for ``forward_intermediates`` / ``features_only``: index selection and token-to-map formatting.

The conventions are timm's (``timm.models.feature_take_indices``): ``indices=None`` takes every feature, an int ``n``
the last ``n``, a sequence the listed ones (negative values count from the end). Output formats: ``"NCHW"`` maps or
``"NLC"`` token sequences.
"""

from typing import List, Optional, Sequence, Tuple, Union

import torch

__all__ = ["take_indices", "tokens_to_format", "map_to_format", "OUTPUT_FORMATS"]

OUTPUT_FORMATS = ("NCHW", "NLC")


def take_indices(num_features: int, indices: Optional[Union[int, Sequence[int]]] = None) -> Tuple[List[int], int]:
    """Absolute feature indices to return, and the largest of them.

    Args:
        num_features: how many features the model offers.
        indices: None (all), an int n (the last n) or a sequence of indices (negative from the end).

    Raises:
        ValueError: an index out of range, or an empty selection.
    """
    if indices is None:
        indices = num_features
    if isinstance(indices, int):
        if not 0 < indices <= num_features:
            raise ValueError(f"last-n feature count {indices} is out of range 1..{num_features}")
        taken = list(range(num_features - indices, num_features))
    else:
        taken = []
        for i in indices:
            idx = num_features + int(i) if i < 0 else int(i)
            if not 0 <= idx < num_features:
                raise ValueError(f"feature index {i} is out of range for {num_features} features")
            taken.append(idx)
        if not taken:
            raise ValueError("no feature index given")
    return taken, max(taken)


def tokens_to_format(x: torch.Tensor, H: int, W: int, output_fmt: str) -> torch.Tensor:
    """Patch tokens (B, H*W, C) -> (B, C, H, W) for "NCHW" (contiguous, as timm and the official code return them),
    unchanged for "NLC"."""
    if output_fmt == "NLC":
        return x
    B, _, C = x.shape
    return x.reshape(B, H, W, C).permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)


def map_to_format(x: torch.Tensor, output_fmt: str) -> torch.Tensor:
    """A feature map (B, C, H, W) unchanged for "NCHW", (B, H*W, C) for "NLC"."""
    if output_fmt == "NLC":
        return x.flatten(2).transpose(1, 2)  # (B, N, C)
    return x
