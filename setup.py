"""Build hook: wheels carry the repository's top-level `models/` (zoo cards, bundled demo weights) as
`attnprobe/_models/`, where `attnprobe.zoo.models_dir()` finds it in an installed package.

All project metadata lives in pyproject.toml. `models/` stays at the top of the repository (data, not Python: a
top-level package called `models` would collide in users' environments); editable installs and `PYTHONPATH` use
the checkout's `models/` directly, so nothing is copied for them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
MODELS = ROOT / "models"
PACKAGED = Path("attnprobe") / "_models"


def _model_files() -> list[Path]:
    """Every file under models/ (cards and the weights they bundle), relative to it; hidden files left out."""
    if not MODELS.is_dir():
        raise FileNotFoundError(f"{MODELS} is missing: build from a complete checkout or sdist (it holds the zoo)")
    return sorted(p.relative_to(MODELS) for p in MODELS.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(MODELS).parts))


class BuildPyWithModels(build_py):
    """`build_py` that also copies models/ into the built package."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # NOTE: editable installs read models/ from the checkout (attnprobe.zoo.models_dir)
        for rel in _model_files():
            target = Path(self.build_lib) / PACKAGED / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(MODELS / rel, target)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = super().get_outputs(include_bytecode)
        if getattr(self, "editable_mode", False):
            return outputs
        return outputs + [str(Path(self.build_lib) / PACKAGED / rel) for rel in _model_files()]


setup(cmdclass={"build_py": BuildPyWithModels})
