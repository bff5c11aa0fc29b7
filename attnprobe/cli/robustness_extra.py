"""`attnprobe mfr` (ImageNet-P), `attnprobe ood` (ImageNet-A/R) and `attnprobe pgd` (PGD-5 robust accuracy).

    attnprobe mfr --model fan_b_tapadl --ckpt tapadl_fan_base.pth.tar --data /data/imagenet-p --out results/
    attnprobe mfr --model fan_b --model fan_b_tapadl --ckpt a.pth --ckpt b.pth --clean /data/val --on-the-fly
    attnprobe ood --model fan_b_tapadl --ckpt tapadl_fan_base.pth.tar --set a --data /data/imagenet-a
    attnprobe pgd --model fan_b_tapadl --ckpt tapadl_fan_base.pth.tar --data /data/imagenet/val --limit 5000
    torchrun --nproc_per_node=8 -m attnprobe mfr --model fan_b_tapadl --ckpt ... --data /data/imagenet-p

Several `--model` options evaluate several models on the same data in one call (paired comparison); give either
no `--ckpt` or one `--ckpt` per `--model`, in the same order. Results go to the shared results store and a rerun
resumes where the last run stopped.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from attnprobe.cli import _options as O
from attnprobe.cli._common import command, console, err_console, pct, print_json
from attnprobe.cli._loading import load_on_rank, pair_models, progress_hook
from attnprobe.errors import UserError


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------
def _num(x: float | None, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _run_models(pairs: list[tuple[str, Optional[Path]]], device: Optional[str], out: Path, quiet: bool,
                json_out: bool, evaluate: Callable[[Any, Any, Any, Any], Any]) -> list[tuple[Any, Any]] | None:
    """Load each model in turn (one at a time in memory) and call `evaluate(loaded, store, ctx, progress)`.

    Returns:
        `[(loaded, result), ...]` on rank 0, None on the other ranks.
    """
    from attnprobe import distributed as D
    from attnprobe.store import ResultsStore

    ctx = D.init_from_env(device=device)
    store = ResultsStore(out) if ctx.is_main else None
    done = []
    try:
        for name, ckpt in pairs:
            loaded = load_on_rank(name, ckpt, ctx.device, quiet)
            if store is not None:
                store.register_model(loaded.name, loaded.checkpoint_sha256, loaded.checkpoint_path, loaded.card)
            with progress_hook(quiet, json_out) as progress:
                result = evaluate(loaded, store, ctx, progress)
            done.append((_ident(loaded), result))
            del loaded
    finally:
        if store is not None:
            store.close()
        D.cleanup()
    return done if ctx.is_main else None


def _ident(loaded: Any) -> dict[str, Any]:
    return {"model": loaded.name, "checkpoint_sha256": loaded.checkpoint_sha256,
            "checkpoint": loaded.checkpoint_path, "preprocessing": loaded.preprocessing.key()}


def _store_line(out: Path) -> None:
    console.print(f"results store: {Path(out).expanduser().resolve() / 'results.sqlite'}")


# ---------------------------------------------------------------------------------------------------------------
# mfr
# ---------------------------------------------------------------------------------------------------------------
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
                          _num(p["top5_distance"]), str(p["videos"]) + (f" (+{p['skipped']} skipped)"
                                                                        if p["skipped"] else ""),
                          pct(p["frame_accuracy"], 1))
        console.print(table)
        if r["mfr"] is not None:
            console.print(f"[bold]mFR {pct(r['mfr'], 1)}[/] (AlexNet = 100, 10 test perturbations, lower is better)"
                          f"   mean T5D {_num(r['mean_top5_distance'])} (unnormalised)")
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
    fresh: bool = O.FRESH,
    strict: bool = O.STRICT,
    json_out: bool = O.JSON,
    quiet: bool = O.QUIET,
) -> None:
    """Evaluate each model on each ImageNet-P perturbation; finished perturbations are skipped on a rerun."""
    from attnprobe.data.imagenet_p_generate import APPROXIMATIONS
    from attnprobe.evaluate_extra import evaluate_imagenet_p, imagenet_p_sources, summarize_imagenet_p

    pairs = pair_models(model, ckpt, outputs=1000, what="ImageNet-P")
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
                                   device=ctx.device, fresh=fresh, strict=strict, progress=progress)

    done = _run_models(pairs, device, out, quiet, json_out, run)
    if done is None:
        return
    rows = [{**ident, "difficulty": difficulty, "source": "regenerated" if regenerated else "released",
             "limit": limit, **summarize_imagenet_p(res)} for ident, res in done]
    if json_out:
        print_json({"results": rows, "out": str(Path(out).expanduser().resolve())})
        return
    _print_mfr(rows, "regenerated" if regenerated else "released")
    if limit is not None:
        console.print(f"note: --limit {limit}: a subset of the videos, not comparable with full-set numbers")
    _store_line(out)


# ---------------------------------------------------------------------------------------------------------------
# ood
# ---------------------------------------------------------------------------------------------------------------
@command("ood", help="ImageNet-A or ImageNet-R top-1 accuracy on their 200 classes (resumable).")
def ood_cli(
    model: Optional[list[str]] = O.MODELS,
    ckpt: Optional[list[Path]] = O.CKPTS,
    set_name: str = typer.Option(..., "--set", "-s", help="a (ImageNet-A) or r (ImageNet-R)."),
    data: Path = typer.Option(..., "--data", help="The set's folder <dir>/<wnid>/* (200 wnids)."),
    limit: Optional[int] = O.LIMIT,
    batch_size: int = typer.Option(128, "--batch-size", "-b", min=1, help="Images per batch on each process."),
    workers: Optional[int] = O.WORKERS,
    out: Path = O.OUT,
    device: Optional[str] = O.DEVICE,
    fresh: bool = O.FRESH,
    strict: bool = O.STRICT,
    json_out: bool = O.JSON,
    quiet: bool = O.QUIET,
) -> None:
    """Top-1 accuracy with the logits restricted to the set's 200 classes."""
    from attnprobe.evaluate_extra import evaluate_subset, subset_samples

    pairs = pair_models(model, ckpt, outputs=1000, what=f"ImageNet-{set_name.upper()}")
    subset_samples(data, set_name)  # reject a wrong folder or set before loading any model
    name = set_name.lower()

    def run(loaded: Any, store: Any, ctx: Any, progress: Any) -> Any:
        return evaluate_subset(loaded, name, data, store, batch_size=batch_size, limit=limit, workers=workers,
                               device=ctx.device, fresh=fresh, strict=strict, progress=progress)

    done = _run_models(pairs, device, out, quiet, json_out, run)
    if done is None:
        return
    rows = [{**ident, **res.as_dict(), "limit": limit} for ident, res in done]
    if json_out:
        print_json({"results": rows, "out": str(Path(out).expanduser().resolve())})
        return
    label = f"ImageNet-{name.upper()}"
    for r in rows:
        skipped = f", skipped {r['skipped']}" if r["skipped"] else ""
        delta = (f"  ({100 * (r['accuracy'] - rows[0]['accuracy']):+.2f} vs {rows[0]['model']})"
                 if r is not rows[0] else "")
        console.print(f"[bold]{r['model']}[/]  {label} top-1 accuracy {pct(r['accuracy'])}% "
                      f"(n={r['n']}{skipped}; 200-class logits){delta}")
    if limit is not None:
        console.print(f"note: --limit {limit}: a subset, not comparable with full-set numbers")
    _store_line(out)


# ---------------------------------------------------------------------------------------------------------------
# pgd
# ---------------------------------------------------------------------------------------------------------------
@command("pgd", help="Robust top-1 accuracy under L-inf PGD (default PGD-5: eps 1/255, step 0.5/255, 5 steps).")
def pgd_cli(
    model: Optional[list[str]] = O.MODELS,
    ckpt: Optional[list[Path]] = O.CKPTS,
    data: Path = typer.Option(..., "--data", help="Validation folder <val>/<wnid>/* (labels: canonical wnid order)."),
    limit: Optional[int] = O.LIMIT,
    eps: float = typer.Option(1.0, "--eps", min=0.0, help="L-inf budget in units of 1/255 (pixel space)."),
    step: float = typer.Option(0.5, "--step", min=0.0, help="Step size in units of 1/255."),
    steps: int = typer.Option(5, "--steps", min=0, help="Number of PGD steps."),
    seed: int = typer.Option(0, "--seed", help="Seed of the per-image random starts."),
    batch_size: int = typer.Option(32, "--batch-size", "-b", min=1, help="Images per attack batch per process."),
    workers: Optional[int] = O.WORKERS,
    out: Path = O.OUT,
    device: Optional[str] = O.DEVICE,
    fresh: bool = O.FRESH,
    strict: bool = O.STRICT,
    json_out: bool = O.JSON,
    quiet: bool = O.QUIET,
) -> None:
    """Clean and robust accuracy of each model; the attack normalises inside, so eps is in pixel units."""
    from attnprobe.data.folders import scan_class_folders
    from attnprobe.evaluate_extra import evaluate_pgd

    pairs = pair_models(model, ckpt, outputs=1000, what="PGD robust accuracy")
    scan_class_folders(data, "validation folder")  # reject a bad folder before loading any model

    def run(loaded: Any, store: Any, ctx: Any, progress: Any) -> Any:
        return evaluate_pgd(loaded, data, store, limit=limit, batch_size=batch_size, eps=eps / 255,
                            step=step / 255, steps=steps, seed=seed, workers=workers, device=ctx.device,
                            fresh=fresh, strict=strict, progress=progress)

    done = _run_models(pairs, device, out, quiet, json_out, run)
    if done is None:
        return
    rows = [{**ident, **res.as_dict(), "limit": limit} for ident, res in done]
    if json_out:
        print_json({"results": rows, "out": str(Path(out).expanduser().resolve())})
        return
    for r in rows:
        skipped = f", skipped {r['skipped']}" if r["skipped"] else ""
        delta = (f"  ({100 * (r['robust_accuracy'] - rows[0]['robust_accuracy']):+.2f} vs {rows[0]['model']})"
                 if r is not rows[0] else "")
        console.print(f"[bold]{r['model']}[/]  robust accuracy {pct(r['robust_accuracy'])}%  clean "
                      f"{pct(r['clean_accuracy'])}%  (L-inf PGD eps {eps:g}/255, step {step:g}/255, {steps} steps, "
                      f"random start, seed {seed}; n={r['n']}{skipped}){delta}")
    if limit is not None:
        console.print(f"note: --limit {limit}: a subset, not comparable with full-validation numbers")
    _store_line(out)
