"""RVT (Robust Vision Transformer, Mao et al., CVPR 2022) and TAP-RVT, with the official state-dict names.

Structure: conv stem (``patch_embed.proj``) -> stages (``transformers.S.blocks.M``) joined by depthwise strided
convs (``pools.S.conv``) -> global average pool -> LayerNorm -> head. There is no class token and no positional
embedding; the first ``masked_block`` blocks of stage 0 use position-aware attention scaling (``att_mask``, see
attention.py).

Official quirks reproduced so that released checkpoints load and behave the same:
- The MLP of plain RVT is a Linear MLP when the width is exactly 768 (RVT-B) and a conv MLP (1x1 conv+BN, depthwise
  3x3+BN, 1x1 conv+BN, GELU after the first two) otherwise; TAP-RVT always uses the conv MLP. ``mlp_type`` overrides.
- The stem is conv7x7/2 (padding 2) -> BatchNorm -> maxpool3x3/2 -> conv4x4/4, without an activation.
- TAP-RVT has TAP (``dilation_predictor``) in every block, even with ``num_scales=1``.
"""

import math
from collections.abc import Sequence
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from attnprobe.archs.attention import MaskedTokenAttention
from attnprobe.archs.checkpointing import checkpoint
from attnprobe.archs.fan import DropPath
from attnprobe.archs.features import OUTPUT_FORMATS, take_indices, tokens_to_format
from attnprobe.archs.tap import TokenAwarePooling

__all__ = ["RVT", "RVTBlock"]


class LinearMlp(nn.Module):
    """fc1 -> GELU -> fc2 on tokens."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class ConvMlp(nn.Module):
    """RVT conv MLP on the token grid: 1x1 conv+BN, GELU, depthwise 3x3+BN, GELU, 1x1 conv+BN."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.bn3 = nn.BatchNorm2d(dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, N, C = x.shape
        x = x.reshape(B, H, W, C).permute(0, 3, 1, 2)  # (B, C, H, W), channels-last memory
        x = self.drop(self.act(self.bn1(self.fc1(x))))
        x = self.act(self.bn2(self.dwconv(x)))
        x = self.drop(self.bn3(self.fc2(x)))
        return x.permute(0, 2, 3, 1).reshape(B, N, C)  # (B, N, C)


class RVTBlock(nn.Module):
    """Pre-norm transformer block with optional TAP before the attention branch (residual stays un-pooled)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: float = 0.0, use_mask: bool = False, num_scales: int = 0, mlp_type: str = "conv") -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MaskedTokenAttention(dim, num_heads, qkv_bias=True, attn_drop=attn_drop, proj_drop=drop,
                                         use_mask=use_mask)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        if mlp_type not in ("conv", "linear"):
            raise ValueError(f"mlp_type must be 'conv' or 'linear', got {mlp_type!r}")
        self.mlp = ConvMlp(dim, hidden, drop) if mlp_type == "conv" else LinearMlp(dim, hidden, drop)
        self.dilation_predictor = TokenAwarePooling(dim, num_scales) if num_scales > 0 else None

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        x_attn = x if self.dilation_predictor is None else self.dilation_predictor(x, (H, W))
        x = x + self.drop_path(self.attn(self.norm1(x_attn)))
        return x + self.drop_path(self.mlp(self.norm2(x), H, W))


class RVTStage(nn.Module):
    """A sequence of RVT blocks on a (B, C, H, W) map."""

    def __init__(self, blocks: Sequence[RVTBlock]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        x = x.flatten(2).transpose(1, 2)  # (B, N, C)
        for blk in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(blk, x, H, W)
            else:
                x = blk(x, H, W)
        return x.transpose(1, 2).reshape(B, C, H, W)  # (B, C, H, W)


class ConvHeadPooling(nn.Module):
    """Stride-2 grouped conv that halves the grid between stages."""

    def __init__(self, in_feature: int, out_feature: int, stride: int = 2) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_feature, out_feature, kernel_size=stride + 1, padding=stride // 2, stride=stride,
                              groups=in_feature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class ConvEmbedding(nn.Module):
    """conv7x7/2 -> BN -> maxpool/2 -> conv (4x4/4, or 1x1 for patch_size 4)."""

    def __init__(self, in_chans: int, out_chans: int, patch_size: int) -> None:
        super().__init__()
        final = 1 if patch_size == 4 else 4
        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, 32, kernel_size=7, stride=2, padding=2),
            nn.BatchNorm2d(32),
            nn.MaxPool2d(3, stride=2, padding=1),
            nn.Conv2d(32, out_chans, kernel_size=final, stride=final),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class RVT(nn.Module):
    """RVT / TAP-RVT classifier (the official ``PoolingTransformer``), a full timm citizen.

    Args:
        image_size, patch_size, stride: stem geometry (official RVT: 224, 16, 16).
        base_dims: per-stage head width; stage width = base_dims[s] * heads[s].
        depth: blocks per stage.
        heads: attention heads per stage.
        mlp_ratio: MLP hidden ratio.
        num_classes: classifier outputs (0: no head).
        in_chans: image channels.
        attn_drop_rate, drop_rate, drop_path_rate: regularisation.
        use_mask: position-aware attention scaling in the first ``masked_block`` blocks of stage 0.
        masked_block: see ``use_mask``.
        num_scales: TAP branches K in every block; 0 disables TAP.
        mlp_type: "conv", "linear", or None for the official rule (see the module docstring).
        global_pool: "avg" (official: mean over the grid, then LayerNorm) or "" (no pooling, no norm).

    Features (``feature_info``, ``forward_intermediates``): the token map after every block, in network order
    across stages (stride 16, then 32, ... for the released models).
    """

    def __init__(self, image_size: int = 224, patch_size: int = 16, stride: int = 16,
                 base_dims: Sequence[int] = (64,), depth: Sequence[int] = (12,), heads: Sequence[int] = (12,),
                 mlp_ratio: float = 4.0, num_classes: int = 1000, in_chans: int = 3, attn_drop_rate: float = 0.0,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, use_mask: bool = False,
                 masked_block: Optional[int] = None, num_scales: int = 0, mlp_type: Optional[str] = None,
                 global_pool: str = "avg") -> None:
        super().__init__()
        if use_mask and masked_block is None:
            raise ValueError("use_mask=True needs masked_block")
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_scales = num_scales
        self.grid = math.floor(image_size / stride)
        widths = [b * h for b, h in zip(base_dims, heads)]
        self.patch_embed = ConvEmbedding(in_chans, widths[0], patch_size)
        self.pos_drop = nn.Dropout(drop_rate)
        total = sum(depth)
        self.transformers = nn.ModuleList()
        self.pools = nn.ModuleList()
        self.feature_info = []
        reduction = 4 if patch_size == 4 else 16
        idx = 0
        for s, (width, n_blocks, n_heads) in enumerate(zip(widths, depth, heads)):
            kind = mlp_type or ("conv" if num_scales > 0 or width != 768 else "linear")
            blocks = []
            for i in range(n_blocks):
                masked = bool(use_mask and s == 0 and i < masked_block)
                blocks.append(RVTBlock(width, n_heads, mlp_ratio, drop_rate, attn_drop_rate,
                                       drop_path_rate * (idx + i) / total, masked, num_scales, kind))
                self.feature_info.append(dict(num_chs=width, reduction=reduction * 2 ** s,
                                              module=f"transformers.{s}.blocks.{i}"))
            idx += n_blocks
            self.transformers.append(RVTStage(blocks))
            # NOTE: the last stage gets an Identity "pool" (no parameters) so that stages and pools can be zipped.
            last = s == len(widths) - 1
            self.pools.append(nn.Identity() if last else ConvHeadPooling(width, widths[s + 1], stride=2))
        self.num_features = self.head_hidden_size = self.embed_dim = widths[-1]
        self.norm = nn.LayerNorm(widths[-1], eps=1e-6)
        self.head = nn.Linear(widths[-1], num_classes) if num_classes > 0 else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # -- timm model interface ---------------------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {name for name, _ in self.named_parameters() if name.endswith("att_mask")}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r"^patch_embed", blocks=[(r"^transformers\.(\d+)\.blocks\.(\d+)", None),
                                                  (r"^pools\.(\d+)", (0,)), (r"^norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in the backward pass (same outputs, less memory)."""
        for stage in self.transformers:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the classifier (``num_classes=0``: none); ``global_pool`` as in the constructor."""
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        device = self.patch_embed.proj[0].weight.device
        self.head = nn.Linear(self.num_features, num_classes, device=device) if num_classes > 0 else nn.Identity()

    # -- forward ----------------------------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Final feature map (B, C, H, W) before pooling."""
        x = self.pos_drop(self.patch_embed(x))  # (B, C, H, W)
        for stage, pool in zip(self.transformers, self.pools):
            x = pool(stage(x))
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = self.norm(x.mean(dim=(2, 3)))  # (B, C)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # -- features ---------------------------------------------------------------------------------------------
    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward pass that also returns the token map after the requested blocks.

        Args:
            x: images (B, 3, H, W).
            indices: None (all blocks), int n (the last n) or a list of block indices (negative from the end).
            norm: apply the final LayerNorm to the features of the last stage (the only ones of its width).
            stop_early: stop after the last requested block (only with ``intermediates_only``).
            output_fmt: "NCHW" maps or "NLC" token sequences.
            intermediates_only: return only the list of features.

        Returns:
            The features in network order, or ``(forward_features(x), features)``.
        """
        if output_fmt not in OUTPUT_FORMATS:
            raise ValueError(f"output_fmt must be one of {OUTPUT_FORMATS}, got {output_fmt!r}")
        taken, max_index = take_indices(len(self.feature_info), indices)
        early = stop_early and intermediates_only
        intermediates: List[torch.Tensor] = []
        x = self.pos_drop(self.patch_embed(x))  # (B, C, H, W)
        idx = 0
        for stage, pool in zip(self.transformers, self.pools):
            B, C, H, W = x.shape
            last_stage = C == self.num_features
            t = x.flatten(2).transpose(1, 2)  # (B, N, C)
            for blk in stage.blocks:
                if early and idx > max_index:
                    break
                t = checkpoint(blk, t, H, W) if stage.grad_checkpointing else blk(t, H, W)
                if idx in taken:
                    y = self.norm(t) if norm and last_stage else t
                    intermediates.append(tokens_to_format(y, H, W, output_fmt))
                idx += 1
            if early and idx > max_index:
                return intermediates
            x = pool(t.transpose(1, 2).reshape(B, C, H, W))  # (B, C', H', W')
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the blocks, stages and poolings after the last requested feature (and norm / head if asked).

        Returns:
            The absolute feature indices (valid after pruning).
        """
        taken, max_index = take_indices(len(self.feature_info), indices)
        remaining = max_index + 1
        for s, stage in enumerate(self.transformers):
            if remaining <= len(stage.blocks):
                stage.blocks = stage.blocks[:remaining]
                self.transformers = self.transformers[: s + 1]
                self.pools = nn.ModuleList(list(self.pools[:s]) + [nn.Identity()])
                break
            remaining -= len(stage.blocks)
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return taken


def rvt_config_kwargs(config: dict) -> dict:
    """Constructor kwargs of ``RVT`` from an official-style config dict (timm's ``img_size`` means ``image_size``)."""
    kwargs = {k: v for k, v in config.items() if k not in ("family", "img_size")}
    if "img_size" in config and "image_size" not in config:
        size = config["img_size"]
        kwargs["image_size"] = int(size[-1] if isinstance(size, (list, tuple)) else size)
    return kwargs
