"""The ConvNeXt-style convolutional stem of the FAN hybrid models (our implementation, official names).

FAN-Hybrid feeds the image through the first two ConvNeXt stages (patchify 4x4 stem, 7x7 depthwise blocks) and then
a 2x2 patch projection, giving a 14x14 token grid at 224 px. State-dict names match the official checkpoints:
``stem.{0,1}``, ``stages.N.downsample.{0,1}``, ``stages.N.blocks.M.{gamma, conv_dw, norm, mlp.fc1, mlp.fc2}``
(the 1x1 "convs" of the MLP are stored as (out, in, 1, 1) conv weights).
"""

from collections.abc import Sequence
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from attnprobe.archs.checkpointing import checkpoint_seq

__all__ = ["LayerNormCL", "LayerNorm2d", "ConvNeXtStem", "HybridEmbed"]


def layer_norm_last(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                    unbiased: bool) -> torch.Tensor:
    """LayerNorm over the last axis; ``unbiased`` divides the variance by C - 1 (see ``LayerNormCL``)."""
    channels = weight.shape[0]
    if not unbiased:
        return F.layer_norm(x, [channels], weight, bias, eps)
    k2 = (channels - 1) / channels
    return F.layer_norm(x, [channels], weight * k2 ** 0.5, bias, eps * k2)


class LayerNormCL(nn.LayerNorm):
    """LayerNorm over the last axis, optionally with the unbiased variance (divide by C - 1).

    NOTE: the official ``LayerNorm2d`` uses ``F.layer_norm`` on contiguous input but falls back to
    ``torch.var_mean`` (unbiased variance) otherwise, and its fast path returns a permuted, i.e. channels-last,
    tensor. So in the official stem only the stem norm sees contiguous input; every tensor after it is channels-last
    and every block and downsample norm takes the unbiased fallback, on any device. ``unbiased=True`` reproduces
    that (verified against the fixtures). The unbiased form is computed exactly with the fast kernel:
    ``(x - m) / sqrt(v * C / (C - 1) + eps) = k * (x - m) / sqrt(v + eps * k^2)`` with ``k = sqrt((C - 1) / C)``.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6, unbiased: bool = False) -> None:
        super().__init__(num_channels, eps=eps)
        self.unbiased = unbiased

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm_last(x, self.weight, self.bias, self.eps, self.unbiased)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", unbiased={self.unbiased}"


class LayerNorm2d(LayerNormCL):
    """LayerNorm over the channels of a (B, C, H, W) map (eps 1e-6, as in ConvNeXt)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # NOTE: no super().forward(): TorchScript cannot compile it.
        x = layer_norm_last(x.permute(0, 2, 3, 1), self.weight, self.bias, self.eps, self.unbiased)  # (B, H, W, C)
        return x.permute(0, 3, 1, 2)  # (B, C, H, W)


class ConvMlp(nn.Module):
    """1x1-conv MLP (fc1 -> GELU -> fc2) stored as convs, run as linear layers on channels-last (B, H, W, C) input."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, kernel_size=1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        x = F.linear(x, self.fc1.weight.flatten(1), self.fc1.bias)  # (B, H, W, hidden)
        x = self.act(x)
        return F.linear(x, self.fc2.weight.flatten(1), self.fc2.bias)  # (B, H, W, C)


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7 conv -> LayerNorm -> MLP -> layer scale, with a residual."""

    def __init__(self, dim: int, mlp_ratio: int = 4, ls_init_value: float = 1e-6, unbiased_norm: bool = True) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = LayerNormCL(dim, eps=1e-6, unbiased=unbiased_norm)  # channels-last; same params as LayerNorm2d
        self.mlp = ConvMlp(dim, mlp_ratio * dim)
        self.gamma = nn.Parameter(torch.full((dim,), ls_init_value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_dw(x).permute(0, 2, 3, 1)  # (B, H, W, C)
        y = self.mlp(self.norm(y)) * self.gamma
        return x + y.permute(0, 3, 1, 2)  # (B, C, H, W)


class ConvNeXtStage(nn.Module):
    """Optional downsample (LayerNorm2d + 2x2 stride-2 conv) followed by ConvNeXt blocks."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, depth: int, unbiased_norm: bool = True) -> None:
        super().__init__()
        if in_chs != out_chs or stride > 1:
            self.downsample = nn.Sequential(LayerNorm2d(in_chs, unbiased=unbiased_norm),
                                            nn.Conv2d(in_chs, out_chs, stride, stride=stride))
        else:
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(*[ConvNeXtBlock(out_chs, unbiased_norm=unbiased_norm) for _ in range(depth)])
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class ConvNeXtStem(nn.Module):
    """The truncated ConvNeXt used by FAN-Hybrid: 4x4 patchify stem and ``len(depths)`` stages.

    Args:
        depths: blocks per stage, e.g. (3, 3) (large: (3, 5)).
        dims: channels per stage; only the first ``len(depths)`` are used (official: 128, 256, 512, 1024).
        in_chans: image channels.
        unbiased_norm: block and downsample norms use the unbiased variance, as the official code effectively does
            (see ``LayerNormCL``); False gives the textbook (biased) LayerNorm everywhere.
    """

    def __init__(self, depths: Sequence[int] = (3, 3), dims: Sequence[int] = (128, 256, 512, 1024),
                 in_chans: int = 3, unbiased_norm: bool = True) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_chans, dims[0], kernel_size=4, stride=4), LayerNorm2d(dims[0]))
        stages = []
        prev = dims[0]
        for i, depth in enumerate(depths):
            stages.append(ConvNeXtStage(prev, dims[i], stride=2 if i > 0 else 1, depth=depth,
                                        unbiased_norm=unbiased_norm))
            prev = dims[i]
        self.stages = nn.Sequential(*stages)
        self.num_features = prev
        self.stage_channels = [int(d) for d in dims[: len(depths)]]
        self.stage_reductions = [4 * 2 ** i for i in range(len(depths))]
        self.reduction = self.stage_reductions[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C, H / reduction, W / reduction), in channels-last memory format."""
        # NOTE: channels-last memory makes every permute to (B, H, W, C) below a free view (no copies).
        return self.stages(self.stem(x.contiguous(memory_format=torch.channels_last)))

    def forward_stages(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The output of every stage, (B, C_i, H / 4 / 2^i, W / 4 / 2^i) each (channels-last memory)."""
        x = self.stem(x.contiguous(memory_format=torch.channels_last))
        outs: List[torch.Tensor] = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs


class HybridEmbed(nn.Module):
    """CNN backbone followed by a ``patch_size`` x ``patch_size`` projection to ``embed_dim`` tokens."""

    def __init__(self, backbone: ConvNeXtStem, embed_dim: int, patch_size: int = 2) -> None:
        super().__init__()
        self.backbone = backbone
        self.patch_size = patch_size
        self.proj = nn.Conv2d(backbone.num_features, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """(B, 3, H, W) -> tokens (B, N, C) and grid (Hp, Wp)."""
        return self.project(self.backbone(x))

    def forward_with_stages(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int], List[torch.Tensor]]:
        """Like ``forward``, plus the output of every stem stage (see ``ConvNeXtStem.forward_stages``)."""
        maps = self.backbone.forward_stages(x)
        tokens, grid = self.project(maps[-1])
        return tokens, grid, maps

    def project(self, feature_map: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """The stem's last feature map (B, C', H', W') -> tokens (B, N, C) and grid (Hp, Wp)."""
        x = self.proj(feature_map)  # (B, C, Hp, Wp)
        Hp, Wp = x.shape[2], x.shape[3]
        return x.flatten(2).transpose(1, 2), (Hp, Wp)  # (B, N, C)
