"""Merging results stores made on different machines (one store per node or per job) into one.

    attnprobe merge node1/ node2/ node3/ --out results/

Rows are copied by key. A key the target lacks is added; a key it holds with the same numbers is skipped, so merging
the same store twice changes nothing; a key it holds with other numbers is a conflict, and the source is refused as a
whole with one line naming the conflicting cells. What is compared:

* chunks of counting benchmarks (n, correct, skipped, extra sums, per-sample record), exactly; and each cell's chunk
  layout (a store made with another `--chunk-size` is refused rather than mixed);
* finished-cell marks (their number of chunks);
* diagnostic values, within 1e-4 + 1e-5 x |value| (the same image on two GPUs may differ in the last bits; the
  target's value is kept);
* models: the first registration wins, as within one store; artifacts: a row the target lacks is added together
  with its file, copied to the same path relative to the target store (an absolute path outside the source store is
  recorded as is); a row the target has is kept.

Every source is checked against the target before anything is written, then merged in one transaction per source;
two sources that conflict with each other are found when the second is merged (the first stays merged; merging it
again is a no-op). Partial cells are merged chunk by chunk: rerunning the command on the merged store completes
them. Leases (work in progress) are never merged.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from attnprobe.errors import UserError
from attnprobe.store.connection import store_uri
from attnprobe.store.errors import StoreConflictError
from attnprobe.store.files import write_atomically
from attnprobe.store.keys import CELL_COLS
from attnprobe.store.results import ResultsStore

__all__ = ["MergeReport", "merge_stores"]

_DIAG_PK = "model, checkpoint_sha256, metric, dataset, condition, severity, image, layer, head"
_ART_PK = "model, checkpoint_sha256, kind, dataset, condition, severity, image"
#: table -> (its columns, its key columns), copied row by row where the target lacks the key
_COPIED = {
    "models": ("model, checkpoint_sha256, checkpoint_path, card, added_at", "model, checkpoint_sha256"),
    "chunks": (f"{CELL_COLS}, chunk, n, correct, skipped, extra, finished_at", f"{CELL_COLS}, chunk"),
    "sample_bits": (f"{CELL_COLS}, chunk, n, bits, skipped_bits", f"{CELL_COLS}, chunk"),
    "cells": (f"{CELL_COLS}, n_chunks, info, finished_at", CELL_COLS),
    "diagnostics": (f"{_DIAG_PK}, value", _DIAG_PK),
}
_CELL_NAME = ("a.model || '/' || a.task || '/' || a.condition"
              " || CASE WHEN a.severity THEN '-s' || a.severity ELSE '' END")
_CONFLICTS = {
    "chunks": f"""SELECT {_CELL_NAME} || ' chunk ' || a.chunk || ' (correct ' || b.correct || '/' || b.n || ' vs '
        || a.correct || '/' || a.n || ')' FROM src.chunks a JOIN main.chunks b USING ({CELL_COLS}, chunk)
        WHERE a.n != b.n OR a.correct != b.correct OR a.skipped != b.skipped
            OR IFNULL(a.extra, '') != IFNULL(b.extra, '')""",
    "sample_bits": f"""SELECT {_CELL_NAME} || ' chunk ' || a.chunk || ' (per-image record)'
        FROM src.sample_bits a JOIN main.sample_bits b USING ({CELL_COLS}, chunk)
        WHERE a.bits != b.bits OR IFNULL(a.skipped_bits, x'') != IFNULL(b.skipped_bits, x'')""",
    "cells": f"""SELECT {_CELL_NAME} || ' (' || b.n_chunks || ' vs ' || a.n_chunks || ' chunks)'
        FROM src.cells a JOIN main.cells b USING ({CELL_COLS}) WHERE a.n_chunks != b.n_chunks""",
    "layout": f"""SELECT {_CELL_NAME} || ' (chunks of ' || b.size || ' vs ' || a.size || ' samples)'
        FROM (SELECT {CELL_COLS}, MAX(n + skipped) AS size FROM src.chunks GROUP BY {CELL_COLS}) a
        JOIN (SELECT {CELL_COLS}, MAX(n + skipped) AS size FROM main.chunks GROUP BY {CELL_COLS}) b
        USING ({CELL_COLS}) WHERE a.size != b.size""",
    "diagnostics": f"""SELECT a.model || ' ' || a.metric || ' ' || a.condition || CASE WHEN a.severity
        THEN '-s' || a.severity ELSE '' END || ' image ' || a.image || ' layer ' || a.layer || ' head ' || a.head
        || ' (' || printf('%.6g', b.value) || ' vs ' || printf('%.6g', a.value) || ')'
        FROM src.diagnostics a JOIN main.diagnostics b USING ({_DIAG_PK})
        WHERE ABS(a.value - b.value) > 1e-4 + 1e-5 * ABS(b.value)""",
}
_MAX_NAMED = 5


@dataclass
class MergeReport:
    """What `merge_stores` did: per source, the rows added per table and the artifact files copied."""

    target: str
    sources: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def merge_stores(sources: Sequence[str | Path], target: str | Path) -> MergeReport:
    """Merge the results stores in `sources` (folders) into the store in `target` (created if missing).

    Raises:
        StoreConflictError: a source holds a key of the target with other numbers (one line naming up to five
            conflicting cells); nothing of that source is written.
        UserError: a source is missing, not a store, or the target itself.
    """
    if not sources:
        raise UserError("no store to merge; name at least one results-store folder")
    paths = []
    for s in sources:
        with ResultsStore(s, readonly=True) as src:  # recognised as a store, readable
            paths.append(src.path)
    report = MergeReport(target=str(Path(target).expanduser().resolve()))
    with ResultsStore(target) as tgt:
        for p in paths:
            if os.path.samefile(p, tgt.path):
                raise UserError(f"{p.parent} is the --out store itself; list only the stores to merge into it")
        for p in paths:  # NOTE: check every source before writing anything
            with _attached(tgt, p) as tables:
                _refuse_conflicts(tgt, p, tables)
        for p in paths:
            with _attached(tgt, p) as tables:
                report.sources.append(_merge_one(tgt, p, tables))
    return report


@contextmanager
def _attached(tgt: ResultsStore, src: Path) -> Iterator[set[str]]:
    """The source store attached read-only as schema `src` of the target's connection; yields its tables."""
    conn = tgt._conn
    conn.guard(lambda: conn.db.execute("ATTACH DATABASE ? AS src", (store_uri(src, readonly=True),)))
    try:
        try:
            tables = {r[0] for r in conn.db.execute("SELECT name FROM src.sqlite_master WHERE type = 'table'")}
        except sqlite3.OperationalError:  # a WAL store on read-only media: read it as an immutable file
            conn.db.execute("DETACH DATABASE src")
            conn.guard(lambda: conn.db.execute("ATTACH DATABASE ? AS src", (store_uri(src, True, True),)))
            tables = {r[0] for r in conn.db.execute("SELECT name FROM src.sqlite_master WHERE type = 'table'")}
        yield tables
    finally:
        conn.db.execute("DETACH DATABASE src")


def _refuse_conflicts(tgt: ResultsStore, src: Path, tables: set[str]) -> None:
    found: list[str] = []
    for name, sql in _CONFLICTS.items():
        table = "chunks" if name == "layout" else name
        if table in tables:
            found += [r[0] for r in tgt._conn.read(f"{sql} LIMIT {_MAX_NAMED + 1}")]
    if found:
        named = ", ".join(dict.fromkeys(found[:_MAX_NAMED])) + (", ..." if len(found) > _MAX_NAMED else "")
        raise StoreConflictError(f"refusing to merge {src.parent} into {tgt.root}: conflicting results (same key, "
                                 f"other numbers; target vs source): {named}; nothing of {src.parent} was merged")


def _merge_one(tgt: ResultsStore, src: Path, tables: set[str]) -> dict[str, Any]:
    """Copy what the target lacks from one attached source (files first, then every row in one transaction)."""
    arts = [dict(r) for r in tgt._conn.read(
        f"SELECT * FROM src.artifacts a WHERE NOT EXISTS (SELECT 1 FROM main.artifacts b WHERE "
        f"{' AND '.join(f'b.{c.strip()} = a.{c.strip()}' for c in _ART_PK.split(','))})")] \
        if "artifacts" in tables else []
    copied, missing, rows = 0, 0, []
    for a in arts:
        rel = Path(a["path"])
        if not rel.is_absolute():
            origin = src.parent / rel
            if not origin.is_file():
                missing += 1
                continue
            write_atomically(tgt.root / rel, lambda tmp, o=origin: shutil.copyfile(o, tmp), "a merged artifact file")
            copied += 1
        rows.append(a)
    added: dict[str, int] = {}
    with tgt.transaction() as db:
        _refuse_conflicts(tgt, src, tables)  # NOTE: another source merged just before may conflict with this one
        for table, (cols, _) in _COPIED.items():
            if table in tables:
                before = db.total_changes
                db.execute(f"INSERT OR IGNORE INTO main.{table} ({cols}) SELECT {cols} FROM src.{table}")
                added[table] = db.total_changes - before
        before = db.total_changes
        db.executemany("INSERT OR IGNORE INTO main.artifacts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       [(a["model"], a["checkpoint_sha256"], a["kind"], a["dataset"], a["condition"], a["severity"],
                         a["image"], a["path"], a["meta"]) for a in rows])
        added["artifacts"] = db.total_changes - before
    return {"path": str(src.parent), "added": added, "files_copied": copied, "artifacts_without_file": missing}
