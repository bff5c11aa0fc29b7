"""How every command turns `--model`/`--ckpt` into loaded models, with one rule for weights.

* `--ckpt PATH`: that file, loaded strictly.
* no `--ckpt`: the model's known weights (bundled demo weights, the card's public URL downloaded into the cache, or
  timm's pretrained weights for timm names); a model without public weights is refused with a message to pass
  `--ckpt`, never silently evaluated with random weights.
* `--ckpt -` (or `random`): random initialisation, seeded so that "random-init" means the same weights on every
  rank and every rerun. Only for smoke tests; a warning says so.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from attnprobe.errors import UserError

RANDOM_WEIGHTS = frozenset({"-", "random", "none"})


def pair_models(models: Sequence[str] | None, ckpts: Sequence[str | Path] | None) -> list[tuple[str, str | None]]:
    """Match each `--model` with its `--ckpt` (same order); check the files exist before anything is computed."""
    if not models:
        raise UserError("no model given; pass --model NAME (repeat --model to compare several models)")
    given = [str(c) for c in (ckpts or [])]
    if given and len(given) != len(models):
        raise UserError(f"got {len(models)} --model but {len(given)} --ckpt; give one --ckpt per --model, in the "
                        "same order ('-' for random weights), or none to use each model's published weights")
    for c in given:
        if c not in RANDOM_WEIGHTS and not Path(c).expanduser().is_file():
            raise UserError(f"checkpoint {c} does not exist; pass the path of a .pth/.pth.tar/.bin/.safetensors file")
    return list(zip(models, given or [None] * len(models)))


def load_cli_model(name: str, ckpt: str | None, device: Any = "cpu",
                   warn: Callable[[str], None] | None = None) -> Any:
    """Load one model for a command (see the module docstring) and move it to `device` in eval mode."""
    import torch

    from attnprobe.zoo import load_model

    if ckpt in RANDOM_WEIGHTS:
        torch.manual_seed(0)
        loaded = load_model(name, pretrained=False)
        if warn is not None:
            warn(f"{name} has random weights (--ckpt {ckpt}): its numbers only test the pipeline")
    elif ckpt:
        loaded = load_model(name, checkpoint=ckpt)
    else:
        loaded = load_model(name, pretrained=None)
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
