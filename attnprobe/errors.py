"""User-facing errors.

`UserError` is raised for anything the user can fix (a missing file, a wrong checkpoint, an unknown name).
The CLI prints its message as one line and exits non-zero, without a traceback. Messages should say what is
wrong *and* how to fix it.
"""

from __future__ import annotations


class UserError(Exception):
    """An error caused by the user's input; the message names the problem and the fix."""

    exit_code: int = 2


class CheckpointMismatchError(UserError):
    """A checkpoint does not fit the architecture it is loaded into."""
