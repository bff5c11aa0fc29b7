"""SegFormer's all-MLP decode head (Xie et al., NeurIPS 2021) with the official TAP/ADL (mmseg 0.13) state-dict names.

    c1..c4 (B, C_i, H_i, W_i) --linear_c{i}--> (B, E, H_i, W_i) --bilinear to c1's size--> concat [c4, c3, c2, c1]
        --linear_fuse (1x1 conv, no bias, BatchNorm, ReLU)--> Dropout2d --linear_pred (1x1 conv)--> (B, classes, H1, W1)

Keys: ``linear_c{1..4}.proj``, ``linear_fuse.conv``, ``linear_fuse.bn``, ``linear_pred`` and ``conv_seg``: mmseg's
``BaseDecodeHead`` builds ``conv_seg`` (``channels`` -> classes) for every head, and SegFormer's forward never uses it;
it is kept so that released checkpoints load strictly. The official ``SyncBN`` has the same parameters and buffers as
``BatchNorm2d`` and computes the same in eval mode (and on one process).
"""

from collections.abc import Sequence
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SegFormerHead", "LinearEmbed", "ConvBNReLU"]


class LinearEmbed(nn.Module):
    """A linear projection of every position of a feature map: (B, C, H, W) -> (B, H*W, E) (the official ``MLP``)."""

    def __init__(self, in_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.flatten(2).transpose(1, 2))  # (B, H*W, E)


class ConvBNReLU(nn.Module):
    """mmcv's ``ConvModule`` with a norm: conv (no bias) -> BatchNorm -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.activate = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.bn(self.conv(x)))


class SegFormerHead(nn.Module):
    """The SegFormer MLP head on four feature maps.

    Args:
        in_channels: channels of the four inputs c1..c4 (FAN-B-Hybrid: 128, 256, 448, 448).
        num_classes: output classes (Cityscapes: 19).
        embed_dim: width E of the per-level projections (the official ``decoder_params.embed_dim``, 768).
        channels: input channels of the unused ``conv_seg`` (the official ``channels``, 256); only sizes that layer.
        dropout_ratio: Dropout2d before the classifier (0.1; identity in eval mode).
        in_index: which of the given features are c1..c4 (official ``in_index``).
        align_corners: of the bilinear resizes (False in every official config).
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int = 19, embed_dim: int = 768, channels: int = 256,
                 dropout_ratio: float = 0.1, in_index: Sequence[int] = (0, 1, 2, 3),
                 align_corners: bool = False) -> None:
        super().__init__()
        if len(in_channels) != 4 or len(in_index) != 4:
            raise ValueError(f"SegFormerHead needs 4 input levels, got in_channels={list(in_channels)}")
        self.in_channels = [int(c) for c in in_channels]
        self.in_index = [int(i) for i in in_index]
        self.num_classes = num_classes
        self.align_corners = align_corners
        self.conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)  # NOTE: unused, as in the official head
        self.dropout = nn.Dropout2d(dropout_ratio) if dropout_ratio > 0 else nn.Identity()
        c1, c2, c3, c4 = self.in_channels
        self.linear_c4 = LinearEmbed(c4, embed_dim)
        self.linear_c3 = LinearEmbed(c3, embed_dim)
        self.linear_c2 = LinearEmbed(c2, embed_dim)
        self.linear_c1 = LinearEmbed(c1, embed_dim)
        self.linear_fuse = ConvBNReLU(4 * embed_dim, embed_dim, kernel_size=1)
        self.linear_pred = nn.Conv2d(embed_dim, num_classes, kernel_size=1)

    def _level(self, proj: LinearEmbed, x: torch.Tensor, size: Optional[List[int]]) -> torch.Tensor:
        """One level projected to E channels, resized to ``size`` (None: kept, as the official code does for c1)."""
        B, _, H, W = x.shape
        y = proj(x).transpose(1, 2).reshape(B, -1, H, W)  # (B, E, H, W)
        if size is None:
            return y
        return F.interpolate(y, size=size, mode="bilinear", align_corners=self.align_corners)  # (B, E, H1, W1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Features (at least ``max(in_index) + 1`` maps) -> logits (B, classes, H1, W1) at c1's resolution."""
        c1, c2, c3, c4 = (features[i] for i in self.in_index)
        size = [int(c1.shape[2]), int(c1.shape[3])]
        x = torch.cat([self._level(self.linear_c4, c4, size), self._level(self.linear_c3, c3, size),
                       self._level(self.linear_c2, c2, size), self._level(self.linear_c1, c1, None)], dim=1)
        return self.linear_pred(self.dropout(self.linear_fuse(x)))  # (B, classes, H1, W1)
