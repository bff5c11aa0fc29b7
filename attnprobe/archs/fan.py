"""FAN (Fully Attentional Networks, Zhou et al., ICML 2022) and TAP-FAN, ViT and Hybrid variants.

Read top to bottom: positional encoding -> patch embeddings -> channel attention (FAN's "mlp") -> FAN block
(optional TAP before the token attention) -> class-attention block -> the model.

State-dict names and shapes match the official TAPADL/FAN checkpoints, so those load strictly. Numerics match the
official code (fixtures in ``shared/reference/official``), with two speed-ups that do not change results beyond
float rounding: token attention may use ``F.scaled_dot_product_attention`` (``fused_attn``), and TAP uses shifted
sums instead of ``nn.Unfold`` (see tap.py).

Facts worth knowing (from the official code): block LayerNorms use eps 1e-6 but the channel attention's ``norm_v``
uses eps 1e-5; GELU is the exact (erf) one; the value MLP ``mlp_v`` has no activation between ``fc1`` and ``fc2``
(its only nonlinearity is the GELU inside ``dwconv``); the class-attention block adds the *normalised* patch tokens
to the residual (``x_attn = cat(cls_out, norm1(x)[:, 1:])``); the hybrid stem's block and downsample LayerNorms
effectively use the unbiased variance (see convnext_stem.LayerNormCL).
"""

import math
from collections.abc import Sequence
from typing import Any, Dict, List, Optional, Tuple, Union  # NOTE: typing aliases keep TorchScript on older torch happy

import torch
from torch import nn

from attnprobe.archs.attention import ClassAttention, FanTokenAttention
from attnprobe.archs.checkpointing import checkpoint
from attnprobe.archs.convnext_stem import ConvNeXtStem, HybridEmbed
from attnprobe.archs.features import OUTPUT_FORMATS, map_to_format, take_indices, tokens_to_format
from attnprobe.archs.tap import TokenAwarePooling

__all__ = ["FAN", "FANBlock", "ClassAttentionBlock", "ChannelProcessing", "PositionalEncodingFourier"]


class PositionalEncodingFourier(nn.Module):
    """Sine/cosine features of the normalised (y, x) grid position, projected by a 1x1 conv to ``dim``.

    Args:
        hidden_dim: sine/cosine features per axis.
        dim: output channels.
        temperature: base of the frequencies.
        paired_frequencies: feature i has frequency ``temperature ** (2 * floor(i / 2) / hidden_dim)`` (each sine/cosine
            pair shares one; the official classification code). False: ``temperature ** (i / hidden_dim)``, what the
            official segmentation backbones compute (they call ``torch.div(dim_t, 2)`` without floor rounding), so
            the released segmentation checkpoints need it.
    """

    def __init__(self, hidden_dim: int = 32, dim: int = 768, temperature: float = 10000.0,
                 paired_frequencies: bool = True) -> None:
        super().__init__()
        self.token_projection = nn.Conv2d(hidden_dim * 2, dim, kernel_size=1)
        self.hidden_dim = hidden_dim
        self.temperature = temperature
        self.paired_frequencies = paired_frequencies
        self.eps = 1e-6

    def fourier_features(self, H: int, W: int, device: torch.device) -> torch.Tensor:
        """(1, 2 * hidden_dim, H, W) position features, y features first."""
        scale = 2 * math.pi
        y = torch.arange(1, H + 1, dtype=torch.float32, device=device)
        x = torch.arange(1, W + 1, dtype=torch.float32, device=device)
        y = y / (H + self.eps) * scale  # (H,)
        x = x / (W + self.eps) * scale  # (W,)
        dim_t = torch.arange(self.hidden_dim, dtype=torch.float32, device=device)
        if self.paired_frequencies:
            dim_t = torch.div(dim_t, 2, rounding_mode="floor")
        else:
            dim_t = dim_t / 2
        dim_t = self.temperature ** (2 * dim_t / self.hidden_dim)
        pos_y = y[:, None] / dim_t  # (H, hidden)
        pos_x = x[:, None] / dim_t  # (W, hidden)
        # interleave sin of even and cos of odd frequencies: [sin f0, cos f1, sin f2, cos f3, ...]
        pos_y = torch.stack([pos_y[:, 0::2].sin(), pos_y[:, 1::2].cos()], dim=2).flatten(1)  # (H, hidden)
        pos_x = torch.stack([pos_x[:, 0::2].sin(), pos_x[:, 1::2].cos()], dim=2).flatten(1)  # (W, hidden)
        pos = torch.cat(
            [pos_y[:, None, :].expand(H, W, -1), pos_x[None, :, :].expand(H, W, -1)], dim=2
        )  # (H, W, 2 * hidden)
        return pos.permute(2, 0, 1).unsqueeze(0)  # (1, 2 * hidden, H, W)

    def forward(self, B: int, H: int, W: int) -> torch.Tensor:
        """Positional encoding as tokens (B, H*W, dim)."""
        pos = self.token_projection(self.fourier_features(H, W, self.token_projection.weight.device))  # (1, C, H, W)
        return pos.flatten(2).transpose(1, 2).expand(B, -1, -1)  # (B, N, C)


class ConvPatchEmbed(nn.Module):
    """FAN-ViT patch embedding: stride-2 conv3x3+BN layers separated by GELU (4 layers for 16 px, 3 for 8 px)."""

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__()

        def conv_bn(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout))

        if patch_size == 16:
            chans = [in_chans, embed_dim // 8, embed_dim // 4, embed_dim // 2, embed_dim]
        elif patch_size == 8:
            chans = [in_chans, embed_dim // 4, embed_dim // 2, embed_dim]
        elif patch_size == 4:
            chans = [in_chans, embed_dim // 4, embed_dim]
        else:
            raise ValueError(f"FAN conv patch embedding supports patch_size 4, 8 or 16, got {patch_size}")
        layers: list[nn.Module] = []
        for i in range(len(chans) - 1):
            if i:
                layers.append(nn.GELU())
            layers.append(conv_bn(chans[i], chans[i + 1]))
        self.proj = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        x = self.proj(x)  # (B, C, Hp, Wp)
        Hp, Wp = x.shape[2], x.shape[3]
        return x.flatten(2).transpose(1, 2), (Hp, Wp)  # (B, N, C)

    def forward_with_stages(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int], List[torch.Tensor]]:
        """Like ``forward``; the conv stack exposes no stage features (the list is empty)."""
        tokens, grid = self.forward(x)
        return tokens, grid, []


class DWConv(nn.Module):
    """Depthwise conv3x3 -> GELU -> BatchNorm -> depthwise conv3x3 on a token grid."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.act = nn.GELU()
        self.bn = nn.BatchNorm2d(dim)
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, N, C = x.shape
        # NOTE: a channels-last view instead of transpose+reshape: no copies in and out, same numbers.
        x = x.reshape(B, H, W, C).permute(0, 3, 1, 2)  # (B, C, H, W), channels-last memory
        x = self.conv2(self.bn(self.act(self.conv1(x))))
        return x.permute(0, 2, 3, 1).reshape(B, N, C)  # (B, N, C)


class ValueMlp(nn.Module):
    """FAN's value MLP: fc1 -> (x + gamma * dwconv(x)) -> fc2. NOTE: no activation between fc1 and fc2."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.gamma = nn.Parameter(torch.ones(hidden))
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        x = self.fc1(x)  # (B, N, hidden)
        x = self.drop(self.gamma * self.dwconv(x, H, W)) + x
        return self.drop(self.fc2(x))  # (B, N, dim)


class ChannelProcessing(nn.Module):
    """FAN's channel attention (the block's "mlp"): a sigmoid gate per channel times a processed value.

    This is channel attention, not token attention: it has no ``attention_kind`` and is never captured.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, mlp_hidden_dim: int | None = None,
                 drop: float = 0.0, gate_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.mlp_v = ValueMlp(dim, mlp_hidden_dim or dim, drop=drop)
        self.norm_v = nn.LayerNorm(dim)  # NOTE: default eps 1e-5 here, unlike the blocks' 1e-6
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.gate_drop = nn.Dropout(gate_drop)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, N, C = x.shape
        h = self.num_heads
        q = self.q(x).reshape(B, N, h, C // h).softmax(dim=1)  # (B, N, h, Ch), softmax over tokens
        k = x.reshape(B, N, h, C // h).softmax(dim=1).mean(dim=-1)  # (B, N, h)
        gate = torch.sigmoid(torch.einsum("bnhc,bnh->bhc", q, k)) * self.temperature.reshape(1, h, 1)  # (B, h, Ch)
        gate = self.gate_drop(gate)
        v = self.norm_v(self.mlp_v(x, H, W))  # (B, N, C)
        return v * gate.reshape(B, 1, C)  # (B, N, C)


class FANBlock(nn.Module):
    """FAN block: [TAP] -> token attention -> channel attention, each with layer scale and a residual.

    TAP (``num_scales`` > 0) pools the block input only for the token-attention branch; the residual stays
    un-pooled. It is stored as ``dilation_predictor`` to match the official checkpoints.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True, drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0, eta: float = 1.0, num_scales: int = 0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = FanTokenAttention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = ChannelProcessing(dim, num_heads, qkv_bias=qkv_bias, mlp_hidden_dim=int(dim * mlp_ratio),
                                     drop=drop, gate_drop=attn_drop)
        self.gamma1 = nn.Parameter(eta * torch.ones(dim))
        self.gamma2 = nn.Parameter(eta * torch.ones(dim))
        self.drop_path = DropPath(drop_path)
        self.dilation_predictor = TokenAwarePooling(dim, num_scales) if num_scales > 0 else None

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        x_attn = x if self.dilation_predictor is None else self.dilation_predictor(x, (H, W))
        x = x + self.drop_path(self.gamma1 * self.attn(self.norm1(x_attn)))
        return x + self.drop_path(self.gamma2 * self.mlp(self.norm2(x), H, W))


class Mlp(nn.Module):
    """Plain MLP: fc1 -> GELU -> fc2."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class ClassAttentionBlock(nn.Module):
    """CaiT-style class-attention block as used by FAN (tokens_norm: LayerNorm all tokens after attention).

    Only the class token is updated by attention and MLP; the official residual wiring also adds ``norm1`` of the
    patch tokens and then doubles them, which this module reproduces so that released weights behave the same.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True, drop: float = 0.0,
                 attn_drop: float = 0.0, eta: float = 1.0, tokens_norm: bool = True) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = ClassAttention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.gamma1 = nn.Parameter(eta * torch.ones(dim))
        self.gamma2 = nn.Parameter(eta * torch.ones(dim))
        self.tokens_norm = tokens_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_norm = self.norm1(x)  # (B, N+1, C)
        x_attn = torch.cat([self.attn(x_norm), x_norm[:, 1:]], dim=1)  # (B, N+1, C)
        x = x + self.gamma1 * x_attn
        if self.tokens_norm:
            x = self.norm2(x)
        else:
            x = torch.cat([self.norm2(x[:, :1]), x[:, 1:]], dim=1)
        cls = self.gamma2 * self.mlp(x[:, :1])  # (B, 1, C)
        # NOTE: as in the official code, the residual adds the patch tokens to themselves (they double).
        return x + torch.cat([cls, x[:, 1:]], dim=1)


class DropPath(nn.Module):
    """Stochastic depth per sample (identity in eval mode or with rate 0)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty([x.shape[0]] + [1] * (x.dim() - 1)).bernoulli_(keep)  # (B, 1, ..., 1)
        return x * mask / keep


class FAN(nn.Module):
    """FAN / TAP-FAN classifier (ViT patch embedding or ConvNeXt-stem hybrid), a full timm citizen.

    Args:
        patch_size: ViT patch size (16 or 8); unused by hybrids (their stride is 16 = stem 8 x ``hybrid_patch_size``).
        in_chans: image channels.
        num_classes: classifier outputs (0: no head).
        embed_dim: token channels.
        depth: number of FAN blocks.
        num_heads: heads of token and channel attention.
        mlp_ratio: hidden ratio of the value MLP and class-attention MLP.
        qkv_bias: biases on q/kv projections.
        drop_rate, attn_drop_rate, drop_path_rate: regularisation (0 for inference).
        backbone: None for FAN-ViT, else a dict ``{"depths": [...], "dims": [...]}`` for the ConvNeXt stem, optionally
            with ``"unbiased_norm": False`` (see convnext_stem.LayerNormCL; the default True is what the official
            code computes).
        hybrid_patch_size: projection patch size after the hybrid stem.
        cls_attn_layers: number of class-attention blocks.
        eta: initial layer-scale value.
        tokens_norm: class-attention blocks normalise all tokens (True in every released model).
        num_scales: TAP branches K per block; 0 disables TAP (plain FAN).
        head_init_scale: multiplier of the initial head weights.
        global_pool: "token" (the class token, official), "avg" (mean of the patch tokens) or "" (no pooling).
        pos_paired_frequencies: see ``PositionalEncodingFourier``; False for the official segmentation backbones.

    Features (``feature_info``, ``forward_intermediates``, ``features_only=True``), in network order: the output of
    every ConvNeXt stem stage (hybrids only; stride 4, 8, ...), the patch tokens after every FAN block (stride 16 for
    the released models), and the patch-token part after the class-attention blocks. The FAN-Hybrid segmentation
    backbone of the official code uses [stem stage 0, stem stage 1, block ``out_idx``, class-attention output].
    """

    def __init__(self, patch_size: int = 16, in_chans: int = 3, num_classes: int = 1000, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 backbone: Optional[Dict[str, Any]] = None, hybrid_patch_size: int = 2, cls_attn_layers: int = 2,
                 eta: float = 1.0, tokens_norm: bool = True, num_scales: int = 0, head_init_scale: float = 1.0,
                 global_pool: str = "token", pos_paired_frequencies: bool = True) -> None:
        super().__init__()
        if global_pool not in ("token", "avg", ""):
            raise ValueError(f"global_pool must be 'token', 'avg' or '', got {global_pool!r}")
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1
        self.num_scales = num_scales
        self.depth = depth
        self.grad_checkpointing = False
        stem_info: List[Dict[str, Any]] = []
        if backbone is None:
            self.patch_embed: nn.Module = ConvPatchEmbed(patch_size, in_chans, embed_dim)
            reduction = patch_size
        else:
            stem = ConvNeXtStem(depths=backbone.get("depths", (3, 3)), dims=backbone.get("dims", (128, 256, 512, 1024)),
                                in_chans=in_chans, unbiased_norm=backbone.get("unbiased_norm", True))
            self.patch_embed = HybridEmbed(stem, embed_dim, patch_size=hybrid_patch_size)
            reduction = stem.reduction * hybrid_patch_size
            stem_info = [dict(num_chs=c, reduction=r, module=f"patch_embed.backbone.stages.{i}")
                         for i, (c, r) in enumerate(zip(stem.stage_channels, stem.stage_reductions))]
        self.num_stem_features = len(stem_info)
        self.pos_embed = PositionalEncodingFourier(dim=embed_dim, paired_frequencies=pos_paired_frequencies)
        self.pos_drop = nn.Dropout(drop_rate)
        self.blocks = nn.ModuleList([
            FANBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, drop_path_rate, eta,
                     num_scales)
            for _ in range(depth)
        ])
        self.cls_token: Optional[nn.Parameter] = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.cls_attn_blocks = nn.ModuleList([
            ClassAttentionBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, eta, tokens_norm)
            for _ in range(cls_attn_layers)
        ])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        token_info = [dict(num_chs=embed_dim, reduction=reduction, module=f"blocks.{i}") for i in range(depth)]
        if cls_attn_layers > 0:
            last_cls = f"cls_attn_blocks.{cls_attn_layers - 1}"
            token_info.append(dict(num_chs=embed_dim, reduction=reduction, module=last_cls))
        self.feature_info = stem_info + token_info
        self._init_weights(head_init_scale)

    def _init_weights(self, head_init_scale: float) -> None:
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if isinstance(self.head, nn.Linear):
            with torch.no_grad():
                self.head.weight.mul_(head_init_scale)
                self.head.bias.mul_(head_init_scale)

    # -- timm model interface ---------------------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {"cls_token"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r"^cls_token|pos_embed|patch_embed", blocks=r"^blocks\.(\d+)",
                    cls_attn_blocks=[(r"^cls_attn_blocks\.(\d+)", None), (r"^norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in the backward pass (same outputs, less memory)."""
        self.grad_checkpointing = enable
        if isinstance(self.patch_embed, HybridEmbed):
            for stage in self.patch_embed.backbone.stages:
                stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the classifier (``num_classes=0``: none); ``global_pool`` as in the constructor."""
        if global_pool is not None:
            if global_pool not in ("token", "avg", ""):
                raise ValueError(f"global_pool must be 'token', 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        device = self.pos_embed.token_projection.weight.device
        self.head = nn.Linear(self.num_features, num_classes, device=device) if num_classes > 0 else nn.Identity()

    # -- forward ----------------------------------------------------------------------------------------------
    def forward_cls(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens (B, N, C) -> class token prepended and the class-attention blocks applied: (B, 1 + N, C)."""
        if self.cls_token is None:  # NOTE: pruned by prune_intermediate_layers
            return x
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1 + N, C)
        for blk in self.cls_attn_blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(blk, x)
            else:
                x = blk(x)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens after the class-attention blocks and final norm: (B, 1 + N, C), class token first."""
        B = x.shape[0]
        x, (H, W) = self.patch_embed(x)  # (B, N, C)
        x = self.pos_drop(x + self.pos_embed(B, H, W))
        for blk in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(blk, x, H, W)
            else:
                x = blk(x, H, W)
        return self.norm(self.forward_cls(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "token":
            x = x[:, 0]
        elif self.global_pool == "avg":
            x = x[:, self.num_prefix_tokens:].mean(dim=1)
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
        """Forward pass that also returns intermediate features (see the class docstring for the index space).

        Args:
            x: images (B, 3, H, W).
            indices: features to return: None (all), int n (the last n), or a list of indices (negative from the end).
            norm: apply the final LayerNorm to token features (stem features are never normalised).
            stop_early: stop after the last requested feature (only with ``intermediates_only``).
            output_fmt: "NCHW" maps or "NLC" token sequences.
            intermediates_only: return only the list of features.

        Returns:
            The features in network order, or ``(forward_features(x), features)``.
        """
        if output_fmt not in OUTPUT_FORMATS:
            raise ValueError(f"output_fmt must be one of {OUTPUT_FORMATS}, got {output_fmt!r}")
        taken, max_index = take_indices(len(self.feature_info), indices)
        n_stem = self.num_stem_features
        cls_index = n_stem + self.depth  # index of the class-attention output (when there are cls blocks)
        intermediates: List[torch.Tensor] = []
        B = x.shape[0]
        x, (H, W), stage_maps = self.patch_embed.forward_with_stages(x)  # (B, N, C)
        for i, fmap in enumerate(stage_maps):
            if i in taken:
                intermediates.append(map_to_format(fmap, output_fmt))
        x = self.pos_drop(x + self.pos_embed(B, H, W))
        last_needed = self.depth if not (stop_early and intermediates_only) else min(max_index - n_stem + 1, self.depth)
        for i, blk in enumerate(self.blocks):
            if i >= last_needed:
                break
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(blk, x, H, W)
            else:
                x = blk(x, H, W)
            if n_stem + i in taken:
                intermediates.append(tokens_to_format(self.norm(x) if norm else x, H, W, output_fmt))
        if intermediates_only and cls_index not in taken:
            return intermediates
        x = self.forward_cls(x)
        if cls_index in taken and len(self.cls_attn_blocks) > 0:
            y = self.norm(x) if norm else x
            intermediates.append(tokens_to_format(y[:, self.num_prefix_tokens:], H, W, output_fmt))
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop what the requested features do not need (later blocks, class attention, norm, head).

        Returns:
            The absolute feature indices (valid after pruning: the index space does not change).
        """
        taken, max_index = take_indices(len(self.feature_info), indices)
        n_stem = self.num_stem_features
        self.blocks = self.blocks[: max(0, min(max_index - n_stem + 1, self.depth))]
        if max_index < n_stem + self.depth:  # the class-attention output is not requested
            self.cls_attn_blocks = nn.ModuleList()
            self.cls_token = None
            self.num_prefix_tokens = 0
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return taken



def fan_config_kwargs(config: dict) -> dict:
    """Constructor kwargs of ``FAN`` from an official-style config dict (ignores FAN's unused options)."""
    ignored = {"family", "sharpen_attn", "sr_ratio", "use_head", "img_size", "se_mlp", "c_head_num", "channel_dims",
               "use_pos_embed", "act_layer", "norm_layer", "use_checkpoint"}
    kwargs = {k: v for k, v in config.items() if k not in ignored}
    if config.get("se_mlp"):
        raise ValueError("FAN with se_mlp=True (FAN-SE) is not implemented")
    dims = config.get("channel_dims")
    if dims is not None and len(set(dims)) > 1:
        raise ValueError("FAN with varying channel_dims (Xlarge) is not implemented")
    if isinstance(kwargs.get("num_heads"), Sequence):
        heads = set(kwargs["num_heads"])
        if len(heads) > 1:
            raise ValueError("FAN with per-block num_heads is not implemented")
        kwargs["num_heads"] = heads.pop()
    if kwargs.get("backbone") is not None:
        kwargs["backbone"] = {k: v for k, v in kwargs["backbone"].items() if k in ("depths", "dims", "unbiased_norm")}
    return kwargs
