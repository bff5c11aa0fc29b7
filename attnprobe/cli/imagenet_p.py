"""`attnprobe mfr`: ImageNet-P flip probability, flip rate, mFR, top-5 distance (driver:
`attnprobe.benchmarks.imagenet_p`).

    attnprobe mfr --model fan_b_tapadl --ckpt tapadl_fan_base.pth.tar --data /data/imagenet-p --out results/
    attnprobe mfr --model fan_b --model fan_b_tapadl --ckpt a.pth --ckpt b.pth --clean /data/val --on-the-fly
    torchrun --nproc_per_node=8 -m attnprobe mfr --model fan_b_tapadl --ckpt ... --data /data/imagenet-p

Several `--model` options evaluate several models on the same videos in one call (paired comparison); a rerun
resumes where the last run stopped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from attnprobe.cli import _options as O
from attnprobe.cli._common import command, console, err_console, pct, print_json
from attnprobe.cli._loading import pair_models
from attnprobe.cli._running import execution_kw, num, print_limit_note, print_store_line, run_models, store_path
from attnprobe.errors import UserError


def _print_mfr(rows: list[dict[str, Any]], source: str) -> None:
    from rich.table import Table

    for r in rows:
        console.print(f"[bold]{r['model']}[/]  checkpoint {r['checkpoint_sha256'][:12]}  ({source} ImageNet-P, "
                      f"difficulty {r['difficulty']})")
        table = Table(title="flip probability (FP, %), flip rate vs AlexNet (FR, %), top-5 distance (T5D)")
        for col in ("perturbation", "FP", "FR", "T5D", "videos", "frame acc"):
            table.add_column(col, justify="left" if col == "perturbation" else "right")
        for p in r["perturbations"]:
            table.add_row(p["perturbation"], pct(p["flip_probability"]), pct(p["flip_rate"], 1),
                          num(p["top5_distance"]), str(p["videos"]) + (f" (+{p['skipped']} skipped)"
                                                                        if p["skipped"] else ""),
                          pct(p["frame_accuracy"], 1))
        console.print(table)
        if r["mfr"] is not None:
            console.print(f"[bold]mFR {pct(r['mfr'], 1)}[/] (AlexNet = 100, 10 test perturbations, lower is better)"
                          f"   mean T5D {num(r['mean_top5_distance'])} (unnormalised)")
    if len(rows) > 1 and all(r["mfr"] is not None for r in rows):
        base = rows[0]
        console.print("paired comparison (same videos):")
        for r in rows[1:]:
            console.print(f"  {r['model']}: mFR {pct(r['mfr'], 1)} ({100 * (r['mfr'] - base['mfr']):+.1f} vs "
                          f"{base['model']})")
    for note in rows[0]["notes"] if rows else []:
        console.print(f"note: {note}")


@command("mfr", help="ImageNet-P: flip probability, flip rate and mFR, top-5 distance (resumable).")
def mfr_cli(
    model: Optional[list[str]] = O.MODELS,
    ckpt: Optional[list[Path]] = O.CKPTS,
    data: Optional[Path] = typer.Option(None, "--data", help="Released ImageNet-P root "
                                        "<root>/<perturbation>[_2|_3]/<wnid>/*.mp4."),
    clean: Optional[Path] = typer.Option(None, "--clean", help="Clean validation folder <val>/<wnid>/* to "
                                         "regenerate sequences from (with --on-the-fly)."),
    on_the_fly: bool = typer.Option(False, "--on-the-fly", help="Regenerate the perturbation sequences from --clean "
                                    "images (labelled 'regenerated', not the released videos)."),
    perturbation: Optional[list[str]] = typer.Option(None, "--perturbation", "-p", help="Perturbation (repeat); "
                                                     "default: the 10 test perturbations of the mFR."),
    difficulty: int = typer.Option(1, "--difficulty", "-d", min=1, max=3, help="1, 2 or 3: noise strength for "
                                   "the noises (folders _2/_3), frame step for the others."),
    limit: Optional[int] = O.LIMIT,
    batch_size: int = typer.Option(64, "--batch-size", "-b", min=1, help="Most frames per forward pass."),
    workers: Optional[int] = O.WORKERS,
    out: Path = O.OUT,
    device: Optional[str] = O.DEVICE,
    precision: str = O.PRECISION,
    compile_model: bool = O.COMPILE,
    channels_last: Optional[bool] = O.CHANNELS_LAST,
    fresh: bool = O.FRESH,
    strict: bool = O.STRICT,
    json_out: bool = O.JSON,
    quiet: bool = O.QUIET,
) -> None:
    """Evaluate each model on each ImageNet-P perturbation; finished perturbations are skipped on a rerun."""
    from attnprobe.data.imagenet_p_generate import APPROXIMATIONS
    from attnprobe.benchmarks.imagenet_p import evaluate_imagenet_p, imagenet_p_sources, summarize_imagenet_p

    from attnprobe.distributed import resolve_device

    pairs = pair_models(model, ckpt, outputs=1000, what="ImageNet-P")
    resolve_device(device)  # a bad --device fails before the notes below are printed
    ex_kw = execution_kw(precision, None, compile_model, channels_last)  # videos: decoded in the workers
    if clean is not None and not on_the_fly:
        raise UserError("--clean needs --on-the-fly (regenerate sequences from clean images); or pass --data with "
                        "the released ImageNet-P videos")
    if on_the_fly and clean is None:
        raise UserError("--on-the-fly needs --clean VAL_DIR (the clean images to perturb)")
    sources = imagenet_p_sources(perturbation, difficulty, data=data, clean=clean if on_the_fly else None,
                                 limit=limit)
    for src in sources:  # list every folder before any model is loaded, so a bad path fails fast
        _ = src.items
    regenerated = bool(on_the_fly)
    if regenerated and not json_out and not quiet:
        err_console.print("[yellow]note:[/] regenerated ImageNet-P sequences (not the released videos); "
                          "numbers are comparable between models, not identical to published ones")
        for src in sources:
            if src.perturbation in APPROXIMATIONS:
                err_console.print(f"  {src.perturbation}: {APPROXIMATIONS[src.perturbation]}")

    def run(loaded: Any, store: Any, ctx: Any, progress: Any) -> Any:
        return evaluate_imagenet_p(loaded, sources, store, batch_size=batch_size, workers=workers,
                                   device=ctx.device, fresh=fresh, strict=strict, progress=progress, **ex_kw)

    done = run_models(pairs, device, out, quiet, json_out, run)
    if done is None:
        return
    rows = [{**ident, "difficulty": difficulty, "source": "regenerated" if regenerated else "released",
             "limit": limit, **summarize_imagenet_p(res)} for ident, res in done]
    if json_out:
        print_json({"results": rows, "out": store_path(out)})
        return
    _print_mfr(rows, "regenerated" if regenerated else "released")
    print_limit_note(limit, "full-set numbers", subset="a subset of the videos")
    print_store_line(out)
