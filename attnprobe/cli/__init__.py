"""The `attnprobe` command line. Each submodule registers its commands on the shared Typer app.

Commands are thin: parse options, call one library function that returns data, render the result.
"""

from __future__ import annotations

import importlib

from attnprobe.cli._common import app

# NOTE: one module per command group; a group that fails to import must not take the whole CLI down with it
# during development, but in a release every module is present, so import errors surface loudly.
_COMMAND_MODULES = ("models", "diagnostics", "imagenet_c", "clean", "imagenet_p", "imagenet_ar", "pgd", "segmentation",
                    "report", "demo", "merge")
for _name in _COMMAND_MODULES:
    try:
        importlib.import_module(f"attnprobe.cli.{_name}")
    except ModuleNotFoundError as _e:
        if _e.name != f"attnprobe.cli.{_name}":
            raise


def main() -> None:
    """Console-script entry point."""
    app(prog_name="attnprobe")


__all__ = ["app", "main"]
