"""What the results point at: the models (checkpoint path and zoo card per model name and checkpoint hash) and the
artifacts, files written beside the store (attention maps for figures) with their metadata."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from attnprobe.store.connection import StoreConnection

__all__ = ["ArtifactRecords", "ModelRegistry"]


class ModelRegistry:
    """Which checkpoint and card a model name referred to (mixed into `ResultsStore`)."""

    _conn: StoreConnection

    def register_model(self, model: str, checkpoint_sha256: str, checkpoint_path: str | None = None,
                       card: dict[str, Any] | None = None) -> None:
        """Remember which checkpoint and card a model name referred to (first registration wins)."""
        with self._conn.transaction() as db:
            db.execute("INSERT OR IGNORE INTO models VALUES (?, ?, ?, ?, ?)",
                       (model, checkpoint_sha256, checkpoint_path, json.dumps(card or {}, default=str), time.time()))

    def model_card(self, model: str, checkpoint_sha256: str) -> dict[str, Any]:
        rows = self._conn.read("SELECT card FROM models WHERE model = ? AND checkpoint_sha256 = ?",
                               (model, checkpoint_sha256))
        return json.loads(rows[0]["card"]) if rows and rows[0]["card"] else {}


class ArtifactRecords:
    """Files beside the store and their metadata (mixed into `ResultsStore`)."""

    _conn: StoreConnection
    root: Path

    def add_artifact(self, model: str, checkpoint_sha256: str, kind: str, dataset: str, condition: str,
                     severity: int, image: str, path: str | Path, meta: dict[str, Any] | None = None) -> None:
        """Record a file (relative to the store root when inside it). Re-recording the same artifact replaces the
        path, because the file it names is rewritten with identical content by a rerun."""
        p = Path(path).resolve()
        rel = str(p.relative_to(self.root)) if p.is_relative_to(self.root) else str(p)
        with self._conn.transaction() as db:
            db.execute("INSERT OR REPLACE INTO artifacts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (model, checkpoint_sha256, kind, dataset, condition, int(severity), image, rel,
                        json.dumps(meta or {}, default=str)))

    def artifacts(self, **filters: Any) -> list[dict[str, Any]]:
        where = " AND ".join(f"{k} = ?" for k in filters) or "1"
        out = []
        for r in self._conn.read(f"SELECT * FROM artifacts WHERE {where} ORDER BY model, kind, image",
                                 tuple(filters.values())):
            d = dict(r)
            d["meta"] = json.loads(d["meta"]) if d["meta"] else {}
            d["abspath"] = str((self.root / d["path"]) if not Path(d["path"]).is_absolute() else Path(d["path"]))
            out.append(d)
        return out
