"""What the engine evaluates (`CellSpec`: a store key and a dataset) and what it returns (`CellResult`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from torch.utils.data import Dataset

from attnprobe.store import CellKey

__all__ = ["CellResult", "CellSpec", "finite"]


def finite(x: float) -> float | None:
    """NaN (no readable sample) -> None, so that JSON output stays valid JSON."""
    return None if isinstance(x, float) and math.isnan(x) else x


@dataclass
class CellSpec:
    """One cell to evaluate: where its counts go (`key`) and its samples (`dataset`, sorted, see contract).

    `info` is stored with the finished cell (e.g. the on-the-fly recipe, whether inputs were resized).
    """

    key: CellKey
    dataset: Dataset
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class CellResult:
    """Totals of one cell after `run_cells` (from the store when there is one)."""

    key: CellKey
    n: int
    correct: int
    skipped: int
    extra: dict[str, Any]
    n_chunks: int
    computed_chunks: int
    cached: bool
    seconds: float = 0.0
    skipped_samples: list[str] = field(default_factory=list)

    @property
    def top1_accuracy(self) -> float:
        return self.correct / self.n if self.n else math.nan

    @property
    def top1_error(self) -> float:
        return 1.0 - self.correct / self.n if self.n else math.nan

    def as_dict(self) -> dict[str, Any]:
        return {"condition": self.key.condition, "severity": self.key.severity, "task": self.key.task,
                "dataset": self.key.dataset, "n": self.n, "correct": self.correct, "skipped": self.skipped,
                "top1_error": finite(self.top1_error), "extra": self.extra, "cached": self.cached}

