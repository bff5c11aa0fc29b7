"""The results store: one SQLite file (`results.sqlite`) in an output directory, shared by every command.

Evaluation writes raw results here; tables, figures and reports are drawn from it, never from live tensors.

Three kinds of rows:

* **Counting benchmarks** (clean accuracy, ImageNet-C/-P/-A/-R, PGD): a *cell* is one
  (model, checkpoint sha256, task, dataset fingerprint, preprocessing, condition, severity). A cell is evaluated
  in fixed *chunks* of its sorted sample list; each finished chunk is committed in its own transaction with its
  counts. A killed run loses at most the chunk in flight, and a rerun skips committed chunks, so nothing is
  counted twice. A cell is *done* once every chunk is in and `finish_cell` was called. A chunk may also carry its
  per-sample top-1 correctness (table `sample_bits`: `numpy.packbits` of the chunk's samples in order, plus a mask
  of the skipped ones), written in the same transaction; reports use it for bootstraps paired over images.
* **Diagnostics** (attention stability, overfocusing, head similarity): one value per
  (model, checkpoint, metric, dataset, condition, severity, image, layer, head); `head = -1` means
  "not per head" (e.g. head-averaged or head-pair metrics).
* **Artifacts**: files written beside the store (attention maps for figures), with their metadata.

Conventions: `severity = 0` means "not applicable" (clean data, ImageNet-A/R, PGD); `condition = "clean"` for clean
data. Rates are stored as counts, and diagnostics as fractions, never percentages.

Only rank 0 of a distributed run should open a store for writing (see `attnprobe.distributed`).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA_VERSION = 1
STORE_FILENAME = "results.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS models (
    model TEXT NOT NULL, checkpoint_sha256 TEXT NOT NULL, checkpoint_path TEXT, card TEXT,
    added_at REAL NOT NULL,
    PRIMARY KEY (model, checkpoint_sha256));
CREATE TABLE IF NOT EXISTS chunks (
    model TEXT NOT NULL, checkpoint_sha256 TEXT NOT NULL, task TEXT NOT NULL, dataset TEXT NOT NULL,
    preprocessing TEXT NOT NULL, condition TEXT NOT NULL, severity INTEGER NOT NULL, chunk INTEGER NOT NULL,
    n INTEGER NOT NULL, correct INTEGER NOT NULL, skipped INTEGER NOT NULL, extra TEXT,
    finished_at REAL NOT NULL,
    PRIMARY KEY (model, checkpoint_sha256, task, dataset, preprocessing, condition, severity, chunk));
CREATE TABLE IF NOT EXISTS cells (
    model TEXT NOT NULL, checkpoint_sha256 TEXT NOT NULL, task TEXT NOT NULL, dataset TEXT NOT NULL,
    preprocessing TEXT NOT NULL, condition TEXT NOT NULL, severity INTEGER NOT NULL,
    n_chunks INTEGER NOT NULL, info TEXT, finished_at REAL NOT NULL,
    PRIMARY KEY (model, checkpoint_sha256, task, dataset, preprocessing, condition, severity));
CREATE TABLE IF NOT EXISTS diagnostics (
    model TEXT NOT NULL, checkpoint_sha256 TEXT NOT NULL, metric TEXT NOT NULL, dataset TEXT NOT NULL,
    condition TEXT NOT NULL, severity INTEGER NOT NULL, image TEXT NOT NULL, layer INTEGER NOT NULL,
    head INTEGER NOT NULL, value REAL NOT NULL,
    PRIMARY KEY (model, checkpoint_sha256, metric, dataset, condition, severity, image, layer, head));
CREATE TABLE IF NOT EXISTS artifacts (
    model TEXT NOT NULL, checkpoint_sha256 TEXT NOT NULL, kind TEXT NOT NULL, dataset TEXT NOT NULL,
    condition TEXT NOT NULL, severity INTEGER NOT NULL, image TEXT NOT NULL, path TEXT NOT NULL, meta TEXT,
    PRIMARY KEY (model, checkpoint_sha256, kind, dataset, condition, severity, image));
CREATE TABLE IF NOT EXISTS sample_bits (
    model TEXT NOT NULL, checkpoint_sha256 TEXT NOT NULL, task TEXT NOT NULL, dataset TEXT NOT NULL,
    preprocessing TEXT NOT NULL, condition TEXT NOT NULL, severity INTEGER NOT NULL, chunk INTEGER NOT NULL,
    n INTEGER NOT NULL, bits BLOB NOT NULL, skipped_bits BLOB,
    PRIMARY KEY (model, checkpoint_sha256, task, dataset, preprocessing, condition, severity, chunk));
"""


@dataclass(frozen=True)
class CellKey:
    """Identifies one cell of a counting benchmark (see module docstring)."""

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


_CELL_COLS = "model, checkpoint_sha256, task, dataset, preprocessing, condition, severity"
_CELL_WHERE = " AND ".join(f"{c.strip()} = ?" for c in _CELL_COLS.split(","))
_DIAG_COLS = "model, checkpoint_sha256, metric, dataset, condition, severity"
_DIAG_WHERE = " AND ".join(f"{c.strip()} = ?" for c in _DIAG_COLS.split(","))


class ResultsStore:
    """A results store rooted at a directory; the SQLite file is `<root>/results.sqlite`.

    Args:
        root: output directory (created if missing).
        readonly: open an existing store without creating or writing anything (for `attnprobe report`).
    """

    def __init__(self, root: str | Path, readonly: bool = False) -> None:
        self.root = Path(root).expanduser().resolve()
        self.path = self.root / STORE_FILENAME
        if readonly:
            if not self.path.exists():
                from attnprobe.errors import UserError

                raise UserError(f"no results store at {self.path}; run an evaluation with --out {self.root} first")
            self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None)
        else:
            self.root.mkdir(parents=True, exist_ok=True)
            # NOTE: autocommit mode + explicit BEGIN IMMEDIATE per write, so every chunk is its own transaction.
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=60)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        self._db.row_factory = sqlite3.Row

    # -- plumbing ---------------------------------------------------------------------------------------------
    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write: either everything inside is stored or nothing is."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Run a read-only query and return all rows (for tables, figures and reports)."""
        return list(self._db.execute(sql, params))

    # -- models -----------------------------------------------------------------------------------------------
    def register_model(self, model: str, checkpoint_sha256: str, checkpoint_path: str | None = None,
                       card: dict[str, Any] | None = None) -> None:
        """Remember which checkpoint and card a model name referred to (first registration wins)."""
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO models VALUES (?, ?, ?, ?, ?)",
                       (model, checkpoint_sha256, checkpoint_path, json.dumps(card or {}, default=str), time.time()))

    def model_card(self, model: str, checkpoint_sha256: str) -> dict[str, Any]:
        rows = self.query("SELECT card FROM models WHERE model = ? AND checkpoint_sha256 = ?",
                          (model, checkpoint_sha256))
        return json.loads(rows[0]["card"]) if rows and rows[0]["card"] else {}

    # -- counting benchmarks ----------------------------------------------------------------------------------
    def done_chunks(self, key: CellKey) -> set[int]:
        """Indices of the chunks of `key` that are already committed."""
        rows = self._db.execute(f"SELECT chunk FROM chunks WHERE {_CELL_WHERE}", key.as_tuple())
        return {int(r[0]) for r in rows}

    def add_chunk(self, key: CellKey, chunk: int, counts: ChunkCounts, correct_bits: np.ndarray | None = None,
                  skipped_mask: np.ndarray | None = None) -> None:
        """Commit the counts of one finished chunk. A chunk already stored raises (never counted twice).

        Args:
            key, chunk, counts: the cell, the chunk index and its counts.
            correct_bits: optional per-sample top-1 correctness of the chunk's samples in order (skipped samples
                False); stored packed in the same transaction as the counts.
            skipped_mask: optional per-sample flags of the skipped (unreadable) samples, same length.
        """
        bits_row = None
        if correct_bits is not None:
            cb = np.asarray(correct_bits, dtype=bool).ravel()
            if cb.size != counts.n + counts.skipped:
                raise ValueError(f"correct_bits has {cb.size} samples, the chunk {counts.n + counts.skipped}")
            sk = None
            if skipped_mask is not None:
                sm = np.asarray(skipped_mask, dtype=bool).ravel()
                if sm.size != cb.size:
                    raise ValueError(f"skipped_mask has {sm.size} samples, correct_bits {cb.size}")
                cb = cb & ~sm
                sk = np.packbits(sm).tobytes() if sm.any() else None
            bits_row = (*key.as_tuple(), int(chunk), int(cb.size), np.packbits(cb).tobytes(), sk)
        with self.transaction() as db:
            db.execute("INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (*key.as_tuple(), int(chunk), int(counts.n), int(counts.correct), int(counts.skipped),
                        json.dumps(counts.extra) if counts.extra else None, time.time()))
            if bits_row is not None:
                db.execute("INSERT INTO sample_bits VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", bits_row)

    def _sample_rows(self, key: CellKey) -> list[tuple[int, int, bytes, bytes | None]] | None:
        """(n, chunk samples, bits, skipped bits) per chunk in order, or None when any chunk lacks bits."""
        try:
            rows = list(self._db.execute(
                f"SELECT k.chunk, b.n, b.bits, b.skipped_bits FROM chunks k LEFT JOIN sample_bits b"
                f" USING ({_CELL_COLS}, chunk) WHERE {' AND '.join('k.' + w for w in _CELL_WHERE.split(' AND '))}"
                f" ORDER BY k.chunk", key.as_tuple()))
        except sqlite3.OperationalError:  # a read-only store written before sample_bits existed
            return None
        if not rows or any(r[1] is None for r in rows):
            return None
        return [(int(r[0]), int(r[1]), bytes(r[2]), bytes(r[3]) if r[3] is not None else None) for r in rows]

    def sample_correctness(self, key: CellKey) -> np.ndarray | None:
        """Per-sample top-1 correctness of a cell's committed chunks, concatenated in chunk order (bool array).

        Skipped samples read False (see `sample_skipped`). None when any chunk has no per-sample record (stores
        written before they existed, or scorers without per-sample output) or the cell has no chunk.
        """
        rows = self._sample_rows(key)
        if rows is None:
            return None
        return np.concatenate([np.unpackbits(np.frombuffer(b, dtype=np.uint8), count=n).astype(bool)
                               for _, n, b, _ in rows])

    def sample_skipped(self, key: CellKey) -> np.ndarray | None:
        """Per-sample skipped (unreadable) flags, aligned with `sample_correctness`; None as there."""
        rows = self._sample_rows(key)
        if rows is None:
            return None
        return np.concatenate([np.unpackbits(np.frombuffer(s, dtype=np.uint8), count=n).astype(bool)
                               if s is not None else np.zeros(n, dtype=bool) for _, n, _, s in rows])

    def finish_cell(self, key: CellKey, n_chunks: int, info: dict[str, Any] | None = None) -> None:
        """Mark a cell complete once all of its `n_chunks` chunks are committed."""
        have = self.done_chunks(key)
        missing = set(range(n_chunks)) - have
        if missing:
            raise RuntimeError(f"cannot finish cell {key}: chunks {sorted(missing)[:5]} are missing")
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO cells VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (*key.as_tuple(), int(n_chunks), json.dumps(info or {}), time.time()))

    def is_cell_done(self, key: CellKey) -> bool:
        return bool(list(self._db.execute(f"SELECT 1 FROM cells WHERE {_CELL_WHERE}", key.as_tuple())))

    def cell_totals(self, key: CellKey) -> ChunkCounts:
        """Sum of the committed chunks of `key` (numeric `extra` fields are summed too)."""
        n = correct = skipped = 0
        extra: dict[str, Any] = {}
        for r in self._db.execute(f"SELECT n, correct, skipped, extra FROM chunks WHERE {_CELL_WHERE}",
                                  key.as_tuple()):
            n, correct, skipped = n + r[0], correct + r[1], skipped + r[2]
            for k, v in (json.loads(r[3]) if r[3] else {}).items():
                extra[k] = extra.get(k, 0) + v
        return ChunkCounts(n=n, correct=correct, skipped=skipped, extra=extra or None)

    def clear_cell(self, key: CellKey) -> None:
        """Delete a cell and its chunks (only for an explicit `--fresh`)."""
        with self.transaction() as db:
            db.execute(f"DELETE FROM chunks WHERE {_CELL_WHERE}", key.as_tuple())
            db.execute(f"DELETE FROM sample_bits WHERE {_CELL_WHERE}", key.as_tuple())
            db.execute(f"DELETE FROM cells WHERE {_CELL_WHERE}", key.as_tuple())

    def cells(self, **filters: Any) -> list[dict[str, Any]]:
        """Finished cells with their summed counts, optionally filtered by column (e.g. `task="imagenet_c"`)."""
        where = " AND ".join(f"c.{k} = ?" for k in filters) or "1"
        sql = (f"SELECT c.model, c.checkpoint_sha256, c.task, c.dataset, c.preprocessing, c.condition, c.severity,"
               f" c.info, c.finished_at, SUM(k.n) AS n, SUM(k.correct) AS correct, SUM(k.skipped) AS skipped"
               f" FROM cells c JOIN chunks k USING ({_CELL_COLS}) WHERE {where}"
               f" GROUP BY {', '.join('c.' + c.strip() for c in _CELL_COLS.split(','))}"
               f" ORDER BY c.model, c.task, c.condition, c.severity")
        out = []
        for r in self._db.execute(sql, tuple(filters.values())):
            d = dict(r)
            d["info"] = json.loads(d["info"]) if d["info"] else {}
            key = CellKey(*(d[c.strip()] for c in _CELL_COLS.split(",")))
            d["extra"] = self.cell_totals(key).extra or {}
            out.append(d)
        return out

    # -- diagnostics ------------------------------------------------------------------------------------------
    def diagnostic_images(self, key: DiagKey) -> set[str]:
        """Images for which `key` already has values (a rerun skips them)."""
        return {r[0] for r in self._db.execute(f"SELECT DISTINCT image FROM diagnostics WHERE {_DIAG_WHERE}",
                                               key.as_tuple())}

    def add_diagnostics(self, key: DiagKey, rows: Iterable[tuple[str, int, int, float]]) -> None:
        """Commit `(image, layer, head, value)` rows of one series in one transaction. Duplicates raise."""
        with self.transaction() as db:
            db.executemany("INSERT INTO diagnostics VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           ((*key.as_tuple(), str(img), int(layer), int(head), float(v)) for img, layer, head, v in rows))

    def clear_diagnostics(self, key: DiagKey) -> None:
        with self.transaction() as db:
            db.execute(f"DELETE FROM diagnostics WHERE {_DIAG_WHERE}", key.as_tuple())

    def diagnostics(self, **filters: Any) -> list[dict[str, Any]]:
        """Diagnostic rows as dicts, optionally filtered by column (e.g. `metric="attention_cosine"`)."""
        where = " AND ".join(f"{k} = ?" for k in filters) or "1"
        return [dict(r) for r in self._db.execute(
            f"SELECT * FROM diagnostics WHERE {where} ORDER BY model, metric, condition, severity, image, layer, head",
            tuple(filters.values()))]

    # -- artifacts --------------------------------------------------------------------------------------------
    def add_artifact(self, model: str, checkpoint_sha256: str, kind: str, dataset: str, condition: str,
                     severity: int, image: str, path: str | Path, meta: dict[str, Any] | None = None) -> None:
        """Record a file (relative to the store root when inside it). Re-recording the same artifact replaces the
        path, because the file it names is rewritten with identical content by a rerun."""
        p = Path(path).resolve()
        rel = str(p.relative_to(self.root)) if p.is_relative_to(self.root) else str(p)
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO artifacts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (model, checkpoint_sha256, kind, dataset, condition, int(severity), image, rel,
                        json.dumps(meta or {}, default=str)))

    def artifacts(self, **filters: Any) -> list[dict[str, Any]]:
        where = " AND ".join(f"{k} = ?" for k in filters) or "1"
        out = []
        for r in self._db.execute(f"SELECT * FROM artifacts WHERE {where} ORDER BY model, kind, image",
                                  tuple(filters.values())):
            d = dict(r)
            d["meta"] = json.loads(d["meta"]) if d["meta"] else {}
            d["abspath"] = str((self.root / d["path"]) if not Path(d["path"]).is_absolute() else Path(d["path"]))
            out.append(d)
        return out


def as_dict(obj: Any) -> dict[str, Any]:
    """Dataclass → dict helper for JSON output."""
    return asdict(obj)
