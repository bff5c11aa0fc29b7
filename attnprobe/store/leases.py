"""Leases: which process computes which chunk right now, so that processes sharing one store split the work.

Before computing a chunk, a run *claims* it: in one `BEGIN IMMEDIATE` transaction it picks the first chunk of the
cell that is neither committed nor leased by a live process, and records a lease (owner, expiry). A background
thread renews the leases of a living process every quarter of the lease time; committing a chunk deletes its lease.
A process that dies (kill -9, a lost node) stops renewing, and its leases expire after `lease_seconds()` (60 s;
`ATTNPROBE_LEASE_SECONDS` overrides it); on the same machine a lease whose owner process is gone is taken over at
once. Leases only decide who computes what: the chunk's primary key and the idempotent commit guarantee that nothing
is counted twice even when two processes compute the same chunk (after a lease expired under a stopped process).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from attnprobe.store.connection import StoreConnection, connect
from attnprobe.store.keys import CELL_WHERE, CellKey

__all__ = ["ChunkStates", "Leases", "lease_seconds", "new_owner_id", "owner_alive"]

log = logging.getLogger(__name__)

LEASE_SECONDS = 60.0


def lease_seconds() -> float:
    value = os.environ.get("ATTNPROBE_LEASE_SECONDS")
    try:
        return max(float(value), 0.5) if value else LEASE_SECONDS
    except ValueError:
        return LEASE_SECONDS


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


_HOST, _PIDNS = socket.gethostname(), _pid_namespace()


def new_owner_id() -> str:
    """A lease owner: host, PID namespace, PID and a random token (a PID may be reused, the token is not)."""
    return f"{_HOST}|{_PIDNS}|{os.getpid()}|{secrets.token_hex(4)}"


def owner_alive(owner: str) -> bool | None:
    """False when `owner` is a process of this machine (same PID namespace) that no longer runs; True when it
    runs; None when it cannot be told (another machine): then only the lease's expiry decides."""
    parts = owner.split("|")
    if len(parts) != 4 or parts[0] != _HOST or parts[1] != _PIDNS or not parts[2].isdigit():
        return None
    pid = int(parts[2])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child that its parent has not reaped yet is a zombie: dead for our purpose
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


@dataclass
class ChunkStates:
    """The chunks of one cell as the store sees them now."""

    committed: set[int] = field(default_factory=set)
    leased: dict[int, str] = field(default_factory=dict)  # chunk -> owner, live leases only

    def open_chunks(self, n_chunks: int) -> list[int]:
        """Chunks neither committed nor leased: free to claim."""
        return [c for c in range(n_chunks) if c not in self.committed and c not in self.leased]


class _Heartbeat(threading.Thread):
    """Renews every lease of one owner until stopped (its own connection: SQLite connections stay in one thread)."""

    def __init__(self, path: Path, owner: str, lease_s: float, timeout_s: float) -> None:
        super().__init__(name="attnprobe-lease-heartbeat", daemon=True)
        self.path, self.owner, self.lease_s, self.timeout_s = path, owner, lease_s, timeout_s
        self.stop = threading.Event()

    def run(self) -> None:
        db = None
        while not self.stop.wait(self.lease_s / 4):
            try:
                db = db or connect(self.path, self.timeout_s)
                db.execute("UPDATE leases SET expires_at = ? WHERE owner = ?", (time.time() + self.lease_s,
                                                                               self.owner))
            except sqlite3.Error as e:  # NOTE: the main thread meets the same problem and reports it
                log.debug("lease renewal failed: %s", e)
        if db is not None:
            db.close()


class Leases:
    """Claiming chunks before computing them (mixed into `ResultsStore`)."""

    _conn: StoreConnection
    path: Path
    owner: str
    _heartbeat: _Heartbeat | None = None

    def _live(self, rows: list[sqlite3.Row], now: float) -> dict[int, str]:
        return {int(r["chunk"]): r["owner"] for r in rows
                if r["owner"] == self.owner or (r["expires_at"] > now and owner_alive(r["owner"]) is not False)}

    def chunk_states(self, key: CellKey) -> ChunkStates:
        """Committed chunks and live leases of a cell (a snapshot; `claim_chunk` decides atomically)."""
        # NOTE: leases first: a chunk committed in between shows up as committed, never as free
        leases = self._conn.read(f"SELECT chunk, owner, expires_at FROM leases WHERE {CELL_WHERE}", key.as_tuple())
        committed = {int(r[0]) for r in self._conn.read(f"SELECT chunk FROM chunks WHERE {CELL_WHERE}",
                                                        key.as_tuple())}
        return ChunkStates(committed, {c: o for c, o in self._live(leases, time.time()).items()
                                       if c not in committed})

    def claim_chunk(self, key: CellKey, n_chunks: int) -> tuple[int | None, ChunkStates]:
        """Lease the first chunk of `key` (of `n_chunks`) that is neither committed nor leased by a live process.

        Returns:
            The chunk (None when there is none) and the cell's state as seen inside the claiming transaction.
        """
        lease_s = self._lease_s()
        with self._conn.transaction() as db:
            now = time.time()
            committed = {int(r[0]) for r in db.execute(f"SELECT chunk FROM chunks WHERE {CELL_WHERE}",
                                                       key.as_tuple())}
            rows = db.execute(f"SELECT chunk, owner, expires_at FROM leases WHERE {CELL_WHERE}",
                              key.as_tuple()).fetchall()
            states = ChunkStates(committed, {c: o for c, o in self._live(rows, now).items() if c not in committed})
            free = states.open_chunks(n_chunks)
            if free:
                db.execute("INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           (*key.as_tuple(), free[0], self.owner, now + lease_s))
                states.leased[free[0]] = self.owner
        if free and self._heartbeat is None:
            self._heartbeat = _Heartbeat(self.path, self.owner, lease_s, self._conn.timeout_s)
            self._heartbeat.start()
        return (free[0] if free else None), states

    def release_leases(self) -> None:
        """Give up every lease of this store object (its chunks were not committed; others may take them now)."""
        if self._heartbeat is None:
            return
        with self._conn.transaction() as db:
            db.execute("DELETE FROM leases WHERE owner = ?", (self.owner,))

    def _stop_heartbeat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop.set()
            self._heartbeat.join(timeout=5)
            self._heartbeat = None

    def _lease_s(self) -> float:
        return lease_seconds()
