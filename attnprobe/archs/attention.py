"""Attention modules shared by FAN and RVT, following attnprobe's capture contract.

Every token self-attention module has ``attention_kind = "token"``, class-attention modules ``"class"``. Each has a
bool ``fused_attn`` (True: ``F.scaled_dot_product_attention``; False: explicit softmax) and an ``attn_drop``
(nn.Dropout) whose input is the final post-softmax map (B, H, N_q, N_k) that multiplies V when ``fused_attn`` is
False. Capture therefore works the same way for every model: set ``fused_attn = False`` and hook ``attn_drop``.

RVT's position-aware attention scaling multiplies the logits by ``sigmoid(att_mask)`` before the softmax; that
cannot be expressed as an additive SDPA mask, so masked blocks always take the explicit path (``attn_drop`` still
sees the final map).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FanTokenAttention", "MaskedTokenAttention", "ClassAttention", "attend"]


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    attn_drop: nn.Dropout,
    fused: bool,
    logit_gain: torch.Tensor | None = None,
    scale_queries: bool = True,
) -> torch.Tensor:
    """Scaled dot-product attention with an observable ``attn_drop`` on the explicit path.

    Args:
        q: (B, H, Nq, D); k, v: (B, H, Nk, D).
        scale: multiplier of the logits.
        attn_drop: dropout applied to the post-softmax map (the capture hook point).
        fused: use ``F.scaled_dot_product_attention`` when possible.
        logit_gain: optional (H, Nq, Nk) multiplier of the scaled logits (RVT's sigmoid mask); forces explicit.
        scale_queries: explicit path scales q before the product (FAN) rather than the logits after it (RVT);
            the same maths, kept per model to follow the official rounding.

    Returns:
        (B, H, Nq, D).
    """
    if fused and logit_gain is None:
        p = attn_drop.p if attn_drop.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, dropout_p=p, scale=scale)
    if scale_queries:
        attn = (q * scale) @ k.transpose(-2, -1)  # (B, H, Nq, Nk)
    else:
        attn = (q @ k.transpose(-2, -1)) * scale  # (B, H, Nq, Nk)
    if logit_gain is not None:
        attn = attn * logit_gain
    attn = attn.softmax(dim=-1)
    attn = attn_drop(attn)
    return attn @ v  # (B, H, Nq, D)


class FanTokenAttention(nn.Module):
    """FAN token mixing: multi-head self-attention with separate ``q`` and ``kv`` projections."""

    attention_kind = "token"

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.fused_attn = True
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q = self.q(x).reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, N, D)
        kv = self.kv(x).reshape(B, N, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (2, B, H, N, D)
        x = attend(q, kv[0], kv[1], self.scale, self.attn_drop, self.fused_attn)
        x = x.transpose(1, 2).reshape(B, N, C)  # (B, N, C)
        return self.proj_drop(self.proj(x))


class MaskedTokenAttention(nn.Module):
    """RVT attention: fused ``qkv`` projection, optional position-aware scaling ``att_mask`` (H, 196, 196).

    With ``use_mask`` the scaled logits are multiplied by ``sigmoid(att_mask[:, :N, :N])`` before the softmax, as in
    the official RVT code (so the mask only covers grids of up to 196 tokens).
    """

    attention_kind = "token"

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, use_mask: bool = False, mask_size: int = 196) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.fused_attn = True
        self.use_mask = use_mask
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        if use_mask:
            self.att_mask = nn.Parameter(torch.empty(num_heads, mask_size, mask_size))
            nn.init.trunc_normal_(self.att_mask, std=0.02, a=-0.02, b=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, H, N, D)
        gain = None
        if self.use_mask:
            if N > self.att_mask.shape[-1]:
                raise ValueError(f"RVT att_mask covers {self.att_mask.shape[-1]} tokens, got {N}; use 224x224 input")
            gain = torch.sigmoid(self.att_mask[:, :N, :N])  # (H, N, N)
        x = attend(qkv[0], qkv[1], qkv[2], self.scale, self.attn_drop, self.fused_attn, gain, scale_queries=False)
        x = x.transpose(1, 2).reshape(B, N, C)  # (B, N, C)
        return self.proj_drop(self.proj(x))


class ClassAttention(nn.Module):
    """CaiT-style class attention: only the class token (index 0) queries all N+1 tokens."""

    attention_kind = "class"

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.fused_attn = True
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N+1, C) -> updated class token (B, 1, C)."""
        B, N, C = x.shape
        q = self.q(x[:, :1]).reshape(B, 1, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, 1, D)
        k = self.k(x).reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, N, D)
        v = self.v(x).reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, N, D)
        x_cls = attend(q, k, v, self.scale, self.attn_drop, self.fused_attn)  # (B, H, 1, D)
        x_cls = x_cls.transpose(1, 2).reshape(B, 1, C)
        return self.proj_drop(self.proj(x_cls))
