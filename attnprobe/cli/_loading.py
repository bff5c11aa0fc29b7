"""How every command turns `--model`/`--ckpt` into loaded models: the API's one rule for weights (`zoo.choose_weights`).

* `--ckpt PATH`: that file (or model folder), loaded strictly; a classifier with another number of classes than the
  architecture's default is built as the checkpoint has it (`--num-classes N` overrides, where a command offers it).
* no `--ckpt`: the model's published weights (bundled demo weights, the card's public URL downloaded into the cache,
  a model folder's own weights, or timm's pretrained weights for timm names); a model without public weights is
  refused with a message to pass `--ckpt`, never silently evaluated with random weights.
* `--ckpt -` (or `random`): random initialisation, the API's `pretrained=False`, seeded so that "random-init" means
  the same weights on every rank and every rerun. Only for smoke tests; a warning says so.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from attnprobe.errors import UserError

RANDOM_WEIGHTS = frozenset({"-", "random", "none"})


def weights_arguments(ckpt: str | Path | None) -> dict[str, Any]:
    """`--ckpt` as `zoo.load_model` arguments: nothing (published weights), `pretrained=False`, or `checkpoint=`."""
    if ckpt is None:
        return {}
    if str(ckpt) in RANDOM_WEIGHTS:
        return {"pretrained": False}
    return {"checkpoint": str(ckpt)}


def pair_models(models: Sequence[str] | None, ckpts: Sequence[str | Path] | None, outputs: int | None = None,
                what: str = "this benchmark") -> list[tuple[str, str | None]]:
    """Match each `--model` with its `--ckpt` (same order) and check everything that can be checked before any work.

    Args:
        models: the `--model` values.
        ckpts: the `--ckpt` values (none, or one per model).
        outputs: for benchmarks, the logits they score (1000): a model with another head is refused here, in one
            line, before any data is read.
        what: the benchmark's name for that message.
    """
    from attnprobe import zoo

    if not models:
        raise UserError("no model given; pass --model NAME (repeat --model to compare several models)")
    given = [str(c) for c in (ckpts or [])]
    if given and len(given) != len(models):
        raise UserError(f"got {len(models)} --model but {len(given)} --ckpt; give one --ckpt per --model, in the "
                        "same order ('-' for random weights), or none to use each model's published weights")
    pairs = list(zip(models, given or [None] * len(models), strict=True))
    for name, ckpt in pairs:
        args = weights_arguments(ckpt)
        if "checkpoint" in args:
            zoo.checkpoint_file(name, args["checkpoint"])
        if outputs is not None:
            zoo.check_output_space(name, num_classes=outputs, what=what, **args)
    return pairs


def load_cli_model(name: str, ckpt: str | None, device: Any = "cpu", warn: Callable[[str], None] | None = None,
                   num_classes: int | None = None) -> Any:
    """Load one model for a command (see the module docstring) and move it to `device` in eval mode."""
    from attnprobe.zoo import RandomWeightsWarning, load_model

    extra = {"num_classes": num_classes} if num_classes is not None else {}
    with warnings.catch_warnings():
        # NOTE: the command prints its own one-line warning (or none with --quiet), not Python's two-line one.
        warnings.simplefilter("ignore", RandomWeightsWarning)
        loaded = load_model(name, **weights_arguments(ckpt), **extra)
    if str(ckpt) in RANDOM_WEIGHTS and warn is not None:
        warn(f"{name} has random weights (--ckpt {ckpt}): its numbers only test the pipeline")
    loaded.model.to(device).eval()
    return loaded


def load_on_rank(name: str, ckpt: str | None, device: Any, quiet: bool = False) -> Any:
    """`load_cli_model` for commands that may run under torchrun: only rank 0 prints the random-weights warning."""
    from attnprobe import distributed as D
    from attnprobe.cli._common import warn

    return load_cli_model(name, ckpt, device, warn=warn if D.is_main() and not quiet else None)


def progress_hook(quiet: bool, json_out: bool) -> Any:
    """A context manager yielding the evaluation progress hook: rich bars on rank 0 of an interactive terminal,
    otherwise a hook that only prints warnings (stderr), unless `quiet`."""
    from contextlib import nullcontext

    from attnprobe import distributed as D
    from attnprobe.cli._common import err_console, show_progress, warn
    from attnprobe.engine import ProgressHook, RichProgress

    if D.is_main() and show_progress(quiet, json_out):
        return RichProgress(console=err_console, warn=warn)

    class WarnOnly(ProgressHook):
        def warn(self, message: str) -> None:
            if not quiet:
                warn(message)

    return nullcontext(WarnOnly())
