"""Helpers shared by every CLI command: the Typer app, one-line user errors, JSON output, consoles."""

from __future__ import annotations

import errno
import functools
import math
import re
import sys
from pathlib import Path
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from attnprobe.errors import UserError

app = typer.Typer(
    name="attnprobe",
    help="Measure and benchmark the robustness of vision-transformer attention (TAP/ADL, FAN, RVT, timm).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

F = TypeVar("F", bound=Callable[..., Any])

#: File-system errors that are the machine's state, not a bug: one line and exit code 2 like a `UserError`.
_RESOURCE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})

#: Where every command's results store lives unless --out says otherwise (one store shared by all commands).
DEFAULT_OUT = Path("attnprobe-results")

#: Human-readable output goes to stdout; progress and warnings go to stderr so `--json` stdout stays clean.
# NOTE: a pipe or a CI log has no terminal width; 140 columns keeps tables readable there instead of folding at 80.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 140)
err_console = Console(stderr=True, highlight=False)


def user_errors(fn: F) -> F:
    """Turn a `UserError` raised inside a command into one line on stderr and a non-zero exit (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            err_console.print(f"[bold red]error:[/] {one_line(e)}", soft_wrap=True)
            raise typer.Exit(code=e.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("interrupted; finished work is stored, rerun the same command to resume")
            raise typer.Exit(code=130) from None
        except OSError as e:  # NOTE: a full or read-only disk met outside the results store (figures, caches, ...)
            if e.errno not in _RESOURCE_ERRNOS:
                raise
            where = f" ({e.filename})" if e.filename else ""
            err_console.print(f"[bold red]error:[/] {e.strerror}{where}; free some space or use a writable folder, "
                              f"then rerun the same command (finished work is kept)", soft_wrap=True)
            raise typer.Exit(code=2) from None

    return wrapper  # type: ignore[return-value]


def one_line(e: UserError) -> str:
    """The user's message of `e`, also when a DataLoader worker raised it.

    NOTE: torch re-raises a worker's exception as a `UserError` whose message is "Caught UserError in DataLoader
    worker process 0.", then the worker's traceback, then "attnprobe.errors.UserError: <our message>".
    """
    text = str(e)
    if "Original Traceback" in text:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        match = re.match(r"^[\w.]*Error: (.*)$", lines[-1]) if lines else None
        text = match.group(1) if match else (lines[-1] if lines else text)
    return text


def command(*args: Any, **kwargs: Any) -> Callable[[F], F]:
    """`@command("name")`: register a CLI command on the shared app with user-error handling."""

    def decorate(fn: F) -> F:
        app.command(*args, **kwargs)(user_errors(fn))
        return fn

    return decorate


def warn(message: str) -> None:
    """One yellow warning line on stderr (never on stdout, which `--json` keeps clean)."""
    err_console.print(f"[yellow]warning:[/] {message}", soft_wrap=True)


def pct(x: float | None, digits: int = 2) -> str:
    """A fraction as a percentage string; "-" for a missing value or NaN."""
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}"


def print_json(payload: Any) -> None:
    """Write `payload` as strict JSON to stdout and nothing else (NaN and infinities become null)."""
    from attnprobe.jsonsafe import dumps

    sys.stdout.write(dumps(payload, indent=2) + "\n")
    sys.stdout.flush()


def show_progress(quiet: bool, json_out: bool = False) -> bool:
    """Progress bars only on an interactive terminal, never with --quiet or --json."""
    return not quiet and not json_out and sys.stderr.isatty()
