"""What the diagnostics report: running statistics per (layer, head) and the JSON-ready `DiagnosticsResult`."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from attnprobe.store import DiagKey, ResultsStore

__all__ = ["DiagnosticsResult", "RunningStats", "ranges", "rounded", "stored_stats"]

_SQL_CHUNK = 500  # image ids per query (SQLite limits the number of parameters)


class RunningStats:
    """Running count / sum / sum of squares / min / max per (layer, head)."""

    def __init__(self) -> None:
        self.cells: dict[tuple[int, int], list[float]] = {}

    def add(self, layer: int, head: int, n: float, s: float, ss: float, lo: float, hi: float) -> None:
        c = self.cells.get((layer, head))
        if c is None:
            self.cells[(layer, head)] = [n, s, ss, lo, hi]
        else:
            c[0] += n
            c[1] += s
            c[2] += ss
            c[3] = min(c[3], lo)
            c[4] = max(c[4], hi)

    def add_values(self, layer: int, values: torch.Tensor) -> None:
        """values: (B,) head-free or (B, H) per head."""
        v = values.detach().double().cpu()
        if v.ndim == 1:
            self.add(layer, -1, v.numel(), v.sum().item(), (v * v).sum().item(), v.min().item(), v.max().item())
            return
        for h in range(v.shape[1]):
            col = v[:, h]
            self.add(layer, h, col.numel(), col.sum().item(), (col * col).sum().item(), col.min().item(),
                     col.max().item())

    def layer_summary(self, layer: int) -> dict[str, Any] | None:
        cells = {h: c for (lay, h), c in self.cells.items() if lay == layer}
        if not cells:
            return None
        n = sum(c[0] for c in cells.values())
        s = sum(c[1] for c in cells.values())
        ss = sum(c[2] for c in cells.values())
        mean = s / n
        var = max(ss / n - mean * mean, 0.0)
        out = {"mean": mean, "std": math.sqrt(var), "min": min(c[3] for c in cells.values()),
               "max": max(c[4] for c in cells.values()), "n": int(n)}
        heads = sorted(h for h in cells if h >= 0)
        if heads:
            out["per_head"] = [cells[h][1] / cells[h][0] for h in heads]
            out["n_images"] = int(cells[heads[0]][0])
        else:
            out["n_images"] = int(n)
        return out

    def layers(self) -> list[int]:
        return sorted({lay for lay, _ in self.cells})

    def overall(self) -> float | None:
        n = sum(c[0] for c in self.cells.values())
        return sum(c[1] for c in self.cells.values()) / n if n else None


@dataclass
class DiagnosticsResult:
    """What a driver returns: one entry per (model, condition), JSON-ready via `to_json()`."""

    command: str
    results: list[dict[str, Any]]
    out: str | None = None
    artifacts: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        payload: dict[str, Any] = {"command": self.command, "results": self.results}
        if self.out:
            payload["out"] = self.out
        return payload


def ranges(values: Iterable[int]) -> str:
    """`0-3, 5` for {0, 1, 2, 3, 5}."""
    out: list[str] = []
    for v in sorted(v for v in values if v >= 0):
        if out and out[-1].rsplit("-", 1)[-1] == str(v - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{v}"
        else:
            out.append(str(v))
    return ", ".join(out)


def rounded(x: float | None, digits: int = 6) -> float | None:
    return None if x is None else round(float(x), digits)


def stored_stats(store: ResultsStore, key: DiagKey, image_ids: list[str]) -> RunningStats:
    """Statistics per (layer, head) of one stored series, over the given images only."""
    stats = RunningStats()
    where = " AND ".join(f"{c} = ?" for c in ("model", "checkpoint_sha256", "metric", "dataset", "condition",
                                              "severity"))
    for i in range(0, len(image_ids), _SQL_CHUNK):
        chunk = image_ids[i:i + _SQL_CHUNK]
        marks = ",".join("?" * len(chunk))
        rows = store.query(
            f"SELECT layer, head, COUNT(*), SUM(value), SUM(value * value), MIN(value), MAX(value) "
            f"FROM diagnostics WHERE {where} AND image IN ({marks}) GROUP BY layer, head",
            (*key.as_tuple(), *chunk))
        for r in rows:
            stats.add(int(r[0]), int(r[1]), r[2], r[3], r[4], r[5], r[6])
    return stats
