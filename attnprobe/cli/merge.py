"""`attnprobe merge`: combine results stores made on different machines (library: `attnprobe.store.merge`).

    attnprobe merge results/node1 results/node2 --out results/all
    attnprobe report results/all
"""

from __future__ import annotations

from pathlib import Path

import typer

from attnprobe.cli import _options as O
from attnprobe.cli._common import command, console, print_json

_TABLES = ("chunks", "cells", "diagnostics", "artifacts", "models")


@command("merge", help="Merge results stores (one per machine or job) into one; conflicting results are refused.")
def merge_cli(
    stores: list[Path] = typer.Argument(..., help="Results-store folders to merge (each holds results.sqlite)."),
    out: Path = typer.Option(..., "--out", "-o", help="The store to merge them into (a folder; created if missing)."),
    json_out: bool = O.JSON,
) -> None:
    """Copy every result the --out store lacks; the same store merged twice changes nothing."""
    from attnprobe.store.merge import merge_stores

    report = merge_stores(stores, out)
    if json_out:
        print_json(report.as_dict())
        return
    for src in report.sources:
        added = src["added"]
        parts = [f"{added.get(t, 0)} {t}" for t in _TABLES if added.get(t)]
        what = ", ".join(parts) if parts else "nothing new"
        files = f"; {src['files_copied']} artifact file(s) copied" if src["files_copied"] else ""
        lost = (f"; {src['artifacts_without_file']} artifact row(s) skipped: their file is missing"
                if src["artifacts_without_file"] else "")
        console.print(f"{src['path']}: {what}{files}{lost}", soft_wrap=True)
    console.print(f"results store: {Path(report.target) / 'results.sqlite'}")
