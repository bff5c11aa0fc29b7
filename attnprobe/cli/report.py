"""Report commands: `report` (every figure and table + index.html) and `plot-heads`, `plot-stability`, `plot-maps`.

    attnprobe report results/ --out reports/run1 --baseline fan_b --format png,pdf
    attnprobe report demo-results/ --out reports/demo --ce-reference demo_vit_tiny     # CE normalised by a model
    attnprobe plot-stability results/ --corruption gaussian_noise --severity 3
    attnprobe plot-heads results/ --model fan_b --ckpt fan.pth.tar --model fan_b_tapadl --ckpt tapadl.pth.tar
    attnprobe plot-maps results/ --image ILSVRC2012_val_00000001

Everything is drawn from the results store. `report` never loads a model; the plot commands compute what the store
lacks (attention maps, stability values) when given `--model` (and `--ckpt`), with the diagnostics drivers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from attnprobe.cli._common import command, console, err_console, print_json, show_progress
from attnprobe.errors import UserError

_RESULTS = typer.Argument(..., help="Folder holding the results store (results.sqlite), or a folder above it, such "
                                     "as `attnprobe demo --out` wrote.")
_FORMAT = typer.Option("png,pdf", "--format", "-f", help="Figure formats, comma-separated: png, pdf, svg.")
_JSON = typer.Option(False, "--json", help="Print what was written as JSON on stdout.")
_MODELS = typer.Option(None, "--model", "-m", help="Runs to draw (repeat); with --ckpt, also computes what the "
                                                   "store lacks for them.")
_CKPTS = typer.Option(None, "--ckpt", help="Checkpoint of each --model, in order ('-' for random weights), used only "
                                           "when values must be computed.")
_DATA = typer.Option(None, "--data", help="Image folder for computing missing values (default: bundled photos).")
_N = typer.Option(None, "--n", min=1, help="Images to compute missing values on.")
_DEVICE = typer.Option(None, "--device", help="cpu, cuda or cuda:N, for computing missing values.")
_CORRUPTION = typer.Option(None, "--corruption", "-c", help="Corruption to draw (default: the most common stored, "
                                                          "Gaussian noise preferred).")
_SEVERITY = typer.Option(None, "--severity", "-s", min=1, max=5, help="Severity 1-5 of --corruption.")
_LAYER = typer.Option(-1, "--layer", help="Layer of the maps (0-based; negative counts from the end).")
_BOOT = typer.Option(1000, "--n-bootstrap", min=10, help="Bootstrap resamples for the 95% intervals.")
_SEED = typer.Option(0, "--seed", help="Bootstrap seed.")
_QUIET = typer.Option(False, "--quiet", "-q", help="No progress output.")


def find_store(folder: Path) -> Path:
    """The folder holding the results store: `folder` itself, or the one folder below it that holds one (the demo
    writes its store to `<out>/results`, so `attnprobe report <out>` works on any folder a command wrote)."""
    from attnprobe.store import STORE_FILENAME

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"no results store at {folder} (no such folder); pass the --out folder of an attnprobe "
                        f"command (it holds {STORE_FILENAME})")
    if (folder / STORE_FILENAME).is_file():
        return folder
    found = sorted({p.parent for pattern in (f"*/{STORE_FILENAME}", f"*/*/{STORE_FILENAME}")
                    for p in folder.glob(pattern)})
    if len(found) > 1:
        raise UserError(f"{folder} holds several results stores ({', '.join(str(p) for p in found[:4])}); pass the "
                        "one to use")
    return found[0] if found else folder


def _formats(value: str) -> list[str]:
    return [f for f in value.split(",") if f.strip()]


def _print_entries(entries: list[Any], json_out: bool, extra: dict[str, Any] | None = None) -> None:
    if json_out:
        print_json({**(extra or {}), "figures": [{"name": e.name, "title": e.title, "caption": e.caption,
                                                  "files": [str(p) for p in e.files]} for e in entries]})
        return
    for e in entries:
        console.print(f"[bold]{e.title}[/]")
        for p in e.files:
            console.print(f"  {p}", soft_wrap=True)


@command("report")
def report_cli(
    results_dir: Path = _RESULTS,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Report folder (default: RESULTS_DIR/report)."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="Run the changes are computed against "
                                                                     "(default: the first model without TAP/ADL)."),
    ce_reference: str = typer.Option("alexnet", "--ce-reference", help="Normalise CEs by 'alexnet' (standard) or "
                                                                       "by a model of the store (say so in papers)."),
    fmt: str = _FORMAT,
    model: Optional[list[str]] = typer.Option(None, "--model", "-m", help="Only these runs (repeat)."),
    corruption: Optional[str] = _CORRUPTION,
    severity: Optional[int] = _SEVERITY,
    layer: int = _LAYER,
    source: Optional[str] = typer.Option(None, "--source", help="Data source Table 2 shows where the store holds "
                                         "several: released, or regenerated (= on-the-fly); default: the full set "
                                         "first, then released data. Every source is listed apart either way."),
    n_bootstrap: int = _BOOT,
    seed: int = _SEED,
    json_out: bool = _JSON,
) -> None:
    """Every figure and table the results store supports, plus index.html (no model is loaded)."""
    from attnprobe.report import build_report

    out_dir = out if out is not None else Path(results_dir) / "report"
    res = build_report(find_store(results_dir), out_dir, baseline=baseline, ce_reference=ce_reference,
                       formats=_formats(fmt), n_resamples=n_bootstrap, seed=seed, condition=corruption,
                       severity=severity, layer=layer, models=model, source=source)
    if json_out:
        print_json(res.as_dict())
        return
    console.print(f"[bold]{len(res.tables)}[/] tables, [bold]{len(res.figures)}[/] figures → {res.out_dir}")
    for t in res.tables:
        console.print(f"  table   {t.name}: {', '.join(p.name for p in t.files)}", soft_wrap=True)
    for f in res.figures:
        console.print(f"  figure  {f.name}: {', '.join(p.name for p in f.files)}", soft_wrap=True)
    for n in res.notes:
        err_console.print(f"[yellow]note:[/] {n}", soft_wrap=True)
    console.print(f"open {res.index}")


def _compute_missing(plot: str, results_dir: Path, models: list[str], ckpts: Optional[list[str]],
                     data: Optional[Path], n: Optional[int], device: Optional[str], corruption: Optional[str],
                     severity: Optional[int], quiet: bool, json_out: bool) -> list[str]:
    """Run the diagnostics the plot needs for the models the store lacks; returns the models computed."""
    from attnprobe.report.build import missing_for_plot

    missing = missing_for_plot(results_dir, plot, models or None, corruption, severity)
    if not missing:
        return []
    corr_asked = corruption or "gaussian_noise"
    what = {"heads": "attention maps", "maps": "attention maps of clean and corrupted images",
            "stability": "attention-stability values"}[plot] + (f" for {corruption}" if corruption else "")
    first = {"heads": "attnprobe heads --keep-maps 2", "maps": f"attnprobe attention --corruption {corr_asked}",
             "stability": f"attnprobe stability --corruption {corr_asked}"}[plot]
    if not models:
        raise UserError(f"the store at {results_dir} has no {what}; pass --model NAME --ckpt FILE to compute them, "
                        f"or run `{first} --model NAME --ckpt FILE --out {results_dir}` first")
    from attnprobe import diagnostics as D
    from attnprobe.cli.diagnostics import load_entries
    from attnprobe.data.corruptions import validate_corruption
    from attnprobe.data.selection import select_images
    from attnprobe.store import ResultsStore

    from attnprobe.cli._loading import pair_models

    ck = [c for m, c in pair_models(models, ckpts) if m in missing] if ckpts else None
    entries = load_entries(missing, ck, device, quiet=quiet or json_out)
    corr = corruption or "gaussian_noise"
    validate_corruption(corr)
    sev = [severity or 3]
    images = select_images(data=data, n=n if n else (2 if plot != "stability" else None))
    if show_progress(quiet, json_out):
        err_console.print(f"computing {what} for {', '.join(missing)} on {len(images)} images …")
    with ResultsStore(results_dir) as store:
        if plot == "stability":
            D.stability(entries, images, corr, sev, store=store, keep_maps=2)
        elif plot == "heads":
            D.heads(entries, images, store=store, keep_maps=min(len(images), 2))
        else:
            D.attention_maps(entries, images, corr, sev, store=store)
    return missing


def _plot(plot: str, results_dir: Path, out: Optional[Path], model: Optional[list[str]], ckpt: Optional[list[str]],
          data: Optional[Path], n: Optional[int], device: Optional[str], corruption: Optional[str],
          severity: Optional[int], image: Optional[str], layer: int, fmt: str, n_bootstrap: int, seed: int,
          quiet: bool, json_out: bool) -> None:
    from attnprobe.report.build import plot_figures

    out_dir = out if out is not None else Path(results_dir) / "figures"
    # NOTE: a folder that does not exist yet is where the missing values will be computed into.
    results_dir = find_store(results_dir) if Path(results_dir).expanduser().is_dir() else results_dir
    computed = _compute_missing(plot, results_dir, list(model or []), ckpt, data, n, device, corruption, severity,
                                quiet, json_out)
    entries = plot_figures(results_dir, out_dir, plot, models=model or None, image=image, condition=corruption,
                           severity=severity, layer=layer, formats=_formats(fmt), n_resamples=n_bootstrap, seed=seed)
    _print_entries(entries, json_out, {"computed": computed})


@command("plot-heads")
def plot_heads_cli(
    results_dir: Path = _RESULTS,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Figure folder (default: RESULTS_DIR/figures)."),
    model: Optional[list[str]] = _MODELS,
    ckpt: Optional[list[str]] = _CKPTS,
    image: Optional[str] = typer.Option(None, "--image", "-i", help="Image id of the stored maps to draw."),
    layer: int = _LAYER,
    data: Optional[Path] = _DATA,
    n: Optional[int] = _N,
    device: Optional[str] = _DEVICE,
    fmt: str = _FORMAT,
    n_bootstrap: int = _BOOT,
    seed: int = _SEED,
    json_out: bool = _JSON,
    quiet: bool = _QUIET,
) -> None:
    """Fig. 4: every attention head of the last layer per model, head similarity in the title."""
    _plot("heads", results_dir, out, model, ckpt, data, n, device, None, None, image, layer, fmt, n_bootstrap, seed,
          quiet, json_out)


@command("plot-stability")
def plot_stability_cli(
    results_dir: Path = _RESULTS,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Figure folder (default: RESULTS_DIR/figures)."),
    model: Optional[list[str]] = _MODELS,
    ckpt: Optional[list[str]] = _CKPTS,
    corruption: Optional[str] = _CORRUPTION,
    severity: Optional[int] = _SEVERITY,
    data: Optional[Path] = _DATA,
    n: Optional[int] = _N,
    device: Optional[str] = _DEVICE,
    fmt: str = _FORMAT,
    n_bootstrap: int = _BOOT,
    seed: int = _SEED,
    json_out: bool = _JSON,
    quiet: bool = _QUIET,
) -> None:
    """Fig. 1 (right) / Fig. 5: clean-vs-corrupted attention cosine per model, and its per-layer curve."""
    _plot("stability", results_dir, out, model, ckpt, data, n, device, corruption, severity, None, -1, fmt,
          n_bootstrap, seed, quiet, json_out)


@command("plot-maps")
def plot_maps_cli(
    results_dir: Path = _RESULTS,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Figure folder (default: RESULTS_DIR/figures)."),
    model: Optional[list[str]] = _MODELS,
    ckpt: Optional[list[str]] = _CKPTS,
    image: Optional[str] = typer.Option(None, "--image", "-i", help="Image id of the stored maps to draw first."),
    corruption: Optional[str] = _CORRUPTION,
    severity: Optional[int] = _SEVERITY,
    layer: int = _LAYER,
    data: Optional[Path] = _DATA,
    n: Optional[int] = _N,
    device: Optional[str] = _DEVICE,
    fmt: str = _FORMAT,
    json_out: bool = _JSON,
    quiet: bool = _QUIET,
) -> None:
    """Fig. 1 (left), Fig. 3 and supplementary Fig. I: attention maps, clean and corrupted, per model and layer."""
    _plot("maps", results_dir, out, model, ckpt, data, n, device, corruption, severity, image, layer, fmt, 1000, 0,
          quiet, json_out)
