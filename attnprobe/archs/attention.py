"""Attention modules shared by FAN and RVT, following attnprobe's capture contract.

Every token self-attention module has ``attention_kind = "token"``, class-attention modules ``"class"``. Each has a
bool ``fused_attn`` (True: ``F.scaled_dot_product_attention``; False: explicit softmax) and an ``attn_drop``
(nn.Dropout) whose input is the final post-softmax map (B, H, N_q, N_k) that multiplies V when ``fused_attn`` is
False. Capture therefore works the same way for every model: set ``fused_attn = False`` and hook ``attn_drop``.

RVT's position-aware attention scaling multiplies the logits by ``sigmoid(att_mask)`` before the softmax; that
cannot be expressed as an additive SDPA mask, so masked blocks always take the explicit path (``attn_drop`` still
sees the final map).

The modules are TorchScript- and torch.fx-friendly: no module is passed to a function, no Python control flow
depends on tensor values or shapes, and ``fused_attn`` is a plain attribute (not ``Final``) so that capture can flip it.
"""

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FanTokenAttention", "MaskedTokenAttention", "ClassAttention"]


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
        k, v = kv.unbind(0)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0,
                                               scale=self.scale)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, H, N, N); NOTE: official order (scale q first)
            attn = self.attn_drop(attn.softmax(dim=-1))
            x = attn @ v  # (B, H, N, D)
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
        # NOTE: None (not a missing attribute) when unused, so TorchScript drops the masked branch at compile time.
        self.att_mask = None
        if use_mask:
            self.att_mask = nn.Parameter(torch.empty(num_heads, mask_size, mask_size))
            nn.init.trunc_normal_(self.att_mask, std=0.02, a=-0.02, b=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, H, N, D)
        q, k, v = qkv.unbind(0)
        if self.att_mask is None and self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0,
                                               scale=self.scale)
        else:
            attn = (q @ k.transpose(-2, -1)) * self.scale  # (B, H, N, N); NOTE: official order (scale the logits)
            if self.att_mask is not None:
                torch._assert(N <= self.att_mask.shape[-1], "RVT's att_mask covers at most 14x14 tokens; "
                                                           "use 224x224 input")
                attn = attn * torch.sigmoid(self.att_mask[:, :N, :N])  # (B, H, N, N)
            attn = self.attn_drop(attn.softmax(dim=-1))
            x = attn @ v  # (B, H, N, D)
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
        if self.fused_attn:
            x_cls = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0,
                                                   scale=self.scale)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, H, 1, N)
            attn = self.attn_drop(attn.softmax(dim=-1))
            x_cls = attn @ v  # (B, H, 1, D)
        x_cls = x_cls.transpose(1, 2).reshape(B, 1, C)  # (B, 1, C)
        return self.proj_drop(self.proj(x_cls))
