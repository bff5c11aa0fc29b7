"""The package as users install it: sdist → wheel → a fresh virtual environment outside the checkout, run from
another folder; and an editable install, the development path. Nothing is downloaded: the fresh environments see
the test environment's dependencies (torch, timm, ...) through a `.pth` file, added only after attnprobe itself is
installed, so pip never sees (or touches) the test environment's own attnprobe.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
# What the sdist is built from: the files a release checkout has (tests, reports and bench are not shipped).
SOURCES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "constraints.txt", "attnprobe", "models")


def _env(tmp: Path) -> dict[str, str]:
    """A clean environment: no PYTHONPATH (which would import the checkout), no user site, private caches."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "ATTNPROBE_MODELS_DIR", "__PYVENV_LAUNCHER__")}
    env.update(PYTHONNOUSERSITE="1", MPLBACKEND="Agg", OMP_NUM_THREADS="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
               ATTNPROBE_CACHE=str(tmp / "cache"), HF_HUB_OFFLINE="1")
    return env


def _run(cmd: list[str | Path], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=900,
                          check=False)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def _venv(root: Path, wheel: Path, env: dict[str, str]) -> Path:
    """A fresh venv with `wheel` installed, then given the test environment's packages; returns its bin folder."""
    _run([sys.executable, "-m", "venv", "--without-pip", root], root.parent, env)
    bindir = root / ("Scripts" if os.name == "nt" else "bin")
    python = bindir / ("python.exe" if os.name == "nt" else "python")
    # NOTE: pip from the test environment installs into the venv (`--python`); the venv itself has no pip.
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel],
         root.parent, env)
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root.parent,
                     env).stdout.strip())
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_attnprobe_test_deps.pth").write_text("".join(f"{p}\n" for p in sorted(deps)))
    return bindir


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """sdist from a copy of the checkout, then the wheel built from that sdist (as pip does from an index)."""
    import setuptools

    major, minor = (int(x) for x in setuptools.__version__.split(".")[:2])
    assert (major, minor) >= (70, 1), "the test extra needs setuptools>=70.1 (builds wheels without `wheel`)"
    root = tmp_path_factory.mktemp("pkg")
    env = _env(root)
    src = root / "src"
    src.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "_models"))
        else:
            shutil.copy2(path, src / name)
    dist = root / "dist"
    _run([sys.executable, "-c", "import sys; from setuptools import build_meta as b; b.build_sdist(sys.argv[1])",
          dist], src, env)
    sdist = next(dist.glob("attnprobe-*.tar.gz"))
    with tarfile.open(sdist) as tar:
        try:
            tar.extractall(root / "unpacked", filter="data")
        except TypeError:  # pragma: no cover - Python without extraction filters (< 3.10.12)
            tar.extractall(root / "unpacked")
    unpacked = next((root / "unpacked").iterdir())
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", dist,
          unpacked], root, env)
    return {"root": root, "src": src, "sdist": sdist, "wheel": next(dist.glob("attnprobe-*.whl"))}


def test_sdist_and_wheel_carry_every_runtime_file(built: dict[str, Path]) -> None:
    def files(folder: Path) -> list[str]:
        rel = (p.relative_to(folder) for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".pyc"))
        return sorted(r.as_posix() for r in rel if not any(part.startswith((".", "__pycache__", "_models"))
                                                           for part in r.parts))

    models = files(REPO / "models")
    package = [f"attnprobe/{f}" for f in files(REPO / "attnprobe")]  # code and data (protocol JSON, ...)
    assert any(m.endswith(".safetensors") for m in models) and any(m.endswith(".toml") for m in models)
    assert "attnprobe/protocol/imagenet_c_corruptions.json" in package
    with tarfile.open(built["sdist"]) as tar:
        in_sdist = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {f"models/{m}" for m in models} <= in_sdist and set(package) <= in_sdist
    with zipfile.ZipFile(built["wheel"]) as whl:
        in_wheel = set(whl.namelist())
    assert {f"attnprobe/_models/{m}" for m in models} <= in_wheel
    assert set(package) <= in_wheel, sorted(set(package) - in_wheel)
    assert not any(n.startswith("models/") for n in in_wheel)  # no top-level `models` package in site-packages


DRIVER = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from typer.testing import CliRunner
    import attnprobe
    from attnprobe import zoo
    from attnprobe.cli import app

    def run(*args):
        r = CliRunner().invoke(app, [str(a) for a in args])
        return {"code": r.exit_code, "out": r.stdout, "err": r.stderr}

    print(json.dumps({
        "package": attnprobe.__file__, "models_dir": str(zoo.models_dir()),
        "demo": run("demo", "--quick", "--out", "demo-out", "--quiet"),
        "stability": run("stability", "--model", "demo_vit_tap", "--n", "2", "--severity", "1",
                         "--out", "demo-out/results", "--json"),
        "missing": run("stability", "--model", "fan_b_tapadl", "--ckpt", "tapadl_fan_base.pth.tar"),
    }))
""")


def test_wheel_runs_outside_the_checkout(built: dict[str, Path]) -> None:
    root = built["root"]
    env = _env(root)
    bindir = _venv(root / "venv", built["wheel"], env)
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    models = json.loads(_run([bindir / "attnprobe", "models", "--json"], elsewhere, env).stdout)["models"]
    weights = {r["name"]: r["weights"] for r in models}
    assert weights["demo_vit_baseline"] == "local (bundled)" and weights["fan_b_tapadl"] == "by URL"
    res = json.loads(_run([bindir / "python", "-c", DRIVER], elsewhere, env).stdout)
    venv = (root / "venv").resolve()
    assert Path(res["package"]).resolve().is_relative_to(venv), res["package"]  # the wheel, not the checkout
    assert Path(res["models_dir"]).resolve().is_relative_to(venv)
    for step in ("demo", "stability"):
        assert res[step]["code"] == 0, (step, res[step]["err"])
    assert (elsewhere / "demo-out" / "index.html").is_file()  # the demo's report, drawn inside the installed package
    assert json.loads(res["stability"]["out"])["results"][0]["n_images"] == 2
    assert res["missing"]["code"] == 2 and "checkpoint not found: tapadl_fan_base.pth.tar" in res["missing"]["err"]


def test_editable_install_reads_the_checkout(built: dict[str, Path]) -> None:
    root, src = built["root"], built["src"]
    env = _env(root)
    editable = root / "editable-dist"
    _run([sys.executable, "-c", "import sys; from setuptools import build_meta as b; b.build_editable(sys.argv[1])",
          editable], src, env)
    bindir = _venv(root / "venv-editable", next(editable.glob("attnprobe-*.whl")), env)
    script = ("import json, attnprobe; from attnprobe import zoo; lm = zoo.load_model('demo_vit_baseline'); "
              "print(json.dumps([attnprobe.__file__, str(zoo.models_dir()), lm.weights]))")
    package, models_dir, weights = json.loads(_run([bindir / "python", "-c", script], root, env).stdout)
    assert Path(package).resolve() == (src / "attnprobe" / "__init__.py").resolve()
    assert Path(models_dir).resolve() == (src / "models").resolve() and weights == "bundled"
    assert not (src / "attnprobe" / "_models").exists()  # nothing was copied into the checkout
