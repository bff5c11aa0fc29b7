"""Per-layer reduction: what one command measures (`Plan`) and the `reduce` callback that turns each attention map
into per-image values as soon as its layer has run (`BatchReducer`), keeping only the few maps a figure needs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from attnprobe.capture import LayerMap
from attnprobe.diagnostics.inputs import CLEAN, Condition
from attnprobe.metrics import OVERFOCUS_METRICS, attention_cosine, head_similarity, overfocusing, window_mean

__all__ = ["HEADS_METRIC", "MAX_KEPT_TOKENS", "STABILITY_METRIC", "BatchReducer", "Plan", "layer_meta", "pool_map"]

STABILITY_METRIC = "attention_cosine"
HEADS_METRIC = "head_similarity"
#: Kept (saved) maps of larger square token grids are pooled to at most this many tokens per side of the map.
#: NOTE: a segmentation window of 1024 x 1024 px has 64 x 64 = 4096 tokens: 16 layers x 8 heads of 4096 x 4096 maps
#: are 4 GB per image in float16; pooled 4 x 4 they are 16 MB and still show where attention goes.
MAX_KEPT_TOKENS = 256


def pool_map(arr: torch.Tensor, max_tokens: int = MAX_KEPT_TOKENS) -> tuple[torch.Tensor, int]:
    """Pool a map (..., N, N) of a square s x s token grid by f x f token blocks so that (s / f)^2 <= `max_tokens`:
    queries averaged, keys summed, so every pooled row still sums to 1. Returns (map, f); f = 1 leaves it as is
    (small, non-square or grids that no f divides)."""
    n = arr.shape[-1]
    side = int(round(n ** 0.5))
    if n <= max_tokens or arr.shape[-2] != n or side * side != n:
        return arr, 1
    f = next((f for f in range(2, side + 1) if side % f == 0 and (side // f) ** 2 <= max_tokens), 1)
    if f == 1:
        return arr, 1
    g = side // f
    lead = arr.shape[:-2]
    x = arr.reshape(*lead, g, f, g, f, g, f, g, f)  # (..., qy, fy, qx, fx, ky, fy, kx, fx)
    d = len(lead)
    x = x.float().mean(dim=(d + 1, d + 3)).sum(dim=(d + 3, d + 5))  # (..., qy, qx, ky, kx)
    return x.reshape(*lead, g * g, g * g), f


@dataclass
class Plan:
    """What one command computes: which conditions, which series, which maps to keep."""

    command: str
    conditions: list[Condition]  # corrupted conditions (each forwarded together with the clean images)
    clean_metrics: list[str]  # metrics stored for the clean condition
    corrupted_metrics: list[str]  # metrics stored for each corrupted condition (excluding attention_cosine)
    cosine: bool  # attention_cosine of clean vs each corrupted condition
    k: int = 5
    tau: float = 2.0

    def series(self) -> list[tuple[str, Condition]]:
        out = [(m, CLEAN) for m in self.clean_metrics]
        for cond in self.conditions:
            out += [(m, cond) for m in self.corrupted_metrics]
            if self.cosine:
                out.append((STABILITY_METRIC, cond))
        return out

    def groups(self) -> list[Condition | None]:
        """Forward groups: each corrupted condition (with the clean half), or clean alone when there is none."""
        return list(self.conditions) if self.conditions else [None]


def layer_meta(lm: LayerMap, nw: int) -> dict[str, Any]:
    """What a result says about one token-attention layer: module, kind and map shape."""
    return {"name": lm.layer.name, "kind": lm.kind, "heads": int(lm.attn.shape[1]),
            "queries": int(lm.attn.shape[-2]), "keys": int(lm.attn.shape[-1]), "windows": nw}


class BatchReducer:
    """The per-layer `reduce` callback for one forward pass of [clean; corrupted] (or clean only) images.

    Every token-attention map (kinds token, window, reduced) is measured; class-like maps (class, cross, pooling
    attention) are only kept for the saved map files. A measure that is undefined for a layer (head similarity with
    one head, row similarity with one query) is left out for that layer and explained in `notes`.
    """

    def __init__(self, plan: Plan, n_images: int, cond: Condition | None, with_clean: bool,
                 keep_positions: Sequence[int]) -> None:
        self.plan, self.n, self.cond, self.with_clean = plan, n_images, cond, with_clean
        self.keep = list(keep_positions)
        self.values: dict[tuple[str, Condition], dict[int, torch.Tensor]] = {}
        self.kept: dict[tuple[int, Condition], list[np.ndarray]] = {}
        self.kept_cls: dict[tuple[int, Condition], list[np.ndarray]] = {}
        self.kept_pool = 1  # token-block size of the kept maps (`pool_map`)
        self.windows: list[int] = []
        self.layers: list[dict[str, Any]] = []
        self.notes: dict[str, set[int]] = {}  # what was left out -> token-attention layers it concerns

    def _note(self, what: str, layer: int) -> None:
        self.notes.setdefault(what, set()).add(layer)

    def _put(self, metric: str, cond: Condition, layer: int, values: torch.Tensor) -> None:
        self.values.setdefault((metric, cond), {})[layer] = values.detach().float().cpu()

    def _per_condition(self, part: torch.Tensor, nw: int, cond: Condition, metrics: list[str], layer: int) -> None:
        if HEADS_METRIC in metrics:
            if part.shape[1] < 2:
                self._note("head similarity is undefined for single-head attention and left out", layer)
            else:
                self._put(HEADS_METRIC, cond, layer, window_mean(head_similarity(part), nw))
        wanted = [m for m in metrics if m in OVERFOCUS_METRICS]
        if wanted:
            of = overfocusing(part, k=self.plan.k, tau=self.plan.tau)
            for m in wanted:
                if m in of:
                    self._put(m, cond, layer, window_mean(of[m], nw))
                else:  # NOTE: row similarity of a single query is undefined (overfocusing leaves it out)
                    self._note(f"{m} is undefined for maps with one query and left out", layer)

    def _keep(self, store: dict, part: torch.Tensor, nw: int, cond: Condition) -> None:
        if not self.keep or part.shape[0] != self.n * nw:
            return
        per_image = part.reshape(self.n, nw, *part.shape[1:])  # (B, nW, H, N_q, N_k)
        for pos in self.keep:
            arr = per_image[pos]
            arr = arr[0] if nw == 1 else arr  # (H, N_q, N_k) for global attention, (nW, H, n_q, n_k) for windows
            arr, self.kept_pool = pool_map(arr) if nw == 1 else (arr, 1)
            store.setdefault((pos, cond), []).append(arr.to(torch.float16).cpu().numpy())

    def __call__(self, lm: LayerMap) -> None:
        attn = lm.attn.float()  # NOTE: metrics in fp32 also when the model runs in bf16/fp16
        parts_n = 2 if self.cond is not None else 1
        total = self.n * parts_n
        if attn.shape[0] % total:
            self._note(f"{lm.layer.name}: maps of shape {tuple(attn.shape)} do not split into images; left out", -1)
            return
        nw = attn.shape[0] // total
        size = self.n * nw
        clean = attn[:size]
        corr = attn[size:2 * size] if self.cond is not None else None
        if not lm.is_token_attention:
            if self.with_clean:
                self._keep(self.kept_cls, clean, nw, CLEAN)
            if corr is not None:
                self._keep(self.kept_cls, corr, nw, self.cond)
            return
        layer = lm.index
        self.windows.append(nw)
        self.layers.append(layer_meta(lm, nw))
        if self.with_clean:
            self._per_condition(clean, nw, CLEAN, self.plan.clean_metrics, layer)
            self._keep(self.kept, clean, nw, CLEAN)
        if corr is not None:
            self._per_condition(corr, nw, self.cond, self.plan.corrupted_metrics, layer)
            if self.plan.cosine:
                self._put(STABILITY_METRIC, self.cond, layer, window_mean(attention_cosine(clean, corr), nw))
            self._keep(self.kept, corr, nw, self.cond)
