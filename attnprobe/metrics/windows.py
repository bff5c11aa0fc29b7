"""Windowed attention (Swin): per-window values → per-image values."""

from __future__ import annotations

import torch


def window_mean(values: torch.Tensor, num_windows: int) -> torch.Tensor:
    """Average per-window metric values over the windows of each image.

    Swin's window attention gives (B * nW, H, n, n) maps, windows of one image being consecutive (timm's
    `window_partition` order). A metric computed on them returns (B * nW, ...); this returns (B, ...).

    Args:
        values: (B * num_windows, ...) metric values.
        num_windows: windows per image (1 for global attention, which returns `values` unchanged).
    """
    if num_windows == 1:
        return values
    if values.shape[0] % num_windows:
        raise ValueError(f"{values.shape[0]} values do not split into windows of {num_windows} per image")
    return values.reshape(values.shape[0] // num_windows, num_windows, *values.shape[1:]).mean(1)
