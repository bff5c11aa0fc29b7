"""`ResultsStore`: the results store of one output folder, `<root>/results.sqlite`, shared by every command and by
any number of processes at once."""

from __future__ import annotations

import errno
import os
import secrets
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from attnprobe.errors import UserError
from attnprobe.store import schema
from attnprobe.store.artifacts import ArtifactRecords, ModelRegistry
from attnprobe.store.cells import CellRecords
from attnprobe.store.connection import StoreConnection, connect, journal_mode, lock_timeout
from attnprobe.store.diagnostics import DiagnosticRecords
from attnprobe.store.errors import NotAStoreError, StoreReadOnlyError, from_os_error, from_sqlite_error
from attnprobe.store.files import SqliteHeader, filesystem_type, is_network_filesystem, publish_new_file, read_header
from attnprobe.store.leases import Leases, new_owner_id

__all__ = ["STORE_FILENAME", "ResultsStore", "check_location"]

STORE_FILENAME = "results.sqlite"


def _refuse_file(root: Path) -> None:
    if root.exists() and not root.is_dir():
        hint = f" (pass its folder, {root.parent})" if root.name == STORE_FILENAME else ""
        raise NotAStoreError(f"{root} is a file, not a folder: a results store is a folder holding "
                             f"{STORE_FILENAME}{hint}; use a folder instead (nothing was written to the file)")


def check_location(root: str | Path) -> None:
    """Refuse an output folder that cannot hold a results store (a file; a foreign, damaged or newer store file),
    without creating or writing anything: for commands that write other files into the folder first."""
    root = Path(root).expanduser().resolve()
    _refuse_file(root)
    existing = next(p for p in (root, *root.parents) if p.exists())
    if existing.is_dir() and not os.access(existing, os.W_OK):
        raise StoreReadOnlyError(f"cannot write the results store in {root} ({existing} is not writable); make it "
                                 f"writable or pass another --out")
    if (root / STORE_FILENAME).exists():
        ResultsStore(root, readonly=True).close()


class ResultsStore(CellRecords, DiagnosticRecords, ModelRegistry, ArtifactRecords, Leases):
    """A results store rooted at a directory; the SQLite file is `<root>/results.sqlite`.

    Opening checks that the file is an attnprobe store before anything is written to it (a foreign SQLite database,
    a garbled or truncated file, a file given as the folder are refused with one line), creates a new store
    atomically, and upgrades an older store in place.

    Args:
        root: output directory (created if missing).
        readonly: open an existing store without creating or writing anything (for `attnprobe report`).
        timeout_s: how long to wait for a lock held by another program (default `ATTNPROBE_STORE_TIMEOUT` or 120 s).

    Raises:
        UserError: (`attnprobe.store.StoreError` and subclasses) the folder or file cannot be a store, cannot be
            written, or is locked beyond the timeout.
    """

    def __init__(self, root: str | Path, readonly: bool = False, *, timeout_s: float | None = None) -> None:
        self.root = Path(root).expanduser().resolve()
        self.path = self.root / STORE_FILENAME
        self.readonly = readonly
        self.owner = new_owner_id()
        self.journal_mode = ""
        timeout = lock_timeout() if timeout_s is None else float(timeout_s)
        self._check_folder()
        if not self.path.exists() and not readonly:
            self._create(timeout)
        if not self.path.is_file():
            raise NotAStoreError(f"{self.path} is not a file, so not an attnprobe results store; pass another folder")
        header = self._read_header()
        self._conn = StoreConnection(self.path, readonly, timeout)
        try:
            version = self._conn.guard(lambda: schema.recognise(self._conn.db, self.path, header.application_id))
            if not readonly:
                if version < schema.SCHEMA_VERSION or header.application_id != schema.APPLICATION_ID:
                    with self._conn.transaction() as db:
                        schema.upgrade(db)
                self.journal_mode = self._conn.guard(lambda: self._conn.set_journal(self._network()))
        except BaseException:
            self._conn.close()
            raise

    # -- opening ------------------------------------------------------------------------------------------------
    def _check_folder(self) -> None:
        """The folder must be a folder (created when writing); the file must exist when reading."""
        _refuse_file(self.root)
        if self.readonly:
            if not self.path.exists():
                raise UserError(f"no results store at {self.path}; run an evaluation with --out {self.root} first")
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            if not os.access(self.root, os.W_OK):  # NOTE: also true for root on a read-only mount (EROFS)
                raise PermissionError(errno.EACCES, "the folder is not writable", str(self.root))
        except OSError as e:
            mapped = from_os_error(e, self.root, "the results-store folder")
            if mapped is None and isinstance(e, (FileExistsError, NotADirectoryError)):
                mapped = NotAStoreError(f"cannot create the folder {self.root}: a part of its path is a file; pass "
                                        f"another --out")
            if mapped is not None:
                raise mapped from None
            raise

    def _read_header(self) -> SqliteHeader:
        try:
            return read_header(self.path)
        except PermissionError as e:
            raise UserError(f"cannot read the results store {self.path} ({e.strerror}); fix its permissions") from None

    def _create(self, timeout: float) -> None:
        """Create a new store: built under a temporary name, then linked into place (never a half-made store)."""
        tmp = self.root / f".{STORE_FILENAME}.{secrets.token_hex(4)}.new"
        try:
            db = connect(tmp, timeout)
            try:
                db.execute("BEGIN IMMEDIATE")
                schema.create_tables(db)
                db.execute("COMMIT")
                # NOTE: persistent in the file, so that no process has to switch it while others have it open
                db.execute(f"PRAGMA journal_mode={journal_mode(self._network())}")
            finally:
                db.close()
            publish_new_file(tmp, self.path)
        except (OSError, sqlite3.Error) as e:
            tmp.unlink(missing_ok=True)
            mapped = (from_os_error(e, self.root) if isinstance(e, OSError)
                      else from_sqlite_error(e, self.path, timeout))
            if mapped is not None:
                raise mapped from None
            raise

    def _network(self) -> bool:
        return is_network_filesystem(filesystem_type(self.root))

    # -- plumbing ---------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Release this object's leases and close the connection (committed work is never affected)."""
        try:
            if not self.readonly:
                self.release_leases()
        except UserError:  # NOTE: e.g. a full disk; the leases then simply expire
            pass
        finally:
            self._stop_heartbeat()
            self._conn.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write: either everything inside is stored or nothing is."""
        with self._conn.transaction() as db:
            yield db

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Run a query and return all rows (for tables, figures and reports)."""
        return self._conn.read(sql, params)
