"""The results store's user-facing errors, and the mapping of SQLite / OS errors onto them.

Every error a user can fix (a full disk, a read-only folder, a store locked by another program, a damaged or foreign
file, conflicting results) becomes one `StoreError` line naming the store and the fix; the CLI prints it and exits
with status 2. SQLite's atomic commits keep the store valid through all of them, so the same command resumes once
the cause is fixed.
"""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path
from typing import Any

from attnprobe.errors import UserError

__all__ = [
    "NotAStoreError", "StoreConflictError", "StoreDamagedError", "StoreError", "StoreFullError", "StoreLockedError",
    "StoreReadOnlyError", "from_os_error", "from_sqlite_error", "sqlite_code",
]

_RESUME = "rerun the same command to resume: finished work is kept"


class StoreError(UserError):
    """A results store that cannot be used as asked."""


class StoreFullError(StoreError):
    """The disk (or quota) holding the store is full."""


class StoreReadOnlyError(StoreError):
    """The store or its folder cannot be written."""


class StoreLockedError(StoreError):
    """Another program kept the store locked for longer than the timeout."""


class StoreDamagedError(StoreError):
    """The store file is truncated or garbled."""


class NotAStoreError(StoreError):
    """The path holds something that is not an attnprobe results store; nothing was written to it."""


class StoreConflictError(StoreError):
    """The same key holds different numbers (two stores, or two processes, disagree).

    Attributes:
        stored: what the store holds, when one row is concerned (e.g. a chunk's `ChunkCounts`).
    """

    def __init__(self, message: str, stored: Any = None) -> None:
        super().__init__(message)
        self.stored = stored


# SQLite primary result codes (https://sqlite.org/rescode.html)
_PERM, _BUSY, _LOCKED, _READONLY, _IOERR, _CORRUPT, _FULL, _CANTOPEN, _NOTADB = 3, 5, 6, 8, 10, 11, 13, 14, 26
_BY_MESSAGE = {  # NOTE: Python < 3.11 has no `sqlite_errorcode`; these are SQLite's fixed messages
    "database or disk is full": _FULL, "attempt to write a readonly database": _READONLY,
    "database is locked": _BUSY, "database table is locked": _LOCKED, "database disk image is malformed": _CORRUPT,
    "file is not a database": _NOTADB, "unable to open database file": _CANTOPEN, "disk i/o error": _IOERR,
}


def sqlite_code(e: sqlite3.Error) -> int | None:
    """The primary SQLite result code of an exception (None when unknown)."""
    code = getattr(e, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF
    return _BY_MESSAGE.get(str(e).strip().lower())


def is_busy(e: sqlite3.Error) -> bool:
    return sqlite_code(e) in (_BUSY, _LOCKED)


def from_sqlite_error(e: sqlite3.Error, path: Path, timeout_s: float) -> StoreError | None:
    """The `StoreError` for a SQLite error the user can fix, or None (a bug or a query error: re-raise it)."""
    code = sqlite_code(e)
    if code == _FULL:
        return StoreFullError(f"the disk holding the results store {path} is full ({e}); free some space or pass "
                              f"another --out, then {_RESUME}")
    if code in (_READONLY, _PERM):
        return StoreReadOnlyError(f"cannot write the results store {path} ({e}); make it writable or pass another "
                                  f"--out, then {_RESUME}")
    if code in (_BUSY, _LOCKED):
        return StoreLockedError(f"the results store {path} was locked by another program for more than "
                                f"{timeout_s:g} s ({e}); close that program (e.g. a sqlite3 shell or a database "
                                f"browser with an open transaction), then {_RESUME}")
    if code in (_CORRUPT, _NOTADB):
        return StoreDamagedError(f"the results store {path} is damaged ({e}); move it away (`sqlite3 {path.name} "
                                 f".recover` may rescue its rows) and rerun, or use another results folder (--out)")
    if code == _CANTOPEN:
        return StoreReadOnlyError(f"cannot open the results store {path} ({e}): its folder may be read-only or "
                                  f"missing; make it writable or pass another --out")
    if code == _IOERR:
        return StoreFullError(f"could not write the results store {path} ({e}; usually a full disk or a failing "
                              f"drive); check the disk, then {_RESUME}")
    return None


def from_os_error(e: OSError, path: Path | str, what: str = "the results store") -> StoreError | None:
    """The `StoreError` for a file-system error the user can fix (full disk, read-only folder), or None."""
    where = e.filename or path
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return StoreFullError(f"no space left to write {what} ({where}: {e.strerror}); free some space or pass "
                              f"another --out, then {_RESUME}")
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return StoreReadOnlyError(f"cannot write {what} ({where}: {e.strerror}); make the folder writable or pass "
                                  f"another --out")
    return None
