"""Head diversity: how similar the attention maps of different heads are (paper Sec. 4.1.2)."""

from __future__ import annotations

import torch

from attnprobe.metrics._checks import EPS, as_maps


def head_similarity(attn: torch.Tensor) -> torch.Tensor:
    """Mean over head pairs h < h' of the cosine similarity between their flattened N_q x N_k maps.

    The paper reports 0.63 for FAN-B-Hybrid and 0.27 with TAP & ADL (averaged over layers and ImageNet images);
    lower means more diverse heads.

    Args:
        attn: (B, H, N_q, N_k) with H >= 2 (undefined for single-head attention: raises ValueError).

    Returns:
        (B,); 1 when all heads are identical, 0 when every pair of heads attends to disjoint entries.
    """
    attn = as_maps(attn)
    B, H = attn.shape[:2]
    if H < 2:
        raise ValueError(f"head_similarity needs at least 2 heads, got {H}")
    flat = attn.flatten(2)  # (B, H, N_q * N_k)
    unit = flat / flat.norm(dim=-1, keepdim=True).clamp_min(EPS)
    gram = unit @ unit.transpose(1, 2)  # (B, H, H)
    i, j = torch.triu_indices(H, H, offset=1, device=attn.device)
    return gram[:, i, j].mean(-1)  # (B,)
