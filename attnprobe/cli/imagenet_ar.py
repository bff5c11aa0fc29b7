"""`attnprobe ood`: ImageNet-A / ImageNet-R top-1 accuracy on their 200 classes (driver:
`attnprobe.benchmarks.imagenet_ar`).

    attnprobe ood --model fan_b_tapadl --ckpt tapadl_fan_base.pth.tar --set a --data /data/imagenet-a
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from attnprobe.cli import _options as O
from attnprobe.cli._common import command, console, pct, print_json
from attnprobe.cli._loading import pair_models
from attnprobe.cli._running import BATCH, execution_kw, print_limit_note, print_store_line, run_models, store_path


@command("ood", help="ImageNet-A or ImageNet-R top-1 accuracy on their 200 classes (resumable).")
def ood_cli(
    model: Optional[list[str]] = O.MODELS,
    ckpt: Optional[list[Path]] = O.CKPTS,
    set_name: str = typer.Option(..., "--set", "-s", help="a (ImageNet-A) or r (ImageNet-R)."),
    data: Path = typer.Option(..., "--data", help="The set's folder <dir>/<wnid>/* (200 wnids)."),
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
    """Top-1 accuracy with the logits restricted to the set's 200 classes."""
    from attnprobe.benchmarks.imagenet_ar import evaluate_subset, subset_samples

    pairs = pair_models(model, ckpt, outputs=1000, what=f"ImageNet-{set_name.upper()}")
    subset_samples(data, set_name)  # reject a wrong folder or set before loading any model
    name = set_name.lower()
    ex_kw = execution_kw(precision, decode, compile_model, channels_last)

    def run(loaded: Any, store: Any, ctx: Any, progress: Any) -> Any:
        return evaluate_subset(loaded, name, data, store, batch_size=batch_size, limit=limit, workers=workers,
                               device=ctx.device, fresh=fresh, strict=strict, progress=progress, **ex_kw)

    done = run_models(pairs, device, out, quiet, json_out, run)
    if done is None:
        return
    rows = [{**ident, **res.as_dict(), "limit": limit} for ident, res in done]
    if json_out:
        print_json({"results": rows, "out": store_path(out)})
        return
    label = f"ImageNet-{name.upper()}"
    for r in rows:
        skipped = f", skipped {r['skipped']}" if r["skipped"] else ""
        delta = (f"  ({100 * (r['accuracy'] - rows[0]['accuracy']):+.2f} vs {rows[0]['model']})"
                 if r is not rows[0] else "")
        console.print(f"[bold]{r['model']}[/]  {label} top-1 accuracy {pct(r['accuracy'])}% "
                      f"(n={r['n']}{skipped}; 200-class logits){delta}")
    print_limit_note(limit, "full-set numbers")
    print_store_line(out)
