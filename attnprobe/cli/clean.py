"""`attnprobe clean`: clean top-1 accuracy on an ImageNet-style folder (driver: `attnprobe.benchmarks.clean`).

    attnprobe clean --model fan_b_tapadl --ckpt tapadl_fan_base.pth.tar --data /data/imagenet/val
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from attnprobe.cli import _options as O
from attnprobe.cli._common import command, console, pct, print_json
from attnprobe.cli._loading import pair_models
from attnprobe.cli._running import BATCH, execution_kw, print_limit_note, print_store_line, run_models, store_path


@command("clean", help="Clean top-1 accuracy on an ImageNet-style validation folder (resumable).")
def clean_cli(
    model: Optional[list[str]] = O.MODELS,
    ckpt: Optional[list[Path]] = O.CKPTS,
    data: Path = typer.Option(..., "--data", help="Validation folder <val>/<wnid>/* (labels: canonical wnid order)."),
    limit: Optional[int] = O.LIMIT,
    batch_size: int = BATCH,
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
    """Top-1 accuracy and error of each model on a clean folder."""
    from attnprobe.benchmarks.clean import evaluate_clean
    from attnprobe.data.folders import scan_class_folders

    pairs = pair_models(model, ckpt, outputs=1000, what="clean ImageNet accuracy")
    samples = scan_class_folders(data, what="validation folder")  # reject a bad folder before loading a model
    ex_kw = execution_kw(precision, decode, compile_model, channels_last)

    def run(loaded: Any, store: Any, ctx: Any, progress: Any) -> Any:
        return evaluate_clean(loaded, data, store, limit=limit, samples=samples, batch_size=batch_size,
                              workers=workers, device=ctx.device, fresh=fresh, strict=strict, progress=progress,
                              **ex_kw)

    done = run_models(pairs, device, out, quiet, json_out, run)
    if done is None:
        return
    payloads = [{"model": ident["model"], "checkpoint_sha256": ident["checkpoint_sha256"],
                 "preprocessing": ident["preprocessing"], "dataset": res.key.dataset, "n": res.n,
                 "correct": res.correct, "skipped": res.skipped,
                 "top1_accuracy": res.top1_accuracy if res.n else None,
                 "top1_error": res.top1_error if res.n else None, "cached": res.cached, "out": store_path(out)}
                for ident, res in done]
    if json_out:
        print_json({"results": payloads})
        return
    for p in payloads:
        skipped = f", skipped {p['skipped']}" if p["skipped"] else ""
        console.print(f"[bold]{p['model']}[/]  top-1 accuracy {pct(p['top1_accuracy'])}%  "
                      f"(error {pct(p['top1_error'])}%, n={p['n']}{skipped})")
    print_limit_note(limit, "full-validation numbers")
    print_store_line(out)
