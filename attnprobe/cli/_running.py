"""How the benchmark commands run: each model in turn (one in memory at a time) against the shared results store,
under torchrun if started so, with the progress display of `_loading.progress_hook`."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer

from attnprobe.cli._common import console
from attnprobe.cli._loading import load_on_rank, progress_hook

#: `--batch-size` of the image benchmarks (PGD and ImageNet-P define their own).
BATCH = typer.Option(128, "--batch-size", "-b", min=1, help="Images per batch on each process.")

#: What `evaluate` receives: the loaded model, the store (rank 0, else None), the distributed context, the hook.
Evaluate = Callable[[Any, Any, Any, Any], Any]


def run_models(pairs: list[tuple[str, Optional[Path]]], device: Optional[str], out: Path, quiet: bool,
               json_out: bool, evaluate: Evaluate,
               check: Callable[[Any], None] | None = None) -> list[tuple[dict[str, Any], Any]] | None:
    """Load each model in turn and call `evaluate(loaded, store, ctx, progress)`.

    `check(loaded)` runs right after loading, before the model is recorded in the store (raise `UserError` to refuse
    a model, e.g. a classifier given to `seg`, with nothing stored).

    Returns:
        `[(identity, result), ...]` on rank 0, None on the other ranks.
    """
    from attnprobe import distributed as D
    from attnprobe.store import ResultsStore

    ctx = D.init_from_env(device=device)
    store = ResultsStore(out) if ctx.is_main else None
    done = []
    try:
        for name, ckpt in pairs:
            loaded = load_on_rank(name, ckpt, ctx.device, quiet)
            if check is not None:
                check(loaded)
            if store is not None:
                store.register_model(loaded.name, loaded.checkpoint_sha256, loaded.checkpoint_path, loaded.card)
            with progress_hook(quiet, json_out) as progress:
                result = evaluate(loaded, store, ctx, progress)
            done.append((identity(loaded), result))
            del loaded
    finally:
        if store is not None:
            store.close()
        D.cleanup()
    return done if ctx.is_main else None


def identity(loaded: Any) -> dict[str, Any]:
    """What identifies a model's results: name, checkpoint hash and path, preprocessing."""
    return {"model": loaded.name, "checkpoint_sha256": loaded.checkpoint_sha256,
            "checkpoint": loaded.checkpoint_path, "preprocessing": loaded.preprocessing.key()}


def store_path(out: Path) -> str:
    return str(Path(out).expanduser().resolve())


def print_store_line(out: Path) -> None:
    console.print(f"results store: {Path(store_path(out)) / 'results.sqlite'}")


def print_limit_note(limit: int | None, what: str = "full-set numbers", subset: str = "a subset") -> None:
    """Say that `--limit` results are a subset, whenever they are."""
    if limit is not None:
        console.print(f"note: --limit {limit}: {subset}, not comparable with {what}")


def num(x: float | None, digits: int = 3) -> str:
    """A plain number for tables; "-" for a missing value or NaN."""
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def execution_kw(precision: str, decode: str | None = None, compile: bool = False,
                 channels_last: bool | None = None) -> dict[str, Any]:
    """The `run_cells` keywords of `--precision/--decode/--compile/--channels-last`, checked before any model is
    loaded (unknown names are a one-line error)."""
    from attnprobe.engine.device_input import DECODE_CHOICES
    from attnprobe.engine.execution import parse_precision
    from attnprobe.errors import UserError

    kw: dict[str, Any] = {"precision": parse_precision(precision), "compile": compile, "channels_last": channels_last}
    if decode is not None:
        if decode.strip().lower() not in DECODE_CHOICES:
            raise UserError(f"unknown --decode {decode!r}; use one of {', '.join(DECODE_CHOICES)}")
        kw["decode"] = decode.strip().lower()
    return kw
