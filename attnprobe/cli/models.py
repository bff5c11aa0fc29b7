"""`attnprobe models` and `attnprobe info`: what the zoo holds and what a model looks like inside."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from attnprobe.cli._common import command, console, print_json


def _weights_status(card: dict[str, Any]) -> str:
    from attnprobe import checkpoints, zoo

    ckpt = card.get("checkpoint", {})
    if zoo.bundled_checkpoint(card) is not None:
        return "local (bundled)"
    if ckpt.get("file"):
        return f"missing ({ckpt['file']})"
    if ckpt.get("url"):
        return "local (cached)" if checkpoints.cached_checkpoint(ckpt["url"]) is not None else "by URL"
    if ckpt.get("timm_pretrained"):
        return "timm hub"
    return "none (use --ckpt)"


def count_parameters(arch: str, kwargs: dict[str, Any]) -> int:
    """Parameter count without allocating weights (built on the meta device)."""
    import torch

    from attnprobe import zoo

    with torch.device("meta"):
        model = zoo._build(arch, kwargs)
    return sum(p.numel() for p in model.parameters())


def zoo_rows(with_params: bool = True) -> list[dict[str, Any]]:
    """One row per zoo card: name, title, architecture, parameters, weights availability."""
    from attnprobe import zoo

    rows = []
    for name, card in zoo.list_cards().items():
        params = count_parameters(card["arch"], dict(card.get("kwargs", {}))) if with_params else None
        rows.append({"name": name, "title": card.get("title", ""), "arch": card["arch"], "params": params,
                     "weights": _weights_status(card)})
    return rows


@command("models")
def models_cli(
    json_out: Annotated[bool, typer.Option("--json", help="Print the table as JSON on stdout.")] = False,
) -> None:
    """List the model zoo: architecture, parameters, and whether weights are available."""
    rows = zoo_rows()
    if json_out:
        print_json({"models": rows})
        return
    table = Table(title="attnprobe model zoo", title_justify="left")
    for col in ("name", "title", "architecture", "params", "weights"):
        table.add_column(col, justify="right" if col == "params" else "left")
    for r in rows:
        table.add_row(r["name"], r["title"], r["arch"], f"{r['params'] / 1e6:.1f}M", r["weights"])
    console.print(table)
    console.print("Any timm model name works too, e.g. --model vit_base_patch16_224.")


def attention_layers(model: Any) -> list[dict[str, Any]]:
    """The attention modules of a model as the capture sees them (name, kind, heads)."""
    from attnprobe.capture import find_attention_layers

    return [{"name": layer.name, "kind": layer.kind, "heads": layer.num_heads}
            for layer in find_attention_layers(model)]


@command("info")
def info_cli(
    model: Annotated[str, typer.Argument(help="Zoo name, official or timm name, hf-hub:ORG/NAME, local-dir:PATH.")],
    ckpt: Annotated[Optional[str], typer.Option("--ckpt", help="Checkpoint file or model folder to load (strictly); "
                                                "'-' for random weights. Default: the published weights when they "
                                                "are on this machine (info never downloads).")] = None,
    num_classes: Annotated[Optional[int], typer.Option("--num-classes", min=0, help="Classifier outputs (default: "
                                                       "as the checkpoint has it).")] = None,
    ema: Annotated[bool, typer.Option("--ema", help="Use the checkpoint's EMA weights.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")] = False,
) -> None:
    """Show a model's configuration, parameter count and the attention layers attnprobe finds."""
    import warnings

    from attnprobe import zoo
    from attnprobe.cli._loading import weights_arguments

    extra = {"num_classes": num_classes} if num_classes is not None else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", zoo.RandomWeightsWarning)  # info computes nothing with the weights
        loaded = zoo.load_model(model, use_ema=ema, download=False, **weights_arguments(ckpt), **extra)
    layers = attention_layers(loaded.model)
    info = {**loaded.describe(), "num_classes": getattr(loaded.model, "num_classes", None),
            "params": sum(p.numel() for p in loaded.model.parameters()),
            "kwargs": loaded.card.get("kwargs", {}), "title": loaded.card.get("title"),
            "paper": loaded.card.get("paper", {}), "attention_layers": layers}
    if json_out:
        print_json(info)
        return
    console.print(f"[bold]{model}[/]  {info['title'] or ''}")
    console.print(f"  architecture   {loaded.arch} {info['kwargs'] or ''}")
    console.print(f"  parameters     {info['params']:,}")
    console.print(f"  classes        {info['num_classes']}")
    weights = {"random": "random initialisation (--ckpt -)",
               "not-loaded": "not loaded (the published weights are not on this machine; info never downloads; "
                             "pass --ckpt PATH to check a file)",
               "timm": "timm's pretrained weights (cached)"}.get(loaded.weights, loaded.checkpoint_path)
    console.print(f"  weights        {weights}")
    console.print(f"  sha256         {'-' if loaded.weights == 'not-loaded' else loaded.checkpoint_sha256}")
    console.print(f"  preprocessing  {loaded.preprocessing.key()}")
    kinds: dict[str, int] = {}
    for layer in layers:
        kinds[layer["kind"]] = kinds.get(layer["kind"], 0) + 1
    summary = ", ".join(f"{n} {k}" for k, n in kinds.items()) or "none"
    console.print(f"  attention      {summary}")
    for layer in layers:
        console.print(f"    {layer['name']:<40} {layer['kind']:<6} heads={layer['heads']}")
