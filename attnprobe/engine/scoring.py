"""Scorers: how the engine turns one batch into sums (top-1 correct by default; anything else is pluggable).

Scorer contract: `Scorer(fn, fields)`; `fn(model, inputs, targets) -> {field: sum over the batch}` (tensors or
numbers, on any device); `fields` lists every key `fn` returns, in a fixed order (all ranks must agree). The field
`"correct"` goes to `ChunkCounts.correct`, the others to `ChunkCounts.extra` (summed over chunks by the store).
`needs_grad=True` runs the scorer outside `torch.inference_mode` (adversarial attacks). `per_sample=True` promises
that `fn` also returns `"correct_mask"`, a boolean vector with one entry per sample of the batch (not in `fields`):
the engine then stores each chunk's per-sample correctness beside its counts (`ResultsStore.sample_correctness`),
for bootstraps paired over images. The built-in top-1 scorers do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["ScoreFn", "Scorer", "restricted_top1_scorer", "top1_scorer"]

ScoreFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], Mapping[str, Any]]


@dataclass(frozen=True)
class Scorer:
    """Turns one batch into sums. See the module docstring for the contract.

    Attributes:
        fn: `fn(model, inputs, targets) -> {field: batch sum}`; inputs and targets are already on the device.
        fields: every key `fn` returns, in a fixed order; `"correct"` is stored as the chunk's correct count.
        needs_grad: run outside `torch.inference_mode` (e.g. PGD needs input gradients).
        per_sample: `fn` also returns `"correct_mask"` (bool, one per sample), stored per chunk.
    """

    fn: ScoreFn
    fields: tuple[str, ...] = ("correct",)
    needs_grad: bool = False
    per_sample: bool = False


def _top1(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    hit = model(x).argmax(dim=1) == y
    return {"correct": hit.sum(), "correct_mask": hit}


#: Top-1 correct count over all logits (the default), with per-sample correctness.
top1_scorer = Scorer(_top1, per_sample=True)


def restricted_top1_scorer(indices: Sequence[int]) -> Scorer:
    """Top-1 correct count among a subset of the logits (ImageNet-A/R: 200 of 1000 classes).

    Targets are positions in `indices` (0..len(indices)-1), as ImageNet-A/R folders are labelled.
    """
    idx = torch.as_tensor(list(indices), dtype=torch.long)
    cache: dict[torch.device, torch.Tensor] = {}

    def fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = model(x)
        sel = cache.setdefault(logits.device, idx.to(logits.device))
        hit = logits.index_select(1, sel).argmax(dim=1) == y
        return {"correct": hit.sum(), "correct_mask": hit}

    return Scorer(fn, per_sample=True)

