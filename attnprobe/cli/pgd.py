"""`attnprobe pgd`: robust top-1 accuracy under L-inf PGD (driver: `attnprobe.benchmarks.pgd`).

    attnprobe pgd --model fan_b_tapadl --ckpt tapadl_fan_base.pth.tar --data /data/imagenet/val --limit 5000
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from attnprobe.cli import _options as O
from attnprobe.cli._common import command, console, pct, print_json
from attnprobe.cli._loading import pair_models
from attnprobe.cli._running import execution_kw, print_limit_note, print_store_line, run_models, store_path


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
    precision: str = O.PRECISION,
    decode: str = O.DECODE,
    compile_model: bool = O.COMPILE,
    channels_last: Optional[bool] = O.CHANNELS_LAST,
    fresh: bool = O.FRESH,
    strict: bool = O.STRICT,
    json_out: bool = O.JSON,
    quiet: bool = O.QUIET,
) -> None:
    """Clean and robust accuracy of each model; the attack normalises inside, so eps is in pixel units."""
    from attnprobe.data.folders import scan_class_folders
    from attnprobe.benchmarks.pgd import evaluate_pgd

    pairs = pair_models(model, ckpt, outputs=1000, what="PGD robust accuracy")
    scan_class_folders(data, "validation folder")  # reject a bad folder before loading any model
    ex_kw = execution_kw(precision, decode, compile_model, channels_last)

    def run(loaded: Any, store: Any, ctx: Any, progress: Any) -> Any:
        return evaluate_pgd(loaded, data, store, limit=limit, batch_size=batch_size, eps=eps / 255,
                            step=step / 255, steps=steps, seed=seed, workers=workers, device=ctx.device,
                            fresh=fresh, strict=strict, progress=progress, **ex_kw)

    done = run_models(pairs, device, out, quiet, json_out, run)
    if done is None:
        return
    rows = [{**ident, **res.as_dict(), "limit": limit} for ident, res in done]
    if json_out:
        print_json({"results": rows, "out": store_path(out)})
        return
    for r in rows:
        skipped = f", skipped {r['skipped']}" if r["skipped"] else ""
        delta = (f"  ({100 * (r['robust_accuracy'] - rows[0]['robust_accuracy']):+.2f} vs {rows[0]['model']})"
                 if r is not rows[0] else "")
        console.print(f"[bold]{r['model']}[/]  robust accuracy {pct(r['robust_accuracy'])}%  clean "
                      f"{pct(r['clean_accuracy'])}%  (L-inf PGD eps {eps:g}/255, step {step:g}/255, {steps} steps, "
                      f"random start, seed {seed}; n={r['n']}{skipped}){delta}")
    print_limit_note(limit, "full-validation numbers")
    print_store_line(out)
