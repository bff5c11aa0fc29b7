"""Attention diagnostics commands: `stability`, `overfocus`, `heads`, `attention`.

    attnprobe stability --model fan_b --ckpt fan_hybrid_base.pth.tar \
        --model fan_b_tapadl --ckpt tapadl_fan_base.pth.tar --corruption gaussian_noise --severity 3 --data val/ --n 64
    attnprobe overfocus --model fan_b_tapadl --ckpt tapadl_fan_base.pth.tar          # the bundled sample photos
    attnprobe heads --model fan_b --ckpt fan_hybrid_base.pth.tar --json
    attnprobe attention --model fan_b_tapadl --ckpt tapadl_fan_base.pth.tar --image cat.jpg --out figs/

Several `--model` (each with its `--ckpt`, in the same order; `--ckpt -` for none) are compared on the same images and
the same corruption draws. Values go to the results store in `--out` (default `./attnprobe-results`); a rerun skips
images already stored, `--fresh` recomputes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from attnprobe.cli import _options as O
from attnprobe.cli._common import command, console, err_console, print_json, show_progress

_DATA = typer.Option(None, "--data", help="Folder of images (searched recursively); default: bundled sample photos.")
_IMAGES = typer.Option(None, "--image", "-i", help="Image file (repeatable); default: bundled sample photos.")
_N = typer.Option(None, "--n", min=1, help="Use N images (evenly spaced over the sorted folder).")
_SEVERITY = typer.Option(None, "--severity", "-s", help="1..5, a list like 1,3, or 'all' (default 3).")
_BATCH = typer.Option(16, "--batch-size", "-b", min=1, help="Images per forward pass.")
_FRESH = typer.Option(False, "--fresh", help="Drop this command's stored values for these models and recompute.")


def _fmt(x: Any, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def load_entries(models: list[str], ckpts: Optional[list[str]], device: Optional[str], quiet: bool = False,
                 num_classes: Optional[int] = None, precision: str = "fp32") -> list:
    """Load every `--model` with its `--ckpt` (same order) onto `device` as `ModelEntry`s run in `precision`."""
    from attnprobe.cli._loading import load_cli_model, pair_models
    from attnprobe.diagnostics import ModelEntry
    from attnprobe.distributed import resolve_device
    from attnprobe.engine.execution import Execution

    pairs = pair_models(models, ckpts)
    dev = resolve_device(device)
    ex = Execution(precision)
    ex.check(dev)

    def warn(message: str) -> None:
        if not quiet:
            err_console.print(f"[yellow]warning:[/] {message}", soft_wrap=True)

    entries = [ModelEntry.from_loaded(load_cli_model(name, ckpt, dev, warn=warn, num_classes=num_classes))
               for name, ckpt in pairs]
    for e in entries:
        e.precision = ex.precision
    return entries


def _images(data: Optional[Path], image: Optional[list[Path]], n: Optional[int]) -> Any:
    from attnprobe.data.selection import select_images

    return select_images(data=data, images=image, n=n)


def _severities(value: Optional[str]) -> list[int]:
    from attnprobe.data.corruptions import parse_severities

    return parse_severities(value)


def _corruption_source(corruption: Optional[str], backend: Optional[str], recipe: Optional[str]) -> Any:
    """The checked `--corruption-backend` / `--corruption-recipe` (before any model is loaded)."""
    from attnprobe.diagnostics import CorruptionSource
    from attnprobe.errors import UserError

    if corruption is None and (backend is not None or recipe is not None):
        raise UserError("--corruption-backend and --corruption-recipe only apply to corrupted images; add "
                        "--corruption NAME or remove them")

    return CorruptionSource(backend, recipe)


def _run(fn: Any, quiet: bool, json_out: bool, **kw: Any) -> Any:
    """Run a driver with a rich progress bar on stderr when interactive."""
    if not show_progress(quiet, json_out):
        return fn(**kw)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, transient=True) as bar:
        task = bar.add_task(fn.__name__, total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, total=total, advance=done)

        return fn(progress=progress, **kw)


def _store(out: Path) -> Any:
    from attnprobe.store import ResultsStore

    return ResultsStore(out)


def check_location(out: Path) -> None:
    from attnprobe.store import check_location as check

    check(out)


def _footer(res: Any) -> None:
    sources = sorted({r["corruption_id"] for r in res.results if r.get("corruption_id")})
    if sources:
        console.print(f"corrupted by {', '.join(sources)} (--corruption-backend / --corruption-recipe)", style="dim")
    for note in sorted({f"{r['model']}: {n}" for r in res.results for n in r.get("notes", [])}):
        console.print(f"note: {note}", style="dim", soft_wrap=True)
    if res.out:
        console.print(f"results store: {Path(res.out) / 'results.sqlite'}")
    if res.artifacts:
        console.print(f"saved {len(res.artifacts)} attention-map file(s) under {Path(res.out or '.') / 'maps'}")


def _by_condition(results: list[dict[str, Any]]) -> dict[tuple[str, int], list[dict[str, Any]]]:
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["condition"], r["severity"]), []).append(r)
    return groups


def _model_columns_table(title: str, group: list[dict[str, Any]], field: str, summary: str) -> Table:
    """Rows = layers, one column per model (mean of `field`), last row the mean over layers."""
    table = Table(title=title, title_justify="left")
    table.add_column("layer", justify="right")
    for r in group:
        table.add_column(r["model"], justify="right")
    by_layer = [{lay["layer"]: lay for lay in r["layers"]} for r in group]  # NOTE: a layer may lack a measure
    for i in sorted({layer for rows in by_layer for layer in rows}):
        cells = []
        for rows in by_layer:
            lay = rows.get(i)
            cells.append("" if lay is None else _fmt(lay[field]) + (f" ± {_fmt(lay['std_cosine'])}"
                                                                    if field == "mean_cosine" else ""))
        table.add_row(str(i), *cells)
    table.add_row("mean", *[_fmt(r[summary]) for r in group], style="bold")
    table.add_row("images", *[str(r["n_images"]) for r in group], style="dim")
    return table


# -- commands ---------------------------------------------------------------------------------------------------------
@command("stability")
def stability_cli(
    model: Optional[list[str]] = O.MODELS,
    ckpt: Optional[list[str]] = O.CKPTS,
    num_classes: Optional[int] = O.NUM_CLASSES,
    corruption: str = typer.Option("gaussian_noise", "--corruption", "-c", help="ImageNet-C corruption name."),
    severity: Optional[str] = _SEVERITY,
    data: Optional[Path] = _DATA,
    image: Optional[list[Path]] = _IMAGES,
    n: Optional[int] = _N,
    out: Path = O.OUT,
    keep_maps: int = typer.Option(2, "--keep-maps", min=0, help="Save full maps of the first K images for figures."),
    batch_size: int = _BATCH,
    device: Optional[str] = O.DEVICE,
    precision: str = O.PRECISION,
    corruption_backend: Optional[str] = O.CORRUPTION_BACKEND,
    corruption_recipe: Optional[str] = O.CORRUPTION_RECIPE,
    fresh: bool = _FRESH,
    json_out: bool = O.JSON,
    quiet: bool = O.QUIET,
) -> None:
    """Attention stability: cosine between clean and corrupted attention, per image, layer and head."""
    from attnprobe import diagnostics as D
    from attnprobe.data.corruptions import validate_corruption

    validate_corruption(corruption)
    source = _corruption_source(corruption, corruption_backend, corruption_recipe)
    sev = _severities(severity)
    imgs = _images(data, image, n)
    check_location(out)  # a bad --out fails before any model is loaded (nothing is created yet)
    entries = load_entries(model, ckpt, device, quiet=quiet, num_classes=num_classes, precision=precision)
    res = _run(D.stability, quiet, json_out, entries=entries, images=imgs, corruption=corruption, severities=sev,
               corruption_source=source, store=_store(out), batch_size=batch_size, keep_maps=keep_maps, fresh=fresh)
    if json_out:
        print_json(res.to_json())
        return
    for (cond, s), group in _by_condition(res.results).items():
        console.print(_model_columns_table(f"attention cosine, clean vs {cond} severity {s} (mean ± std over images "
                                           "and heads; 1 = unchanged)", group, "mean_cosine", "mean_cosine"))
    _footer(res)


@command("overfocus")
def overfocus_cli(
    model: Optional[list[str]] = O.MODELS,
    ckpt: Optional[list[str]] = O.CKPTS,
    num_classes: Optional[int] = O.NUM_CLASSES,
    corruption: Optional[str] = typer.Option(None, "--corruption", "-c", help="Also measure corrupted images."),
    severity: Optional[str] = _SEVERITY,
    data: Optional[Path] = _DATA,
    image: Optional[list[Path]] = _IMAGES,
    n: Optional[int] = _N,
    k: int = typer.Option(5, "--k", min=1, help="Columns counted by topk_column_mass."),
    tau: float = typer.Option(2.0, "--tau", help="Threshold of row_similarity, in units of 1/N (the ADL's tau)."),
    out: Path = O.OUT,
    batch_size: int = _BATCH,
    device: Optional[str] = O.DEVICE,
    precision: str = O.PRECISION,
    corruption_backend: Optional[str] = O.CORRUPTION_BACKEND,
    corruption_recipe: Optional[str] = O.CORRUPTION_RECIPE,
    fresh: bool = _FRESH,
    json_out: bool = O.JSON,
    quiet: bool = O.QUIET,
) -> None:
    """Token overfocusing per layer: row similarity (ADL), top-k column mass, row entropy, column Gini."""
    from attnprobe import diagnostics as D
    from attnprobe.data.corruptions import validate_corruption
    from attnprobe.metrics import OVERFOCUS_METRICS

    if corruption is not None:
        validate_corruption(corruption)
    source = _corruption_source(corruption, corruption_backend, corruption_recipe)
    sev = _severities(severity)
    imgs = _images(data, image, n)
    check_location(out)  # a bad --out fails before any model is loaded (nothing is created yet)
    entries = load_entries(model, ckpt, device, quiet=quiet, num_classes=num_classes, precision=precision)
    res = _run(D.overfocus, quiet, json_out, entries=entries, images=imgs, corruption=corruption, severities=sev,
               corruption_source=source, k=k, tau=tau, store=_store(out), batch_size=batch_size, fresh=fresh)
    if json_out:
        print_json(res.to_json())
        return
    heads = {"row_similarity": f"row sim (τ={tau:g})", "topk_column_mass": f"top-{k} col mass",
             "row_entropy": "row entropy", "column_gini": "col Gini"}
    for r in res.results:
        cond = "clean" if r["corruption"] is None else f"{r['condition']} severity {r['severity']}"
        table = Table(title=f"{r['model']}: overfocusing on {cond} images ({r['n_images']} images)",
                      title_justify="left")
        table.add_column("layer", justify="right")
        for m in OVERFOCUS_METRICS:
            table.add_column(heads[m], justify="right")
        for lay in r["layers"]:
            table.add_row(str(lay["layer"]), *[_fmt(lay[m]) for m in OVERFOCUS_METRICS])
        table.add_row("mean", *[_fmt(r[m]) for m in OVERFOCUS_METRICS], style="bold")
        console.print(table)
    console.print("higher row similarity / top-k mass / Gini and lower entropy = more overfocused", style="dim")
    _footer(res)


@command("heads")
def heads_cli(
    model: Optional[list[str]] = O.MODELS,
    ckpt: Optional[list[str]] = O.CKPTS,
    num_classes: Optional[int] = O.NUM_CLASSES,
    corruption: Optional[str] = typer.Option(None, "--corruption", "-c", help="Also measure corrupted images."),
    severity: Optional[str] = _SEVERITY,
    data: Optional[Path] = _DATA,
    image: Optional[list[Path]] = _IMAGES,
    n: Optional[int] = _N,
    out: Path = O.OUT,
    batch_size: int = _BATCH,
    device: Optional[str] = O.DEVICE,
    precision: str = O.PRECISION,
    corruption_backend: Optional[str] = O.CORRUPTION_BACKEND,
    corruption_recipe: Optional[str] = O.CORRUPTION_RECIPE,
    fresh: bool = _FRESH,
    json_out: bool = O.JSON,
    quiet: bool = O.QUIET,
) -> None:
    """Head similarity per layer: mean cosine between the maps of head pairs (lower = more diverse heads)."""
    from attnprobe import diagnostics as D
    from attnprobe.data.corruptions import validate_corruption

    if corruption is not None:
        validate_corruption(corruption)
    source = _corruption_source(corruption, corruption_backend, corruption_recipe)
    sev = _severities(severity)
    imgs = _images(data, image, n)
    check_location(out)  # a bad --out fails before any model is loaded (nothing is created yet)
    entries = load_entries(model, ckpt, device, quiet=quiet, num_classes=num_classes, precision=precision)
    res = _run(D.heads, quiet, json_out, entries=entries, images=imgs, corruption=corruption, severities=sev,
               corruption_source=source, store=_store(out), batch_size=batch_size, fresh=fresh)
    if json_out:
        print_json(res.to_json())
        return
    for (cond, s), group in _by_condition(res.results).items():
        title = "clean" if cond == "clean" else f"{cond} severity {s}"
        console.print(_model_columns_table(f"head similarity on {title} images (paper: FAN-B-Hybrid 0.63, "
                                           "+TAP&ADL 0.27)", group, "head_similarity", "head_similarity"))
    _footer(res)


@command("attention")
def attention_cli(
    model: Optional[list[str]] = O.MODELS,
    ckpt: Optional[list[str]] = O.CKPTS,
    num_classes: Optional[int] = O.NUM_CLASSES,
    image: Optional[list[Path]] = _IMAGES,
    data: Optional[Path] = _DATA,
    n: Optional[int] = _N,
    corruption: Optional[str] = typer.Option(None, "--corruption", "-c", help="Also save maps of corrupted images."),
    severity: Optional[str] = _SEVERITY,
    out: Path = O.OUT,
    batch_size: int = _BATCH,
    device: Optional[str] = O.DEVICE,
    precision: str = O.PRECISION,
    corruption_backend: Optional[str] = O.CORRUPTION_BACKEND,
    corruption_recipe: Optional[str] = O.CORRUPTION_RECIPE,
    fresh: bool = _FRESH,
    json_out: bool = O.JSON,
    quiet: bool = O.QUIET,
) -> None:
    """Save every layer's attention maps of the given images (.npz under OUT/maps/) for figures."""
    from attnprobe import diagnostics as D
    from attnprobe.data.corruptions import validate_corruption

    if corruption is not None:
        validate_corruption(corruption)
    source = _corruption_source(corruption, corruption_backend, corruption_recipe)
    sev = _severities(severity)
    imgs = _images(data, image, n)
    check_location(out)  # a bad --out fails before any model is loaded (nothing is created yet)
    entries = load_entries(model, ckpt, device, quiet=quiet, num_classes=num_classes, precision=precision)
    res = _run(D.attention_maps, quiet, json_out, entries=entries, images=imgs, corruption=corruption,
               corruption_source=source, severities=sev, store=_store(out), batch_size=batch_size, fresh=fresh)
    if json_out:
        print_json(res.to_json())
        return
    for r in res.results:
        console.print(f"[bold]{r['model']}[/]: {len(r['layers'])} token-attention layers")
        for a in r["artifacts"]:
            sev_txt = f" s{a['severity']}" if a["severity"] else ""
            console.print(f"  {a['image']} [{a['condition']}{sev_txt}] → {a['path']}", soft_wrap=True)
    if res.out:
        console.print(f"results store: {Path(res.out) / 'results.sqlite'}")
