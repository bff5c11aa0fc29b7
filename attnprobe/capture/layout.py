"""Map normalisation: every captured map becomes (B * nW, H, N_q, N_k), windows of one image consecutive.

Modules lay out their post-softmax maps in several ways; `standardize` turns each into the standard shape:

    layout     raw shape                 modules
    bhqk       (B', H, N_q, N_k)         most: ViT, Swin (B' = B * windows), PVT-v2, LeViT, MViTv2, ...
    bqk        (B', N_q, N_k)            single-head attention (SHViT, iFormer), one head
    bqhk       (B, N_q, H, N_k)          MobileNetV4 multi-query attention (einsum path)
    bhwqk      (B, H, nW, N_q, N_k)      NesT blocks, Hiera mask units
    bwhqk      (B, nW, H, N_q, N_k)      Twins locally-grouped attention
    (bh)qk     (B' * H, N_q, N_k)        BoTNet's bottleneck attention, SAM's ViT
    (bh)wqk    (B * H, nW, N_q, N_k)     HaloNet's blocked attention
    heads      H tensors (B', N_q, N_k)  EfficientViT-M cascaded group attention (one softmax per head)

`auto` picks by the number of dimensions (4: bhqk; 3: bqk, or (bh)qk for a module with several heads; 5: the
dimension equal to the head count). A layout applies to tensors of its own rank; a map of another rank falls back
to `auto` (e.g. Hiera's global stages are 4-D).

`map_kind` then names the map: `"window"` for window-attention modules (even when one window covers the image: it
may hold padding tokens) and whenever an image contributes several maps (blocks that partition the tokens before
calling a plain attention module: TinyViT, EfficientViT-M, MaxViT, MobileViT's pixel groups, TNT's inner attention);
`"token"` for global self-attention (N_q == N_k); `"reduced"` for global attention whose queries and keys are
different token sets (spatial reduction: PVT-v2, Twins GSA, NextViT; pooling: MViTv2; subsampling: LeViT,
EfficientFormer-v2 downsampling); class-like roles keep their name (`"class"`, `"cross"`, `"pool"`).
"""

from __future__ import annotations

import torch

__all__ = ["MAP_KINDS", "TOKEN_MAP_KINDS", "map_kind", "num_windows", "standardize"]

#: Kinds of the maps in `AttentionCapture.maps` (queries are image tokens), then of `cls_maps`.
TOKEN_MAP_KINDS = ("token", "window", "reduced")
MAP_KINDS = (*TOKEN_MAP_KINDS, "class", "cross", "pool")

_RANK = {"bhqk": 4, "bqk": 3, "bqhk": 4, "bhwqk": 5, "bwhqk": 5, "(bh)qk": 3, "(bh)wqk": 4}


def _auto(raw: torch.Tensor, num_heads: int | None) -> str:
    if raw.ndim == 4:
        return "bhqk"
    if raw.ndim == 3:  # NOTE: a multi-head module with 3-D maps folds its heads into the batch (SAM, BoTNet)
        return "(bh)qk" if num_heads and num_heads > 1 else "bqk"
    if raw.ndim == 5:
        if raw.shape[1] == num_heads and raw.shape[2] != num_heads:
            return "bhwqk"
        if raw.shape[2] == num_heads and raw.shape[1] != num_heads:
            return "bwhqk"
        if num_heads is None or raw.shape[1] == num_heads:
            return "bhwqk"  # NOTE: timm's usual order (heads before windows) when the head count cannot tell
    raise ValueError(f"cannot read an attention map of shape {tuple(raw.shape)} (heads: {num_heads})")


def standardize(raw: list[torch.Tensor], layout: str, num_heads: int | None) -> list[torch.Tensor]:
    """The maps one module call produced, each as (B * nW, H, N_q, N_k).

    Args:
        raw: the tensors read at the hook point during one call of the module (usually one).
        layout: the module's layout (table above).
        num_heads: the module's head count (needed by the `(bh)...` layouts and to resolve 5-D maps).
    """
    if layout == "heads":
        return [torch.stack(raw, dim=1)] if raw else []  # H x (B', N_q, N_k) -> (B', H, N_q, N_k)
    return [_one(r, layout, num_heads) for r in raw]


def _one(raw: torch.Tensor, layout: str, num_heads: int | None) -> torch.Tensor:
    if _RANK.get(layout) != raw.ndim:
        layout = _auto(raw, num_heads)
    if layout == "bhqk":
        return raw
    if layout == "bqk":
        return raw.unsqueeze(1)  # (B', 1, N_q, N_k)
    if layout == "bqhk":
        return raw.transpose(1, 2)  # (B, H, N_q, N_k)
    if layout == "bwhqk":
        return raw.flatten(0, 1)  # (B * nW, H, N_q, N_k)
    if layout == "bhwqk":
        return raw.transpose(1, 2).flatten(0, 1)  # (B, nW, H, N_q, N_k) -> (B * nW, H, N_q, N_k)
    if not num_heads:
        raise ValueError(f"layout {layout} needs the module's head count")
    if layout == "(bh)qk":
        return raw.unflatten(0, (-1, num_heads))  # (B, H, N_q, N_k)
    if layout == "(bh)wqk":
        per_image = raw.unflatten(0, (-1, num_heads)).transpose(1, 2)  # (B, nW, H, N_q, N_k)
        return per_image.flatten(0, 1)  # (B * nW, H, N_q, N_k)
    raise ValueError(f"unknown attention map layout {layout!r}")


def num_windows(attn: torch.Tensor, batch_size: int | None) -> int:
    """Maps per image: the leading dimension over the batch size (1 when unknown or not a multiple)."""
    if not batch_size or attn.shape[0] % batch_size:
        return 1
    return attn.shape[0] // batch_size


def map_kind(role: str, attn: torch.Tensor, windows: int, windowed: bool = False) -> str:
    """The kind of one standardised map of a module with role `role` (see the module docstring).

    Args:
        role: the module's role (`AttentionLayer.kind`).
        attn: the map, (B * nW, H, N_q, N_k).
        windows: maps per image (nW).
        windowed: the module attends inside windows (a single window may still hold padding tokens).
    """
    if role != "token":
        return role
    if windows > 1 or windowed:
        return "window"
    return "token" if attn.shape[-1] == attn.shape[-2] else "reduced"
