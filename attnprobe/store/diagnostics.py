"""Diagnostic rows: one value per (model, checkpoint, metric, dataset, condition, severity, image, layer, head);
`head = -1` means "not per head" (head-averaged or head-pair metrics). Values are fractions, never percentages."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from attnprobe.store.connection import StoreConnection
from attnprobe.store.keys import DIAG_WHERE, DiagKey

__all__ = ["DiagnosticRecords"]


class DiagnosticRecords:
    """Per-image diagnostic values (mixed into `ResultsStore`)."""

    _conn: StoreConnection

    def diagnostic_images(self, key: DiagKey) -> set[str]:
        """Images for which `key` already has values (a rerun skips them)."""
        return {r[0] for r in self._conn.read(f"SELECT DISTINCT image FROM diagnostics WHERE {DIAG_WHERE}",
                                              key.as_tuple())}

    def add_diagnostics(self, key: DiagKey, rows: Iterable[tuple[str, int, int, float]]) -> int:
        """Commit `(image, layer, head, value)` rows of one series in one transaction; returns how many were new.

        A row that is already stored keeps its first value: two runs on the same store compute the same images
        (up to the last bits on a GPU), and every run reports the stored values, so all of them agree.
        """
        values = [(*key.as_tuple(), str(img), int(layer), int(head), float(v)) for img, layer, head, v in rows]
        with self._conn.transaction() as db:
            before = db.total_changes
            db.executemany("INSERT OR IGNORE INTO diagnostics VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", values)
            return db.total_changes - before

    def clear_diagnostics(self, key: DiagKey) -> None:
        with self._conn.transaction() as db:
            db.execute(f"DELETE FROM diagnostics WHERE {DIAG_WHERE}", key.as_tuple())

    def diagnostics(self, **filters: Any) -> list[dict[str, Any]]:
        """Diagnostic rows as dicts, optionally filtered by column (e.g. `metric="attention_cosine"`)."""
        where = " AND ".join(f"{k} = ?" for k in filters) or "1"
        return [dict(r) for r in self._conn.read(
            f"SELECT * FROM diagnostics WHERE {where} ORDER BY model, metric, condition, severity, image, layer, head",
            tuple(filters.values()))]
