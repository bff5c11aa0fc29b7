"""The store on disk: recognising a SQLite file before opening it, the file system it lives on, and writing files
beside it atomically (attention maps, merged artifacts, a new store)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from attnprobe.store.errors import NotAStoreError, StoreDamagedError, from_os_error

__all__ = ["SqliteHeader", "filesystem_type", "is_network_filesystem", "publish_new_file", "read_header",
           "write_atomically"]

_MAGIC = b"SQLite format 3\x00"

#: File systems shared between machines, on which SQLite's write-ahead log (shared memory) cannot work and POSIX locks
#: are only as good as the server's (https://sqlite.org/wal.html, "WAL does not work over a network filesystem").
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "ceph", "glusterfs", "9p", "afs", "panfs",
    "orangefs", "pvfs2", "wekafs", "davfs", "gfs2", "ocfs2", "fuse.sshfs", "fuse.glusterfs", "fuse.ceph",
    "fuse.gcsfuse", "fuse.s3fs", "fuse.rclone", "fuse.juicefs", "fuse.lustre", "fuse.beegfs",
})


@dataclass(frozen=True)
class SqliteHeader:
    """What the first 100 bytes of a SQLite file say (https://sqlite.org/fileformat.html#the_database_header)."""

    page_size: int
    pages: int | None  # database size in pages, when the header's copy is valid
    application_id: int
    wal: bool


def read_header(path: Path) -> SqliteHeader:
    """Read and check a SQLite file's header without opening it with SQLite (which could write to it).

    Raises:
        NotAStoreError: the file is empty or not a SQLite database at all.
        StoreDamagedError: a SQLite header, but the file is shorter than the header says (truncated).
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(100)
    if size == 0:
        raise NotAStoreError(f"{path} is an empty file, not an attnprobe results store; delete it or pass another "
                             f"--out (nothing was written to it)")
    if not head.startswith(_MAGIC):
        raise NotAStoreError(f"{path} is not a SQLite database (garbled, or another kind of file), so not an "
                             f"attnprobe results store; move it away or use another results folder (--out); nothing "
                             f"was written to it")
    if len(head) < 100:
        raise StoreDamagedError(f"the results store {path} is truncated ({size} bytes); move it away and rerun, or "
                                f"pass another --out")
    page_size = int.from_bytes(head[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    change_counter, pages = int.from_bytes(head[24:28], "big"), int.from_bytes(head[28:32], "big")
    valid_for = int.from_bytes(head[92:96], "big")
    header = SqliteHeader(page_size=page_size, pages=pages if pages and valid_for == change_counter else None,
                          application_id=int.from_bytes(head[68:72], "big", signed=True), wal=head[18] == 2)
    if page_size < 512 or page_size & (page_size - 1) or size % page_size or (
            header.pages is not None and size < header.pages * page_size):
        raise StoreDamagedError(f"the results store {path} is truncated or garbled ({size} bytes, page size "
                                f"{page_size}, {header.pages} pages in its header); move it away (`sqlite3 "
                                f"{path.name} .recover` may rescue its rows) and rerun, or use another results "
                                f"folder (--out)")
    return header


def filesystem_type(path: Path) -> str | None:
    """The type of the file system holding `path` (Linux: from /proc/self/mountinfo), or None when unknown."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    target = str(path.resolve())
    best, best_len = None, -1
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or not tail:
            continue
        mount = fields[4].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) > best_len:
            best, best_len = tail[0], len(mount)
    return best


def is_network_filesystem(fstype: str | None) -> bool:
    return fstype is not None and (fstype in NETWORK_FILESYSTEMS or fstype.startswith("nfs"))


def write_atomically(path: Path, write: Callable[[Path], None], what: str = "a file beside the results store") -> None:
    """Write a file through a temporary name unique to this process, then rename it into place.

    Concurrent writers of the same file never see each other's half-written bytes, and a kill leaves either the old
    file or the new one. A full disk or a read-only folder becomes a one-line `StoreError`.

    Args:
        path: the final file.
        write: writes the content to the temporary path it is given (which keeps `path`'s suffix).
        what: names the file in error messages.
    """
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{secrets.token_hex(3)}.tmp{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        mapped = from_os_error(e, path, what)
        if mapped is not None:
            raise mapped from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def publish_new_file(tmp: Path, path: Path) -> bool:
    """Give `tmp` the name `path` unless `path` exists; True when `tmp` became `path`. `tmp` is gone afterwards.

    NOTE: a hard link is atomic and never replaces an existing file, so two processes creating the same new store at
    once end up sharing one. File systems without hard links fall back to a rename after an existence check.
    """
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:
        if path.exists():
            return False
        os.replace(tmp, path)
        return True
    finally:
        tmp.unlink(missing_ok=True)
