"""The results-store format: its tables, how a file is recognised as a store, and upgrades in place.

A store says what it is twice: SQLite's `PRAGMA application_id` (4 bytes in the file header, readable before any
SQL runs) and the `meta` table (`schema_version`). Stores written before the application id existed (schema 1) are
recognised by their tables and `meta` row, and upgraded in place the first time a command writes to them.

Versions: 1 = the original tables; 2 = the application id and the `leases` table (concurrent runs). The tables of
version 1 are unchanged: an upgrade only adds.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from attnprobe.store.errors import NotAStoreError, StoreError

__all__ = ["APPLICATION_ID", "SCHEMA_VERSION", "TABLES", "create_tables", "recognise", "upgrade"]

#: `PRAGMA application_id` of an attnprobe store: the bytes "atpb".
APPLICATION_ID = int.from_bytes(b"atpb", "big")
SCHEMA_VERSION = 2

_KEY = ("model TEXT NOT NULL, checkpoint_sha256 TEXT NOT NULL, task TEXT NOT NULL, dataset TEXT NOT NULL, "
        "preprocessing TEXT NOT NULL, condition TEXT NOT NULL, severity INTEGER NOT NULL")
_CELL_PK = "model, checkpoint_sha256, task, dataset, preprocessing, condition, severity"

#: Table name -> its CREATE statement (version 2). Never change a table of an existing version: add new ones.
TABLES = {
    "meta": "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "models": """CREATE TABLE IF NOT EXISTS models (
        model TEXT NOT NULL, checkpoint_sha256 TEXT NOT NULL, checkpoint_path TEXT, card TEXT,
        added_at REAL NOT NULL,
        PRIMARY KEY (model, checkpoint_sha256))""",
    "chunks": f"""CREATE TABLE IF NOT EXISTS chunks (
        {_KEY}, chunk INTEGER NOT NULL,
        n INTEGER NOT NULL, correct INTEGER NOT NULL, skipped INTEGER NOT NULL, extra TEXT,
        finished_at REAL NOT NULL,
        PRIMARY KEY ({_CELL_PK}, chunk))""",
    "cells": f"""CREATE TABLE IF NOT EXISTS cells (
        {_KEY}, n_chunks INTEGER NOT NULL, info TEXT, finished_at REAL NOT NULL,
        PRIMARY KEY ({_CELL_PK}))""",
    "diagnostics": """CREATE TABLE IF NOT EXISTS diagnostics (
        model TEXT NOT NULL, checkpoint_sha256 TEXT NOT NULL, metric TEXT NOT NULL, dataset TEXT NOT NULL,
        condition TEXT NOT NULL, severity INTEGER NOT NULL, image TEXT NOT NULL, layer INTEGER NOT NULL,
        head INTEGER NOT NULL, value REAL NOT NULL,
        PRIMARY KEY (model, checkpoint_sha256, metric, dataset, condition, severity, image, layer, head))""",
    "artifacts": """CREATE TABLE IF NOT EXISTS artifacts (
        model TEXT NOT NULL, checkpoint_sha256 TEXT NOT NULL, kind TEXT NOT NULL, dataset TEXT NOT NULL,
        condition TEXT NOT NULL, severity INTEGER NOT NULL, image TEXT NOT NULL, path TEXT NOT NULL, meta TEXT,
        PRIMARY KEY (model, checkpoint_sha256, kind, dataset, condition, severity, image))""",
    "sample_bits": f"""CREATE TABLE IF NOT EXISTS sample_bits (
        {_KEY}, chunk INTEGER NOT NULL,
        n INTEGER NOT NULL, bits BLOB NOT NULL, skipped_bits BLOB,
        PRIMARY KEY ({_CELL_PK}, chunk))""",
    # version 2: who computes which chunk now (see attnprobe.store.leases)
    "leases": f"""CREATE TABLE IF NOT EXISTS leases (
        {_KEY}, chunk INTEGER NOT NULL, owner TEXT NOT NULL, expires_at REAL NOT NULL,
        PRIMARY KEY ({_CELL_PK}, chunk))""",
}
_V1_TABLES = {"meta", "models", "chunks", "cells", "diagnostics", "artifacts"}


def create_tables(db: sqlite3.Connection) -> None:
    """Create every missing table and stamp the file as a store of the current version (inside a transaction)."""
    for ddl in TABLES.values():
        db.execute(ddl)
    db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
    db.execute("INSERT OR IGNORE INTO meta VALUES ('application', 'attnprobe results store')")


def recognise(db: sqlite3.Connection, path: Path, application_id: int) -> int:
    """The schema version of the store file behind `db`, after checking it is an attnprobe store (reads only).

    Raises:
        NotAStoreError: a SQLite database of another program (its tables are named).
        StoreError: a store written by a newer attnprobe.
    """
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    try:
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall()) if "meta" in tables else {}
    except sqlite3.OperationalError:  # another program's `meta` table, with other columns
        meta = {}
    try:
        version = int(meta.get("schema_version", 0))
    except ValueError:
        version = 0
    ours = application_id == APPLICATION_ID or (application_id == 0 and _V1_TABLES <= tables and version >= 1)
    if not ours:
        found = ", ".join(sorted(tables)[:6]) + (", ..." if len(tables) > 6 else "") if tables else "no tables"
        raise NotAStoreError(f"{path} is a SQLite database of another program ({found}), not an attnprobe results "
                             f"store; use another results folder (--out); nothing was written to it")
    if version > SCHEMA_VERSION:
        raise StoreError(f"the results store {path} was written by a newer attnprobe (store format {version}; this "
                         f"version reads up to {SCHEMA_VERSION}); upgrade attnprobe")
    return version


def upgrade(db: sqlite3.Connection) -> None:
    """Bring a recognised store to the current version in place (inside a write transaction; adds only)."""
    create_tables(db)
