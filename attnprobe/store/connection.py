"""One SQLite connection to a store file: how it is opened, the user-facing lock timeout, transactions, and the
mapping of SQLite errors onto one-line `StoreError`s.

Journal mode: on a local file system the store uses SQLite's write-ahead log (WAL): readers (`attnprobe report`)
never block a run's commits, and a commit costs no fsync. WAL needs memory shared by every process that opens the
file, which a network file system cannot provide between machines, so on NFS, Lustre, GPFS, CIFS, ... the store uses
the classic rollback journal, which relies only on the file system's POSIX locks. `ATTNPROBE_STORE_JOURNAL=wal` or
`delete` overrides the choice.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from attnprobe.store.errors import from_sqlite_error, is_busy

__all__ = ["DEFAULT_TIMEOUT_S", "StoreConnection", "connect", "journal_mode", "lock_timeout", "store_uri"]

log = logging.getLogger(__name__)

#: How long a command waits for a store another program keeps locked, before it gives up with a one-line error.
#: attnprobe's own transactions last milliseconds; `ATTNPROBE_STORE_TIMEOUT` (seconds) overrides it.
DEFAULT_TIMEOUT_S = 120.0


def lock_timeout() -> float:
    value = os.environ.get("ATTNPROBE_STORE_TIMEOUT")
    try:
        return float(value) if value else DEFAULT_TIMEOUT_S
    except ValueError:
        return DEFAULT_TIMEOUT_S


def journal_mode(network: bool) -> str:
    """The journal mode a store on a local (`network=False`) or network file system uses."""
    wanted = os.environ.get("ATTNPROBE_STORE_JOURNAL", "").lower()
    return wanted if wanted in ("wal", "delete") else ("delete" if network else "wal")


def connect(path: Path, timeout_s: float, readonly: bool = False, immutable: bool = False) -> sqlite3.Connection:
    """A raw connection in autocommit mode (every write goes through an explicit BEGIN IMMEDIATE)."""
    # NOTE: a URI connection also lets `ATTACH` open other stores read-only (`attnprobe merge`)
    db = sqlite3.connect(store_uri(path, readonly, immutable), uri=True, isolation_level=None, timeout=timeout_s)
    db.row_factory = sqlite3.Row
    return db


def store_uri(path: Path, readonly: bool = False, immutable: bool = False) -> str:
    """The SQLite URI of a store file (read-only, and immutable for read-only media without a pending log)."""
    flags = ("?mode=ro" + ("&immutable=1" if immutable else "")) if readonly else ""
    return f"file:{quote(str(path))}{flags}"


class StoreConnection:
    """The store's SQLite connection, with errors a user can fix turned into `StoreError`s.

    Args:
        path: the store file (it must exist and have been recognised, see `attnprobe.store.schema`).
        readonly: open without any write (for reports); a read-only medium is handled too.
        timeout_s: how long to wait for a lock held by another program.
    """

    def __init__(self, path: Path, readonly: bool, timeout_s: float) -> None:
        self.path, self.readonly, self.timeout_s = path, readonly, timeout_s
        self.db = self.guard(lambda: self._open())

    def _open(self) -> sqlite3.Connection:
        db = connect(self.path, self.timeout_s, readonly=self.readonly)
        if not self.readonly:
            return db
        try:
            db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            return db
        except sqlite3.OperationalError:
            # NOTE: a WAL store on read-only media cannot get its shared-memory file; without a pending log it can be
            # read as an immutable file
            wal = self.path.with_name(self.path.name + "-wal")
            if wal.exists() and wal.stat().st_size > 0:
                raise
            db.close()
            return connect(self.path, self.timeout_s, readonly=True, immutable=True)

    # -- errors ---------------------------------------------------------------------------------------------------
    def guard(self, fn: Any) -> Any:
        """Call `fn()`, retrying on a busy store until the timeout, and map fixable errors to `StoreError`."""
        deadline = time.monotonic() + self.timeout_s
        delay = 0.01
        while True:
            try:
                return fn()
            except sqlite3.Error as e:
                if is_busy(e) and time.monotonic() < deadline:
                    # NOTE: SQLite's own busy handler does not cover every case (e.g. WAL recovery); retry here too
                    time.sleep(delay)
                    delay = min(delay * 2, 0.5)
                    continue
                mapped = from_sqlite_error(e, self.path, self.timeout_s)
                if mapped is not None:
                    raise mapped from None
                raise

    def set_journal(self, network: bool) -> str:
        """Pick the journal mode for this file system (see the module docstring); returns the mode in effect."""
        wanted = journal_mode(network)
        try:
            mode = str(self.db.execute(f"PRAGMA journal_mode={wanted}").fetchone()[0]).lower()
        except sqlite3.OperationalError as e:
            if not is_busy(e):
                raise
            mode = str(self.db.execute("PRAGMA journal_mode").fetchone()[0]).lower()  # others have it open: keep it
        # NOTE: WAL + NORMAL survives any process crash (only a power cut may lose the last commits); the rollback
        # journal needs FULL for the same guarantee
        self.db.execute(f"PRAGMA synchronous={'NORMAL' if mode == 'wal' else 'FULL'}")
        return mode

    # -- statements -------------------------------------------------------------------------------------------------
    def read(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """All rows of one statement (outside a transaction: its own consistent snapshot)."""
        return self.guard(lambda: self.db.execute(sql, params).fetchall())

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write: everything inside is stored, or nothing (also on a full disk or a kill)."""
        self.guard(lambda: self.db.execute("BEGIN IMMEDIATE"))
        try:
            yield self.db
            self.guard(lambda: self.db.execute("COMMIT"))
        except BaseException as exc:
            if self.db.in_transaction:  # NOTE: SQLite may have rolled back already (e.g. on SQLITE_FULL)
                try:
                    self.db.execute("ROLLBACK")
                except sqlite3.Error:
                    log.debug("rollback failed after %r", exc)
            if isinstance(exc, sqlite3.Error):
                mapped = from_sqlite_error(exc, self.path, self.timeout_s)
                if mapped is not None:
                    raise mapped from None
            raise

    def close(self) -> None:
        try:
            self.db.close()
        except sqlite3.Error:  # pragma: no cover - closing never loses committed data
            log.debug("closing %s failed", self.path)
