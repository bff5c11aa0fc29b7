"""Tiny demo architectures, small enough to train on two CPU cores in minutes (the bundled demo models).

``attnprobe_demo_vit_tiny``: a 64 x 64 px vision transformer with a small convolutional stem (stride 8, so an 8 x 8
grid of 64 tokens), no class token (global average pooling, like FAN's token blocks, so every attention map is
patch-to-patch and square), and optional Token-aware Average Pooling (TAP) in every block. TAP pools the block input
for the attention branch only; the residual stays un-pooled, as in TAP-FAN.

Attention follows the attnprobe contract: ``attention_kind = "token"``, a ``fused_attn`` flag, and an ``attn_drop``
submodule whose input is the post-softmax map (B, H, N, N) on the explicit path, so capture, diagnostics and the
ADL training loss all hook the same point.

    import timm, attnprobe.archs  # registers the names into timm
    model = timm.create_model("attnprobe_demo_vit_tiny", num_scales=4)   # +TAP with K = 4 branches

Importing `attnprobe.archs` registers the architectures (the zoo imports it before building a model).
"""

from __future__ import annotations

from typing import Any

import torch
from timm.layers import DropPath
from timm.models import register_model
from torch import nn

from attnprobe.archs.attention import MaskedTokenAttention
from attnprobe.archs.tap import TokenAwarePooling

__all__ = ["DemoAttention", "DemoBlock", "DemoViT", "DEMO_MEAN", "DEMO_STD", "attnprobe_demo_vit_tiny"]

#: Normalisation of the demo models (the synthetic set is centred near 0.5).
DEMO_MEAN = (0.5, 0.5, 0.5)
DEMO_STD = (0.25, 0.25, 0.25)


class DemoAttention(MaskedTokenAttention):
    """Multi-head self-attention with a fused ``qkv`` projection (the timm ViT layout): RVT's attention without its
    position mask, so the demo models follow the same attention contract and code path as the full-size ones."""

    def __init__(self, dim: int, num_heads: int = 4, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0) -> None:
        super().__init__(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop, use_mask=False)


class DemoBlock(nn.Module):
    """Pre-norm transformer block with optional TAP in front of the attention branch."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 3.0, drop_path: float = 0.0,
                 num_scales: int = 1) -> None:
        super().__init__()
        # NOTE: K = 1 is the identity (the paper's "K = 1 is the baseline"), so no module is built for it.
        self.dilation_predictor = TokenAwarePooling(dim, num_scales) if num_scales > 1 else None
        self.norm1 = nn.LayerNorm(dim)
        self.attn = DemoAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        x_attn = x if self.dilation_predictor is None else self.dilation_predictor(x, grid)
        x = x + self.drop_path(self.attn(self.norm1(x_attn)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class DemoViT(nn.Module):
    """A tiny ViT for the demo (see the module docstring).

    Args:
        img_size: input side length (a multiple of 8).
        num_classes: classifier outputs.
        embed_dim: token width.
        depth: number of blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / embed_dim.
        num_scales: TAP branches K per block; 0 or 1 means no TAP.
        drop_path_rate: stochastic depth, linearly increasing over the blocks.
    """

    def __init__(self, img_size: int = 64, num_classes: int = 10, embed_dim: int = 64, depth: int = 4,
                 num_heads: int = 4, mlp_ratio: float = 3.0, num_scales: int = 1, drop_path_rate: float = 0.05,
                 in_chans: int = 3) -> None:
        super().__init__()
        if img_size % 8:
            raise ValueError(f"img_size must be a multiple of 8, got {img_size}")
        self.num_classes = num_classes
        self.num_features = self.embed_dim = embed_dim
        self.num_scales = num_scales
        self.grid_size = (img_size // 8, img_size // 8)
        c1, c2 = embed_dim // 4, embed_dim // 2
        # Three stride-2 3x3 convolutions: early convolutions make small ViTs far easier to train on little data.
        self.patch_embed = nn.Sequential(
            nn.Conv2d(in_chans, c1, 3, stride=2, padding=1), nn.BatchNorm2d(c1), nn.GELU(),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.BatchNorm2d(c2), nn.GELU(),
            nn.Conv2d(c2, embed_dim, 3, stride=2, padding=1),
        )
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid_size[0] * self.grid_size[1], embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(DemoBlock(embed_dim, num_heads, mlp_ratio, dpr[i], num_scales)
                                    for i in range(depth))
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"}

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, S, S) -> tokens (B, N, C)."""
        x = self.patch_embed(x)  # (B, C, S/8, S/8)
        grid = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)  # (B, N, C)
        if x.shape[1] != self.pos_embed.shape[1]:
            raise ValueError(f"expected {self.grid_size[0] * 8}x{self.grid_size[1] * 8} px input, "
                             f"got a {grid[0] * 8}x{grid[1] * 8} px token grid")
        x = x + self.pos_embed
        for blk in self.blocks:
            x = blk(x, grid)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=1)  # (B, C) global average over tokens
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _cfg(img_size: int) -> dict[str, Any]:
    return {"input_size": (3, img_size, img_size), "interpolation": "bilinear", "crop_pct": 1.0,
            "mean": DEMO_MEAN, "std": DEMO_STD, "num_classes": 10, "first_conv": "patch_embed.0",
            "classifier": "head", "architecture": "attnprobe_demo_vit_tiny"}


@register_model
def attnprobe_demo_vit_tiny(pretrained: bool = False, **kwargs: Any) -> DemoViT:
    """Tiny demo ViT: 64 px, 8 x 8 tokens, dim 64, depth 4, 4 heads (~0.2 M parameters). ``num_scales`` K adds TAP."""
    if pretrained:
        raise ValueError("attnprobe_demo_vit_tiny has no pretrained weights in timm; use the zoo names demo_vit_*")
    for k in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(k, None)
    model = DemoViT(**kwargs)
    model.pretrained_cfg = model.default_cfg = _cfg(kwargs.get("img_size", 64))
    return model
