"""Commands `train` (train or fine-tune with TAP and ADL) and `demo` (the offline end-to-end demo report).

    attnprobe train --tap 4 --adl-weight 1 --out runs/demo_vit_tapadl          # tiny ViT on the synthetic set
    attnprobe train --arch tap_fan_tiny_12_p16_224 --data my_folder/ --img-size 224 --init fan_tiny.pth --adl-weight 1
    torchrun --nproc_per_node=2 -m attnprobe train --tap 4 --out runs/x         # DDP (gloo on CPU)
    attnprobe demo                                                  # reports/demo/ of the checkout, offline, minutes
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from attnprobe.cli._common import command, console, err_console, print_json, show_progress
from attnprobe.errors import UserError


def _f(x: float, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{100 * x:.1f}%" if pct else f"{x:.3f}"


def _model_args(items: list[str]) -> dict[str, Any]:
    """Parse ``KEY=VALUE`` pairs; values are JSON when they parse (numbers, true/false, lists), else strings."""
    import json

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--model-arg {item!r} is not KEY=VALUE; write e.g. --model-arg embed_dim=64")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


#: `train` options that define a run -> its `TrainConfig` field; a resumed run keeps them (given again, they must
#: agree with the stored run).
_RUN_OPTIONS = {"arch": "arch", "task": "task", "tap": "tap", "adl_weight": "adl_weight", "adl_tau": "adl_tau",
                "adl_variant": "adl_variant", "data": "data", "epochs": "epochs", "batch_size": "batch_size",
                "lr": "lr", "weight_decay": "weight_decay", "warmup_epochs": "warmup_epochs", "img_size": "img_size",
                "train_images": "train_images", "val_images": "val_images", "seed": "seed",
                "model_arg": "model_kwargs", "init": "init", "name": "name"}
#: `train` options a resumed run may change: they do not change what is computed.
_SESSION_OPTIONS = {"save_every": "save_every", "threads": "threads", "device": "device"}


def _given_options(ctx: typer.Context) -> set[str]:
    """The parameters the user set on the command line (or by environment), not left at their defaults."""
    # NOTE: by name: Typer may carry its own copy of click, whose ParameterSource is another enum class
    return {p for p in ctx.params
            if getattr(ctx.get_parameter_source(p), "name", "") in ("COMMANDLINE", "ENVIRONMENT")}


def _same_setting(a: Any, b: Any) -> bool:
    if a == b:
        return True
    if isinstance(a, str) and isinstance(b, str):  # paths written differently
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    return False


def _resume_config(ctx: typer.Context, asked: Any, out: Path) -> Any:
    """The stored configuration of the run in `out`, checked against the run options given again, with the session
    options (threads, device, save-every) of this command."""
    from dataclasses import replace

    from attnprobe.train import default_run_name, stored_config

    stored = stored_config(out)
    given = _given_options(ctx)
    for option, field in _RUN_OPTIONS.items():
        old, new = getattr(stored, field), getattr(asked, field)
        if field == "name" and old is None:
            old = default_run_name(stored.arch, stored.tap, stored.adl_weight)
        if option in given and not _same_setting(new, old):
            flag = "--" + option.replace("_", "-")
            raise UserError(f"{flag} {new} differs from the run in {out} ({flag} {old}); drop {flag} to resume with "
                            "the run's own settings, or start a new run in another --out")
    session = {field: getattr(asked, field) for option, field in _SESSION_OPTIONS.items() if option in given}
    return replace(stored, out=str(out), **session)


@command("train", help="Train or fine-tune a model with TAP and/or ADL (loss = CE + lambda * ADL); resumable.")
def train_cli(
    ctx: typer.Context,
    arch: str = typer.Option("attnprobe_demo_vit_tiny", "--arch", help="timm architecture name (default: the tiny "
                             "demo ViT; FAN/RVT names from attnprobe.archs take --tap too)."),
    task: str = typer.Option("auto", "--task", help="classification, segmentation (CE over pixels, ignore 255, + "
                             "lambda * ADL; synthetic street scenes or a Cityscapes --data root; --img-size = crop), "
                             "or auto (segmentation for segmentation architectures such as "
                             "segformer_tap_fan_base_16_p4_hybrid)."),
    tap: Optional[int] = typer.Option(None, "--tap", help="TAP branches K (num_scales); 0 or 1 = no TAP."),
    adl_weight: float = typer.Option(0.0, "--adl-weight", help="ADL weight lambda (0 = no ADL)."),
    adl_tau: float = typer.Option(2.0, "--adl-tau", help="ADL threshold factor tau (entries above tau/N count)."),
    adl_variant: str = typer.Option("official", "--adl-variant", help="official (released code) or paper (Eq. 1-2)."),
    data: Optional[Path] = typer.Option(None, "--data", help="ImageFolder root (class folders, or train/ + val/); "
                                        "default: the synthetic textured-shapes set."),
    epochs: int = typer.Option(10, "--epochs", "-e", help="Training epochs."),
    batch_size: int = typer.Option(128, "--batch-size", "-b", help="Global batch size (split across ranks)."),
    lr: float = typer.Option(2e-3, "--lr", help="Peak AdamW learning rate (warm-up, then cosine)."),
    weight_decay: float = typer.Option(0.05, "--weight-decay", help="AdamW weight decay."),
    warmup_epochs: float = typer.Option(1.0, "--warmup-epochs", help="Linear warm-up length in epochs."),
    img_size: int = typer.Option(64, "--img-size", help="Training resolution (pixels)."),
    train_images: int = typer.Option(6000, "--train-images", help="Synthetic training images."),
    val_images: int = typer.Option(1000, "--val-images", help="Synthetic validation images."),
    seed: int = typer.Option(0, "--seed", help="Seed of initialisation, data order and augmentation."),
    model_arg: Optional[list[str]] = typer.Option(None, "--model-arg", help="Constructor argument KEY=VALUE "
                                                  "(repeatable), e.g. --model-arg embed_dim=64 --model-arg depth=4."),
    init: Optional[Path] = typer.Option(None, "--init", help="Start from these weights (fine-tuning; new TAP "
                                        "modules and a new head start fresh)."),
    name: Optional[str] = typer.Option(None, "--name", help="Model name for the card (default from arch/TAP/ADL)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder (default runs/<name>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint, with the "
                                "settings stored there (options given again must agree with them)."),
    save_every: int = typer.Option(0, "--save-every", help="Also checkpoint every N steps (0: every epoch)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads per process."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda if available)."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout (nothing else there)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    from attnprobe.train import TrainConfig, default_run_name, train

    run_name = name or default_run_name(arch, tap, adl_weight)
    cfg = TrainConfig(arch=arch, task=task, tap=tap, adl_weight=adl_weight, adl_tau=adl_tau, adl_variant=adl_variant,
                      data=str(data) if data else None, img_size=img_size, train_images=train_images,
                      val_images=val_images, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                      warmup_epochs=warmup_epochs, seed=seed, init=str(init) if init else None, name=name,
                      out=str(out or Path("runs") / run_name), save_every=save_every, threads=threads,
                      device=device, model_kwargs=_model_args(model_arg or []))
    cfg.command = cfg.to_command()
    if resume:
        cfg = _resume_config(ctx, cfg, Path(cfg.out))
    # NOTE: under torchrun only rank 0 talks (RANK is set before the process group exists).
    talk = not quiet and not json_out and os.environ.get("RANK", "0") == "0"
    bar = show_progress(quiet, json_out)

    def progress(d: dict[str, Any]) -> None:
        if d["kind"] == "epoch" and talk:
            score = (f"val mIoU {100 * d['val_miou']:.1f}%" if "val_miou" in d
                     else f"val acc {100 * d['val_accuracy']:.1f}%")
            err_console.print(f"epoch {d['epoch']}/{cfg.epochs}  loss {d['train_loss']:.3f}  {score}  "
                              f"val ADL {_f(d['val_adl'])}  ({d['seconds']:.0f} s)", soft_wrap=True)
        elif d["kind"] == "step" and bar and d["step"] % 10 == 0:
            err_console.print(f"  step {d['global_step']}/{d['total_steps']}  loss {d['loss']:.3f}", end="\r")

    res = train(cfg, resume=resume, progress=progress)
    if json_out:
        if os.environ.get("RANK", "0") == "0":
            from dataclasses import asdict

            print_json(asdict(res))
        return
    if not talk:
        return
    t = Table(title=f"{res.name} ({'finished' if res.finished else 'stopped'})")
    seg = res.val_miou is not None
    for col in ("epoch", *(("val mIoU", "val pixel acc") if seg else ("val acc",)), "val loss", "val ADL",
                "train CE", "train ADL", "time"):
        t.add_column(col, justify="right")
    t.add_row(str(res.epoch), *((_f(res.val_miou, pct=True),) if seg else ()), _f(res.val_accuracy, pct=True),
              _f(res.val_loss), _f(res.val_adl), _f(res.train_ce), _f(res.train_adl), f"{res.seconds:.0f} s")
    console.print(t)
    if res.card:
        console.print(f"weights: {res.weights}\ncard:    {res.card}  (copy both into models/ to use it as a zoo "
                      "model)")


@command("demo", help="Offline end-to-end demo: the bundled tiny models (baseline, +TAP, +ADL, +TAP & ADL), every "
                      "diagnostic, an on-the-fly corruption benchmark and the full report (minutes on a CPU, no data, "
                      "no network).")
def demo_cli(
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Report folder, results store in <out>/results "
                                       "(default: reports/demo of the attnprobe checkout, whatever the current "
                                       "folder; ./attnprobe-demo when attnprobe is installed without a checkout)."),
    quick: bool = typer.Option(False, "--quick", help="Reduced mode: few images, three corruptions (a smoke test)."),
    bench_images: Optional[int] = typer.Option(None, "--bench-images", min=1, help="Images per corruption x "
                                               "severity cell (default 300; quick 10)."),
    diag_images: Optional[int] = typer.Option(None, "--diag-images", min=1, help="Images for the attention "
                                              "diagnostics (default 64; quick 6)."),
    workers: int = typer.Option(0, "--workers", min=0,
                                help="Processes that corrupt images (0: this one; the batched engine rarely gains)."),
    threads: int = typer.Option(1, "--threads", min=1, help="torch CPU threads (1 is fastest for the tiny models)."),
    segmentation: bool = typer.Option(True, "--segmentation/--no-segmentation", help="Also evaluate the bundled "
                                      "tiny segmentation models (Table 4, Fig. 6)."),
    fresh: bool = typer.Option(False, "--fresh", help="Delete the previous results store in <out>/results first."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout (nothing else there)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    from dataclasses import asdict

    from attnprobe.demo import DemoConfig, run_demo

    talk = not quiet and not json_out
    last = {"stage": ""}

    def progress(stage: str, done: int, total: int) -> None:
        if talk and (stage != last["stage"] or done == total):
            if stage != last["stage"]:
                err_console.print(f"[dim]{stage}...[/]")
            last["stage"] = stage

    cfg = DemoConfig(out=str(out) if out is not None else None, quick=quick, bench_images=bench_images,
                     diag_images=diag_images, workers=workers,
                     threads=threads, fresh=fresh, segmentation=segmentation)
    res = run_demo(cfg, progress=progress)
    if json_out:
        print_json(asdict(res))
        return
    if quiet:
        return
    t = Table(title=f"attnprobe demo ({res.seconds:.0f} s)")
    for col in ("model", "clean acc", "mCE vs baseline", "stability (noise s3)", "row sim.", "head sim."):
        t.add_column(col, justify="right" if col != "model" else "left")
    for name, r in res.summary["models"].items():
        t.add_row(r["title"], _f(r.get("clean_accuracy", math.nan), pct=True), _f(r["mce_vs_baseline"], pct=True),
                  _f(r["stability_gaussian_noise_s3"]), _f(r["row_similarity"]), _f(r["head_similarity"]))
    console.print(t)
    console.print("CE is normalised by the demo baseline (not AlexNet). "
                  f"Report: {res.index}\nSummary: {Path(res.out) / 'summary.md'}")
