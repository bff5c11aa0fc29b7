"""Attention Diversification Loss (ADL), Guo et al., ICCV 2023, Sec. 3.3, Eq. (1)-(2).

ADL is the mean cosine similarity between each row of a thresholded attention map and the mean row. Low values
mean that output tokens (rows) attend to different input tokens (columns).

Two variants:

``"official"`` (default) follows the released training code (``AttentionDiversificationLoss`` in TAPADL):
    A = attn.mean(heads)                      # (B, N, N)
    m = A.mean(rows)                          # mean row from the UN-thresholded rows
    A_hat = A * (A > tau/N);  m_hat = m * (m > tau/N)     # strict '>'
    layer value = mean over batch and rows of cos(A_hat_i, m_hat)   (torch eps 1e-8)
    loss = sum_l value_l / (L + 1e-6)         # the official counter starts at 1e-6

``"paper"`` follows Eq. (1)-(2) literally:
    A_hat = A * (A >= tau/N)                  # '>='
    m = mean over rows of A_hat               # mean row from the thresholded rows
    layer value = mean over rows of cos(A_hat_i, m), then over the batch
    loss = sum_l value_l / L
    Heads are averaged first here too: the paper defines one N x N map per layer and averages heads whenever it
    shows a map (Sec. 3.1).

Class tokens: ADL uses the map exactly as given. FAN and RVT token attention has no class token (FAN appends its
class token only in the later class-attention blocks), so their maps are patch-to-patch. For a timm ViT with a
class token, the (N+1) x (N+1) map includes the class row and column; N in tau/N is then the full map width. Pass
``attn[..., 1:, 1:]`` to exclude it (rows then no longer sum to 1, as with any cropped map).

Note: the official code calls ``.squeeze()`` on the head-mean, which silently changes the computation for a batch
of one; this implementation keeps the batch axis, so both agree for every batch size > 1 and ours stays correct
for a batch of one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["adl_layer", "adl_loss", "VARIANTS"]

VARIANTS = ("official", "paper")


def _check(attn: torch.Tensor, variant: str) -> torch.Tensor:
    if variant not in VARIANTS:
        raise ValueError(f"unknown ADL variant {variant!r}; choose one of: {', '.join(VARIANTS)}")
    if attn.dim() == 3:
        attn = attn.unsqueeze(1)  # (B, N, N) -> (B, 1, N, N)
    if attn.dim() != 4 or attn.shape[-1] != attn.shape[-2]:
        raise ValueError(f"expected attention maps shaped (B, H, N, N) or (B, N, N), got {tuple(attn.shape)}")
    return attn


def adl_layer(attn: torch.Tensor, tau: float = 2.0, variant: str = "official") -> torch.Tensor:
    """ADL of one layer for each image.

    Args:
        attn: post-softmax attention (B, H, N, N) or (B, N, N).
        tau: threshold factor; values are kept when above tau / N.
        variant: "official" or "paper" (see the module docstring).

    Returns:
        (B,) mean over rows of the cosine similarity between each thresholded row and the (thresholded) mean row.
    """
    attn = _check(attn, variant)
    a = attn.float().mean(dim=1)  # (B, N, N) heads averaged
    threshold = tau / a.shape[-1]
    if variant == "official":
        mean_row = a.mean(dim=1, keepdim=True)  # (B, 1, N)
        a_hat = a * (a > threshold)
        mean_hat = mean_row * (mean_row > threshold)
    else:
        a_hat = a * (a >= threshold)
        mean_hat = a_hat.mean(dim=1, keepdim=True)  # (B, 1, N)
    return F.cosine_similarity(mean_hat, a_hat, dim=-1).mean(dim=-1)  # (B, N) -> (B,)


def adl_loss(attn: Sequence[torch.Tensor], tau: float = 2.0, variant: str = "official") -> torch.Tensor:
    """Attention Diversification Loss over layers (differentiable; a scalar).

    Args:
        attn: per-layer post-softmax maps, each (B, H, N, N) (layers may differ in H and N).
        tau: threshold factor (the paper's default is 2).
        variant: "official" (released code, default) or "paper" (Eq. 1-2); see the module docstring.

    Returns:
        Scalar tensor: mean over layers of the batch-mean layer ADL (official: divided by L + 1e-6).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown ADL variant {variant!r}; choose one of: {', '.join(VARIANTS)}")
    if len(attn) == 0:
        raise ValueError("adl_loss needs at least one attention map")
    total = sum(adl_layer(a, tau, variant).mean() for a in attn)
    count = len(attn) + (1e-6 if variant == "official" else 0.0)
    return total / count
