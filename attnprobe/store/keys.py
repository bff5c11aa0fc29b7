"""What identifies a row of the results store: `CellKey` (a counting-benchmark cell), `DiagKey` (a series of
diagnostic values), and `ChunkCounts` (the counts of one committed chunk)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["CELL_COLS", "CELL_WHERE", "DIAG_COLS", "DIAG_WHERE", "CellKey", "ChunkCounts", "DiagKey"]


@dataclass(frozen=True)
class CellKey:
    """Identifies one cell of a counting benchmark (see `attnprobe.store`)."""

    model: str
    checkpoint_sha256: str
    task: str
    dataset: str
    preprocessing: str
    condition: str
    severity: int = 0

    def as_tuple(self) -> tuple:
        return (self.model, self.checkpoint_sha256, self.task, self.dataset, self.preprocessing, self.condition,
                int(self.severity))

    def label(self) -> str:
        """A short human-readable name for messages: `fan_b/imagenet_c/gaussian_noise-s3`."""
        sev = f"-s{self.severity}" if self.severity else ""
        return f"{self.model}/{self.task}/{self.condition}{sev}"


@dataclass(frozen=True)
class DiagKey:
    """Identifies one series of diagnostic values (one metric of one model on one dataset/condition)."""

    model: str
    checkpoint_sha256: str
    metric: str
    dataset: str
    condition: str = "clean"
    severity: int = 0

    def as_tuple(self) -> tuple:
        return (self.model, self.checkpoint_sha256, self.metric, self.dataset, self.condition, int(self.severity))


@dataclass(frozen=True)
class ChunkCounts:
    """Counts of one finished chunk. `extra` holds additional sums (JSON-serialisable), e.g. flip counts."""

    n: int
    correct: int
    skipped: int = 0
    extra: dict[str, Any] | None = None


#: The key columns of the `chunks`, `sample_bits`, `cells` and `leases` tables, in `CellKey.as_tuple()` order.
CELL_COLS = "model, checkpoint_sha256, task, dataset, preprocessing, condition, severity"
CELL_WHERE = " AND ".join(f"{c.strip()} = ?" for c in CELL_COLS.split(","))
#: The series columns of the `diagnostics` table, in `DiagKey.as_tuple()` order.
DIAG_COLS = "model, checkpoint_sha256, metric, dataset, condition, severity"
DIAG_WHERE = " AND ".join(f"{c.strip()} = ?" for c in DIAG_COLS.split(","))
