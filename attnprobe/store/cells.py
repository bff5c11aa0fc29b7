"""Counting-benchmark rows: the committed chunks of each cell, their per-sample records, and finished cells.

A cell is evaluated in fixed chunks of its sorted sample list; each chunk is committed in its own transaction with
its counts (and, optionally, the per-sample top-1 correctness: `numpy.packbits` of the chunk's samples in order,
plus a mask of the skipped ones). Committing is idempotent: a chunk that is already stored with the same numbers is
not stored again (another process computed it), and one stored with other numbers is refused, so nothing is ever
counted twice or silently replaced.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

import numpy as np

from attnprobe.store.connection import StoreConnection
from attnprobe.store.errors import StoreConflictError
from attnprobe.store.keys import CELL_COLS, CELL_WHERE, CellKey, ChunkCounts

__all__ = ["CellRecords"]


def _packed(key: CellKey, chunk: int, counts: ChunkCounts, correct_bits: np.ndarray | None,
            skipped_mask: np.ndarray | None) -> tuple | None:
    """The `sample_bits` row of a chunk, or None without a per-sample record."""
    if correct_bits is None:
        return None
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
    return (*key.as_tuple(), int(chunk), int(cb.size), np.packbits(cb).tobytes(), sk)


class CellRecords:
    """Chunks, per-sample records and finished cells (mixed into `ResultsStore`)."""

    _conn: StoreConnection

    def done_chunks(self, key: CellKey) -> set[int]:
        """Indices of the chunks of `key` that are already committed."""
        return {int(r[0]) for r in self._conn.read(f"SELECT chunk FROM chunks WHERE {CELL_WHERE}", key.as_tuple())}

    def add_chunk(self, key: CellKey, chunk: int, counts: ChunkCounts, correct_bits: np.ndarray | None = None,
                  skipped_mask: np.ndarray | None = None) -> bool:
        """Commit the counts of one finished chunk (and its per-sample record) in one transaction.

        Args:
            key, chunk, counts: the cell, the chunk index and its counts.
            correct_bits: optional per-sample top-1 correctness of the chunk's samples in order (skipped samples
                False); stored packed in the same transaction as the counts.
            skipped_mask: optional per-sample flags of the skipped (unreadable) samples, same length.

        Returns:
            True when stored; False when the store already held this chunk with the same numbers (computed by another
            process: it is not counted twice).

        Raises:
            StoreConflictError: the store holds this chunk with other numbers (nothing is written).
        """
        bits_row = _packed(key, chunk, counts, correct_bits, skipped_mask)
        row = (*key.as_tuple(), int(chunk), int(counts.n), int(counts.correct), int(counts.skipped),
               json.dumps(counts.extra) if counts.extra else None, time.time())
        at = f"{CELL_WHERE} AND chunk = ?"
        with self._conn.transaction() as db:
            old = db.execute(f"SELECT n, correct, skipped, extra FROM chunks WHERE {at}", row[:8]).fetchone()
            if old is None:
                db.execute("INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
                if bits_row is not None:
                    db.execute("INSERT OR REPLACE INTO sample_bits VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", bits_row)
            else:
                old_bits = db.execute(f"SELECT bits, skipped_bits FROM sample_bits WHERE {at}", row[:8]).fetchone()
                _check_same(key, chunk, old, counts, old_bits, bits_row)
            db.execute(f"DELETE FROM leases WHERE {at}", row[:8])
        return old is None

    def finish_cell(self, key: CellKey, n_chunks: int, info: dict[str, Any] | None = None) -> None:
        """Mark a cell complete once all of its `n_chunks` chunks are committed (a cell marked before stays as is)."""
        with self._conn.transaction() as db:
            have = {int(r[0]) for r in db.execute(f"SELECT chunk FROM chunks WHERE {CELL_WHERE}", key.as_tuple())}
            missing = set(range(n_chunks)) - have
            if missing:
                raise RuntimeError(f"cannot finish cell {key}: chunks {sorted(missing)[:5]} are missing")
            db.execute("INSERT OR IGNORE INTO cells VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (*key.as_tuple(), int(n_chunks), json.dumps(info or {}), time.time()))

    def is_cell_done(self, key: CellKey) -> bool:
        return bool(self._conn.read(f"SELECT 1 FROM cells WHERE {CELL_WHERE}", key.as_tuple()))

    def cell_totals(self, key: CellKey) -> ChunkCounts:
        """Sum of the committed chunks of `key` (numeric `extra` fields are summed too)."""
        n = correct = skipped = 0
        extra: dict[str, Any] = {}
        for r in self._conn.read(f"SELECT n, correct, skipped, extra FROM chunks WHERE {CELL_WHERE}",
                                 key.as_tuple()):
            n, correct, skipped = n + r[0], correct + r[1], skipped + r[2]
            for k, v in (json.loads(r[3]) if r[3] else {}).items():
                extra[k] = extra.get(k, 0) + v
        return ChunkCounts(n=n, correct=correct, skipped=skipped, extra=extra or None)

    def clear_cell(self, key: CellKey) -> None:
        """Delete a cell and its chunks (only for an explicit `--fresh`)."""
        with self._conn.transaction() as db:
            for table in ("chunks", "sample_bits", "cells"):
                db.execute(f"DELETE FROM {table} WHERE {CELL_WHERE}", key.as_tuple())

    def cells(self, **filters: Any) -> list[dict[str, Any]]:
        """Finished cells with their summed counts, optionally filtered by column (e.g. `task="imagenet_c"`)."""
        where = " AND ".join(f"c.{k} = ?" for k in filters) or "1"
        sql = (f"SELECT c.model, c.checkpoint_sha256, c.task, c.dataset, c.preprocessing, c.condition, c.severity,"
               f" c.info, c.finished_at, SUM(k.n) AS n, SUM(k.correct) AS correct, SUM(k.skipped) AS skipped"
               f" FROM cells c JOIN chunks k USING ({CELL_COLS}) WHERE {where}"
               f" GROUP BY {', '.join('c.' + c.strip() for c in CELL_COLS.split(','))}"
               f" ORDER BY c.model, c.task, c.condition, c.severity")
        out = []
        for r in self._conn.read(sql, tuple(filters.values())):
            d = dict(r)
            d["info"] = json.loads(d["info"]) if d["info"] else {}
            key = CellKey(*(d[c.strip()] for c in CELL_COLS.split(",")))
            d["extra"] = self.cell_totals(key).extra or {}
            out.append(d)
        return out

    # -- per-sample records ---------------------------------------------------------------------------------------
    def _sample_rows(self, key: CellKey) -> list[tuple[int, int, bytes, bytes | None]] | None:
        """(n, chunk samples, bits, skipped bits) per chunk in order, or None when any chunk lacks bits."""
        k_where = " AND ".join("k." + w for w in CELL_WHERE.split(" AND "))
        try:
            rows = self._conn.read(
                f"SELECT k.chunk, b.n, b.bits, b.skipped_bits FROM chunks k LEFT JOIN sample_bits b"
                f" USING ({CELL_COLS}, chunk) WHERE {k_where} ORDER BY k.chunk", key.as_tuple())
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


def _check_same(key: CellKey, chunk: int, old: sqlite3.Row, counts: ChunkCounts, old_bits: sqlite3.Row | None,
                bits_row: tuple | None) -> None:
    """Refuse a chunk that is already stored with other numbers."""
    old_extra = json.loads(old["extra"]) if old["extra"] else None
    same = (int(old["n"]), int(old["correct"]), int(old["skipped"]), old_extra or None) == (
        int(counts.n), int(counts.correct), int(counts.skipped), counts.extra or None)
    if same and old_bits is not None and bits_row is not None:
        same = (bytes(old_bits["bits"]), _opt_bytes(old_bits["skipped_bits"])) == (bits_row[9], bits_row[10])
    if not same:
        raise StoreConflictError(
            f"chunk {chunk} of {key.label()} is already stored with other numbers (correct {old['correct']} of "
            f"{old['n']}, skipped {old['skipped']}; now {counts.correct} of {counts.n}, skipped {counts.skipped}); "
            f"the stored chunk is kept",
            stored=ChunkCounts(int(old["n"]), int(old["correct"]), int(old["skipped"]), old_extra))


def _opt_bytes(v: Any) -> bytes | None:
    return bytes(v) if v is not None else None
