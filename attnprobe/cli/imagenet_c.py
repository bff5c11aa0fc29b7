"""`attnprobe mce`: the ImageNet-C benchmark (driver: `attnprobe.benchmarks.imagenet_c`).

    attnprobe mce --model fan_b_tapadl --ckpt tapadl_fan_base.pth.tar --data /data/imagenet-c --out results/
    attnprobe mce --model resnet50 --clean /data/imagenet/val --on-the-fly --corruption fog --limit 2000
    attnprobe mce --model fan_b_tapadl --clean bundled --on-the-fly -c gaussian_noise      # demo, no data needed
    attnprobe mce --model resnet50 --clean /data/imagenet/val --on-the-fly --corruption-backend reference
    torchrun --nproc_per_node=8 -m attnprobe mce --model fan_b_tapadl --data /data/imagenet-c --out results/
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from attnprobe.cli import _options as O
from attnprobe.cli._common import command, console, pct, print_json
from attnprobe.cli._loading import pair_models
from attnprobe.cli._running import BATCH, execution_kw, run_models
from attnprobe.errors import UserError

BUNDLED = "bundled"  # same as attnprobe.data.imagenet_c.BUNDLED, repeated here to keep `--help` free of torch


def _print_mce(d: dict[str, Any]) -> None:
    from rich.table import Table

    from attnprobe.robustness import DISPLAY_NAMES

    console.print(f"[bold]{d['model']}[/]  checkpoint {d['checkpoint_sha256'][:12]}  ({d['source']} ImageNet-C)")
    by: dict[str, dict[int, dict[str, Any]]] = {}
    for c in d["cells"]:
        by.setdefault(c["corruption"], {})[c["severity"]] = c
    sevs = sorted({c["severity"] for c in d["cells"]})
    table = Table(title="top-1 error (%) per corruption and severity; CE normalised by AlexNet (%)")
    table.add_column("corruption")
    for s in sevs:
        table.add_column(f"s{s}", justify="right")
    table.add_column("mean", justify="right")
    table.add_column("CE", justify="right")
    table.add_column("n", justify="right")
    for name, cells in by.items():
        errs = [cells[s]["top1_error"] for s in sevs if s in cells and cells[s]["top1_error"] is not None]
        mean = sum(errs) / len(errs) if errs else None
        n = sum(cells[s]["n"] for s in cells)
        table.add_row(DISPLAY_NAMES.get(name, name), *[pct(cells[s]["top1_error"]) if s in cells else "-"
                                                       for s in sevs],
                      pct(mean), pct(d["ce"].get(name)), str(n))
    console.print(table)
    skipped = sum(c["skipped"] for c in d["cells"])
    if skipped:
        console.print(f"[yellow]{skipped} unreadable image(s) skipped and left out of the counts[/]")
    if d["complete"]:
        console.print(f"[bold]mCE {pct(d['mce'], 1)}[/] (AlexNet-normalised, 15 corruptions x 5 severities, "
                      f"lower is better)")
        if d.get("relative_mce") is not None:
            console.print(f"relative mCE {pct(d['relative_mce'], 1)}  (clean error {pct(d['clean_error'])})")
        console.print(f"mean corrupted accuracy {pct(d['mean_corrupted_accuracy'])}% "
                      f"(an accuracy, not the mCE; FAN's IN-C column)")
        if d.get("retention") is not None:
            console.print(f"retention {pct(d['retention'], 1)}% (corrupted / clean accuracy, FAN's metric)")
    else:
        sevs_txt = ", ".join(str(s) for s in sevs)
        console.print(f"[yellow]partial table ({len(by)} corruption(s), severities {sevs_txt}): no mCE, which needs "
                      f"all 15 benchmark corruptions x 5 severities[/]")
        if d.get("clean_error") is not None:
            console.print(f"clean error {pct(d['clean_error'])}%")
    for note in d.get("notes", []):
        console.print(f"note: {note}")
    if d.get("out"):
        console.print(f"results store: {Path(d['out']) / 'results.sqlite'}")


@command("mce", help="ImageNet-C benchmark: top-1 error per corruption and severity, CE and mCE (resumable).")
def mce_cli(
    model: Optional[list[str]] = O.MODELS,
    ckpt: Optional[list[Path]] = O.CKPTS,
    data: Optional[Path] = typer.Option(None, "--data", help="Released ImageNet-C tree "
                                        "<root>/<corruption>/<severity>/<wnid>/*.JPEG (224-px files)."),
    clean: Optional[Path] = typer.Option(None, "--clean", help="Clean validation folder <val>/<wnid>/*: corrupted "
                                         "with --on-the-fly, and scored clean for the relative mCE / retention; "
                                         "'bundled': the 3 bundled photos (a demo, not a benchmark)."),
    on_the_fly: bool = typer.Option(False, "--on-the-fly", help="Corrupt --clean images with the ImageNet-C recipe."),
    corruption: Optional[list[str]] = typer.Option(None, "--corruption", "-c",
                                                   help="Corruption name (repeat); default: the 15 of the mCE."),
    severity: Optional[list[int]] = typer.Option(None, "--severity", "-s", help="Severity 1-5 (repeat); default all."),
    limit: Optional[int] = O.LIMIT,
    batch_size: int = BATCH,
    workers: Optional[int] = O.WORKERS,
    out: Path = O.OUT,
    device: Optional[str] = O.DEVICE,
    precision: str = O.PRECISION,
    decode: str = O.DECODE,
    compile_model: bool = O.COMPILE,
    channels_last: Optional[bool] = O.CHANNELS_LAST,
    no_jpeg: bool = typer.Option(False, "--no-jpeg", help="On the fly: skip the JPEG quality-85 round trip."),
    corruption_backend: Optional[str] = O.CORRUPTION_BACKEND,
    corruption_recipe: Optional[str] = O.CORRUPTION_RECIPE,
    fresh: bool = O.FRESH,
    strict: bool = O.STRICT,
    json_out: bool = O.JSON,
    quiet: bool = O.QUIET,
    chunk_size: int = typer.Option(1000, "--chunk-size", min=1, hidden=True,
                                   help="Images per committed chunk; a resumed run must use the same value."),
) -> None:
    """Evaluate each model on every ImageNet-C cell with the model loaded once; finished cells are skipped."""
    from attnprobe.benchmarks.imagenet_c import check_imagenet_c_inputs, evaluate_imagenet_c
    from attnprobe.data.corruptions import choose_backend

    if not on_the_fly and (corruption_backend is not None or corruption_recipe is not None):
        raise UserError("--corruption-backend and --corruption-recipe only apply to --on-the-fly (the released files "
                        "are already corrupted); remove them or add --clean VAL_DIR --on-the-fly")
    backend, recipe = choose_backend(corruption_backend, corruption_recipe)
    pairs = pair_models(model, ckpt, outputs=1000, what="ImageNet-C")
    notes: list[str] = []
    if clean is not None and str(clean) == BUNDLED and not clean.exists():
        from attnprobe.data.imagenet_c import bundled_clean_folder
        from attnprobe.store import check_location

        check_location(out)  # the photos go into --out: refuse a bad one first

        clean = bundled_clean_folder(out)
        notes.append("bundled photos: 3 images, a demo of the pipeline, not an ImageNet-C measurement")
    # every input check (names, folders, file lists) runs before any model is loaded
    scanned = check_imagenet_c_inputs(data, clean, on_the_fly, corruption, severity)
    ex_kw = execution_kw(precision, decode, compile_model, channels_last)

    def run(loaded: Any, store: Any, ctx: Any, progress: Any) -> Any:
        return evaluate_imagenet_c(loaded, store, data=data, clean=clean, on_the_fly=on_the_fly,
                                   corruptions=corruption, severities=severity, limit=limit,
                                   jpeg_quality=None if no_jpeg else 85, corruption_backend=backend,
                                   corruption_recipe=recipe, scanned=scanned, batch_size=batch_size,
                                   workers=workers, device=ctx.device, fresh=fresh, strict=strict,
                                   chunk_size=chunk_size, progress=progress, **ex_kw)

    done = run_models(pairs, device, out, quiet, json_out, run)
    if done is None:
        return
    payloads = []
    for _, report in done:
        payload = report.as_dict()
        payload["notes"] = notes + payload["notes"]
        payloads.append(payload)
    if json_out:
        print_json({"results": payloads})
        return
    for payload in payloads:
        _print_mce(payload)
