"""Progress events of long runs: library code never prints, it calls a `ProgressHook`; the CLI draws the bars."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from attnprobe.engine.cells import CellResult
from attnprobe.store import CellKey

__all__ = ["NullProgress", "ProgressHook", "RichProgress"]


class ProgressHook:
    """Receives progress events; the base class ignores them (library code never prints)."""

    def start(self, n_cells: int, n_samples: int) -> None:
        """Before the first batch: cells in the run and samples still to compute (over all ranks)."""

    def cell_start(self, key: CellKey, n_samples: int, n_done: int) -> None:
        """A cell begins: its size and how many of its samples are already stored."""

    def advance(self, n_images: int) -> None:
        """A batch finished (`n_images` over all ranks, approximately)."""

    def cell_end(self, result: CellResult) -> None:
        """A cell is finished (or was already in the store)."""

    def warn(self, message: str) -> None:
        """A recoverable problem (e.g. an unreadable image that was skipped)."""


NullProgress = ProgressHook


class RichProgress(ProgressHook, AbstractContextManager):
    """A `rich` progress display on stderr: one bar over cells, one over the current cell's images, with images/s.

    Use it only where the caller decided to draw (see `attnprobe.cli._common.show_progress`):

        with RichProgress() as progress:
            run_cells(model, cells, store, progress=progress)
    """

    def __init__(self, console: Any = None, warn: Callable[[str], None] | None = None) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self._console = console or Console(stderr=True)
        self._warn = warn
        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TaskProgressColumn(), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                             TimeRemainingColumn(), console=self._console, transient=False)
        self._cells_task: Any = None
        self._img_task: Any = None
        self._t0 = 0.0
        self._seen = 0

    def __enter__(self) -> RichProgress:
        self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()

    def start(self, n_cells: int, n_samples: int) -> None:
        self._cells_task = self._bar.add_task("cells", total=n_cells, rate="")
        self._img_task = self._bar.add_task("images", total=max(n_samples, 1), rate="")
        self._t0, self._seen = time.perf_counter(), 0

    def cell_start(self, key: CellKey, n_samples: int, n_done: int) -> None:
        sev = f" s{key.severity}" if key.severity else ""
        self._bar.update(self._cells_task, description=f"{key.condition}{sev}")

    def advance(self, n_images: int) -> None:
        self._seen += n_images
        rate = self._seen / max(time.perf_counter() - self._t0, 1e-9)
        self._bar.update(self._img_task, advance=n_images, rate=f"{rate:,.0f} img/s")

    def cell_end(self, result: CellResult) -> None:
        self._bar.update(self._cells_task, advance=1)

    def warn(self, message: str) -> None:
        if self._warn is not None:
            self._warn(message)
        else:
            self._console.print(f"[yellow]warning:[/] {message}")

