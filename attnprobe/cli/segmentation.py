"""`attnprobe seg`: semantic segmentation mIoU on Cityscapes, Cityscapes-C and ACDC (driver:
`attnprobe.benchmarks.segmentation`).

    attnprobe seg --model fan_b_tapadl_seg --ckpt tapadl_fan_base_segmentation.pth --set cityscapes --data /data/cs
    attnprobe seg --model fan_b_seg --ckpt fan_seg.pth --set cityscapes-c --data /data/cityscapes-c
    attnprobe seg --model fan_b_tapadl_seg --set cityscapes-c --data /data/cs --on-the-fly -c fog -s 3
    attnprobe seg --model fan_b_tapadl_seg --set acdc --data /data/acdc [--split test]
    torchrun --nproc_per_node=8 -m attnprobe seg --model fan_b_tapadl_seg --set cityscapes-c --data ... --out results/
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from attnprobe.cli import _options as O
from attnprobe.cli._common import command, console, pct, print_json
from attnprobe.cli._loading import pair_models
from attnprobe.cli._running import print_store_line, run_models, store_path


def _refuse_classifiers(pairs: list[tuple[str, Any]]) -> None:
    """A zoo card of another task is refused before anything is loaded or stored."""
    from attnprobe.errors import UserError
    from attnprobe.zoo import load_card

    for name, _ in pairs:
        card = load_card(name)
        if card is not None and card.get("task", "classification") != "segmentation":
            raise UserError(f"{name} is a classification model; attnprobe seg needs a segmentation model "
                            f"(e.g. fan_b_tapadl_seg; see attnprobe models)")


def _title(d: dict[str, Any]) -> str:
    subset = f", --limit {d['limit']} subset" if d["limit"] is not None else ""
    return f"{d['source']}: {d['images_per_cell']} images per cell{subset}"


def _print_header(d: dict[str, Any]) -> None:
    console.print(f"[bold]{d['model']}[/]  checkpoint {d['checkpoint_sha256'][:12]}")
    console.print(f"data: {_title(d)}", soft_wrap=True)
    console.print(f"protocol: {d['protocol']}", soft_wrap=True)


def _print_clean(d: dict[str, Any]) -> None:
    from rich.table import Table

    [cell] = d["cells"]
    per_row = 4
    table = Table(title="Cityscapes val IoU per class (%)")
    for _ in range(per_row):
        table.add_column("class")
        table.add_column("IoU", justify="right")
    items = list(cell["iou"].items())
    for k in range(0, len(items), per_row):
        row = [x for name, v in items[k:k + per_row] for x in (name, pct(v))]
        table.add_row(*row, *([""] * (2 * per_row - len(row))))
    console.print(table)
    console.print(f"[bold]mIoU {pct(cell['miou'])}[/]  aAcc {pct(cell['aacc'])}  mAcc {pct(cell['macc'])}  "
                  f"(n={cell['n']}{_skipped(cell)})")


def _skipped(c: dict[str, Any]) -> str:
    return f", {c['skipped']} unreadable skipped" if c["skipped"] else ""


def _print_cityscapes_c(d: dict[str, Any]) -> None:
    from rich.table import Table

    from attnprobe.protocol import cityscapes_c_groups

    by: dict[str, dict[int, dict[str, Any]]] = {}
    for c in d["cells"]:
        by.setdefault(c["corruption"], {})[c["severity"]] = c
    sevs = sorted({c["severity"] for c in d["cells"]})
    table = Table(title="Cityscapes-C mIoU (%) per corruption and severity")
    for col in ("group", "corruption", *(f"s{s}" for s in sevs), "score", "n"):
        table.add_column(col, justify="left" if col in ("group", "corruption") else "right")
    group_of = {c: g for g, names in cityscapes_c_groups().items() for c in names}
    scores = d["summary"]["corruptions"]
    for name, cells in by.items():
        n = sum(c["n"] for c in cells.values())
        table.add_row(group_of.get(name, "-"), name, *(pct(cells[s]["miou"]) if s in cells else "-" for s in sevs),
                      pct(scores.get(name)), str(n))
    console.print(table)
    groups = "  ".join(f"{g} {pct(v)}" for g, v in d["summary"]["groups"].items() if v is not None)
    if groups:
        console.print(f"groups: {groups}")
    if d["miou"] is not None:
        console.print(f"[bold]Cityscapes-C average mIoU {pct(d['miou'])}[/] (16 corruptions in 4 groups; noise at "
                      f"severities 1-3, the others 1-5; each cell rounded to 0.01 as the official script)")
    else:
        console.print(f"[yellow]partial table ({len(by)} corruption(s)): no Cityscapes-C average, which needs all 16 "
                      f"corruptions at their official severities (72 cells)[/]")


def _print_acdc(d: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"ACDC {'val mIoU (%)' if d['task'] == 'acdc' else 'test predictions'} per condition")
    cols = ("condition", "mIoU", "aAcc", "mAcc", "n") if d["task"] == "acdc" else ("condition", "predictions")
    for col in cols:
        table.add_column(col, justify="left" if col == "condition" else "right")
    for c in d["cells"]:
        if d["task"] == "acdc":
            table.add_row(c["condition"], pct(c["miou"]), pct(c["aacc"]), pct(c["macc"]), f"{c['n']}{_skipped(c)}")
        else:
            table.add_row(c["condition"], str(c["predictions"]))
    console.print(table)
    s = d["summary"]
    if d["task"] == "acdc":
        if s["average"] is not None:
            console.print(f"[bold]ACDC average mIoU {pct(s['average'])}[/] (mean of the 4 conditions; pooled over "
                          f"all images {pct(s['pooled'])})")
        else:
            console.print("[yellow]partial table: no ACDC average, which needs fog, night, rain and snow[/]")
    elif d.get("predictions_zip"):
        console.print(f"[bold]predictions zip: {d['predictions_zip']}[/]")


@command("seg", help="Semantic segmentation mIoU on Cityscapes, Cityscapes-C or ACDC (resumable, torchrun-shardable).")
def seg_cli(
    model: Optional[list[str]] = O.MODELS,
    ckpt: Optional[list[Path]] = O.CKPTS,
    set_name: str = typer.Option("cityscapes", "--set", help="cityscapes (clean val), cityscapes-c or acdc."),
    data: Optional[Path] = typer.Option(None, "--data", help="Cityscapes root (leftImg8bit/, gtFine/); a "
                                        "Cityscapes-C tree <root>/<corruption>/<severity>/<city>/ (or the Cityscapes "
                                        "root with --on-the-fly); or the ACDC root (rgb_anon/, gt/)."),
    corruption: Optional[list[str]] = typer.Option(None, "--corruption", "-c", help="Cityscapes-C corruption "
                                                   "(repeat); default: the 16 evaluated ones."),
    severity: Optional[list[int]] = typer.Option(None, "--severity", "-s", help="Severity 1-5 (repeat); default: the "
                                                 "official ones (1-3 for the noises, 1-5 otherwise)."),
    on_the_fly: bool = typer.Option(False, "--on-the-fly", help="Corrupt Cityscapes val (--data) on the fly at "
                                    "native size with the imagecorruptions recipe, seeded per image."),
    corruption_backend: Optional[str] = O.CORRUPTION_BACKEND,
    corruption_recipe: Optional[str] = O.CORRUPTION_RECIPE,
    gt: Optional[Path] = typer.Option(None, "--gt", help="Cityscapes root holding gtFine/val, when the Cityscapes-C "
                                      "tree has no gtFine/."),
    condition: Optional[list[str]] = typer.Option(None, "--condition", help="ACDC condition: fog, night, rain, snow "
                                                  "(repeat); default all four."),
    split: str = typer.Option("val", "--split", help="ACDC split: val (scored) or test (hidden labels: prediction "
                              "PNGs + zip for the ACDC server)."),
    limit: Optional[int] = O.LIMIT,
    keep_predictions: int = typer.Option(2, "--keep-predictions", min=0, help="Predictions kept per cell for the "
                                         "report's figures (Fig. 6, supp. Figs. V/VI)."),
    batch_size: int = typer.Option(2, "--batch-size", "-b", min=1, help="Images per batch on each process."),
    workers: Optional[int] = O.WORKERS,
    out: Path = O.OUT,
    device: Optional[str] = O.DEVICE,
    fresh: bool = O.FRESH,
    strict: bool = O.STRICT,
    json_out: bool = O.JSON,
    quiet: bool = O.QUIET,
    chunk_size: int = typer.Option(50, "--chunk-size", min=1, hidden=True,
                                   help="Images per committed chunk; a resumed run must use the same value."),
) -> None:
    """Evaluate each segmentation model on every cell of a set with the official test pipeline and slide inference."""
    from attnprobe.benchmarks.seg_protocol import check_segmentation_model
    from attnprobe.benchmarks.segmentation import check_segmentation_inputs, evaluate_segmentation

    pairs = pair_models(model, ckpt)
    _refuse_classifiers(pairs)
    # every input check (names, layouts, file pairs, label sizes) runs before any model is loaded
    inputs = check_segmentation_inputs(set_name, data, on_the_fly=on_the_fly, corruptions=corruption,
                                       severities=severity, conditions=condition, split=split, gt_root=gt,
                                       backend=corruption_backend, recipe=corruption_recipe)

    def run(loaded: Any, store: Any, ctx: Any, progress: Any) -> Any:
        return evaluate_segmentation(loaded, store, inputs, limit=limit, keep=keep_predictions,
                                     predictions_dir=Path(out) / "acdc_test", batch_size=batch_size, workers=workers,
                                     device=ctx.device, fresh=fresh, strict=strict, chunk_size=chunk_size,
                                     progress=progress)

    done = run_models(pairs, device, out, quiet, json_out, run, check=check_segmentation_model)
    if done is None:
        return
    payloads = [report.as_dict() for _, report in done]
    if json_out:
        print_json({"results": payloads, "out": store_path(out)})
        return
    for d in payloads:
        _print_header(d)
        if d["task"] == "cityscapes":
            _print_clean(d)
        elif d["task"] == "cityscapes_c":
            _print_cityscapes_c(d)
        else:
            _print_acdc(d)
        for note in d["notes"]:
            console.print(f"note: {note}")
    print_store_line(out)
