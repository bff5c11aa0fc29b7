"""Output folders (`--out` of report, plot, demo and train): refused with one line before anything is written when
they cannot be folders of ours."""

from __future__ import annotations

import os
from pathlib import Path

from attnprobe.errors import UserError

__all__ = ["check_output_folder"]


def check_output_folder(path: str | Path, option: str = "--out") -> Path:
    """`path` as a folder to write into (created later by the caller), or a one-line `UserError`.

    Refused: an existing file, a path below a file, a folder (or the nearest existing parent of a new one) that this
    user cannot write to.
    """
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise UserError(f"{option} {p} is a file, not a folder; choose a folder (it is created if missing)")
    parent = p
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{option} {p}: {parent} is a file, so no folder can be made below it; choose another "
                        f"{option}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{option} {p}: {parent} is not writable for you; choose a folder you can write to")
    return p
