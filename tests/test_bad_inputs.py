"""The bad-input sweep: every user mistake we know of gets ONE line on stderr and exit code 2, and leaves no trace.

One row per bad input (a `Case`): the command line, what to build first, and the words the one-line message must
contain. For every row the sweep checks:

* exit code 2 and no uncaught exception (no traceback);
* exactly one line on stderr, starting with `error:`, containing every expected word (case-insensitive);
* nothing written: the files under the row's folder, under the shared fixtures and in the working directory (an
  empty folder of the row) are the same before and after;
* files that are not ours (`foreign`: e.g. another program's SQLite file, a garbled checkpoint) are byte-identical.

To add a case, append a `Case` to the section of its area. `args` may use `{tmp}` (the row's own empty folder) and
the names `setup(tmp)` returns, e.g. `{val}`; shared fixtures are `{store}` (a results store with attention maps of
3 layers) and `{run}` (a finished training run).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from attnprobe.cli import app

runner = CliRunner()
TINY = ["--model-arg", "embed_dim=16", "--model-arg", "depth=1", "--model-arg", "num_heads=2"]


@dataclass(frozen=True)
class Case:
    """One bad input.

    Attributes:
        id: test id.
        args: the command line after `attnprobe`; `{name}` is replaced by a path (see the module docstring).
        words: words the one-line message must contain (case-insensitive).
        setup: builds inputs inside the row's folder; returns `{name: path}` for `args` and `foreign`.
        foreign: names (from setup) of files that are not ours and must stay byte-identical.
        skip: a reason to skip the row on this machine, or None.
    """

    id: str
    args: tuple[str, ...]
    words: tuple[str, ...]
    setup: Callable[[Path], dict[str, Path]] | None = None
    foreign: tuple[str, ...] = ()
    skip: Callable[[], str | None] | None = field(default=None, compare=False)


# -- inputs the rows build -----------------------------------------------------------------------------------------

def _images(root: Path, wnids: list[str]) -> Path:
    rng = np.random.default_rng(0)
    for w in wnids:
        (root / w).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / w / "0.jpg")
    return root


def val_folder(tmp: Path) -> dict[str, Path]:
    """An ImageNet-style validation folder of one image."""
    return {"val": _images(tmp / "val", ["n01440764"])}


def imagenet_a_folder(tmp: Path) -> dict[str, Path]:
    """An ImageNet-A-style folder (a class of the set's 200)."""
    from attnprobe import protocol

    wnid = protocol.imagenet_wnids()[protocol.subset_indices("a")[0]]
    return {"a": _images(tmp / "imagenet-a", [wnid])}


def empty_folder(tmp: Path) -> dict[str, Path]:
    (tmp / "empty").mkdir()
    return {"empty": tmp / "empty"}


def garbled_run(tmp: Path) -> dict[str, Path]:
    """A run folder whose checkpoint.pt is garbage (not written by us; it must stay as it is)."""
    (tmp / "run").mkdir()
    path = tmp / "run" / "checkpoint.pt"
    path.write_bytes(os.urandom(2048))
    return {"garbled": tmp / "run", "ckpt": path}


def a_file(tmp: Path) -> dict[str, Path]:
    """A file of the user's where a folder is expected (it must stay as it is)."""
    path = tmp / "notes.txt"
    path.write_text("my notes\n")
    return {"file": path}


def no_cuda_gpu() -> str | None:
    return "this machine has a CUDA GPU" if torch.cuda.is_available() else None


def foreign_sqlite(tmp: Path) -> dict[str, Path]:
    """A folder whose `results.sqlite` is another program's database (nothing may be added to it)."""
    import sqlite3

    (tmp / "other").mkdir()
    db = tmp / "other" / "results.sqlite"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE people (name TEXT)")
        con.execute("INSERT INTO people VALUES ('ada')")
    con.close()
    return {"other": tmp / "other", "db": db, **val_folder(tmp)}


def garbled_store(tmp: Path) -> dict[str, Path]:
    """A results store whose pages are noise (the header survives); it must stay as it is."""
    from attnprobe.store import CellKey, ChunkCounts, ResultsStore

    with ResultsStore(tmp / "store") as store:
        for c in range(20):
            store.add_chunk(CellKey("m", "sha", "clean", "ds", "pre", "clean", 0), c,
                            ChunkCounts(n=100, correct=c, extra={"pad": "x" * 200}))
    db = tmp / "store" / "results.sqlite"
    raw = bytearray(db.read_bytes())
    raw[100:] = np.random.default_rng(0).integers(0, 256, len(raw) - 100, dtype=np.uint8).tobytes()
    db.write_bytes(bytes(raw))
    return {"garbled_store": tmp / "store", "db": db, **val_folder(tmp)}


def zero_byte_checkpoint(tmp: Path) -> dict[str, Path]:
    """A checkpoint file of 0 bytes (an interrupted download; it is the user's and must stay as it is)."""
    path = tmp / "model.pth"
    path.write_bytes(b"")
    return {"zero": path}


def ten_class_checkpoint(tmp: Path) -> dict[str, Path]:
    """A `test_vit` fine-tuned to 10 classes (its classifier says so), and a validation folder."""
    import timm

    path = tmp / "ten.pth"
    torch.save(timm.create_model("test_vit", num_classes=10).state_dict(), path)
    return {"ten": path, **val_folder(tmp), **imagenet_a_folder(tmp)}


# -- the rows ------------------------------------------------------------------------------------------------------

MODEL = ("--model", "vit_tiny_patch16_224", "--ckpt", "-")

CASES: list[Case] = [
    # --device names no device, or one this machine does not have (checked once, before anything is loaded)
    Case("clean-device-tpu9", ("clean", *MODEL, "--data", "{val}", "--device", "tpu9", "--out", "{tmp}/o"),
         ("--device", "tpu9"), val_folder),
    Case("mce-device-tpu9", ("mce", *MODEL, "--clean", "{val}", "--on-the-fly", "--corruption", "fog",
                             "--severity", "1", "--device", "tpu9", "--out", "{tmp}/o"), ("--device", "tpu9"),
         val_folder),
    # corruption backend / recipe: unknown names, or given where nothing is corrupted on the fly
    Case("mce-corruption-backend-unknown", ("mce", *MODEL, "--clean", "{val}", "--on-the-fly", "--corruption", "fog",
                                            "--corruption-backend", "cuda-magic", "--out", "{tmp}/o"),
         ("unknown corruption backend", "cuda-magic", "torch, reference"), val_folder),
    Case("mce-corruption-recipe-unknown", ("mce", *MODEL, "--clean", "{val}", "--on-the-fly", "--corruption", "fog",
                                           "--corruption-recipe", "imagenet-p", "--out", "{tmp}/o"),
         ("imagenet-p",), val_folder),
    Case("mce-corruption-backend-released", ("mce", *MODEL, "--data", "{val}", "--corruption-backend", "reference",
                                             "--out", "{tmp}/o"), ("--corruption-backend", "--on-the-fly"),
         val_folder),
    Case("stability-corruption-backend-unknown", ("stability", *MODEL, "--corruption-backend", "gpu",
                                                  "--out", "{tmp}/o"), ("unknown corruption backend", "gpu")),
    Case("mfr-device-tpu9", ("mfr", *MODEL, "--clean", "{val}", "--on-the-fly", "--perturbation", "rotate",
                             "--device", "tpu9", "--out", "{tmp}/o"), ("--device", "tpu9"), val_folder),
    Case("ood-device-tpu9", ("ood", *MODEL, "--set", "a", "--data", "{a}", "--device", "tpu9", "--out", "{tmp}/o"),
         ("--device", "tpu9"), imagenet_a_folder),
    Case("pgd-device-tpu9", ("pgd", *MODEL, "--data", "{val}", "--device", "tpu9", "--out", "{tmp}/o"),
         ("--device", "tpu9"), val_folder),
    Case("stability-device-tpu9", ("stability", *MODEL, "--device", "tpu9", "--out", "{tmp}/o"),
         ("--device", "tpu9")),
    Case("train-device-tpu9", ("train", *TINY, "--device", "tpu9", "--out", "{tmp}/r"), ("--device", "tpu9")),
    Case("clean-device-cuda99", ("clean", *MODEL, "--data", "{val}", "--device", "cuda:99", "--out", "{tmp}/o"),
         ("--device cuda:99",), val_folder),
    Case("clean-device-cuda-without-gpu", ("clean", *MODEL, "--data", "{val}", "--device", "cuda", "--out",
                                           "{tmp}/o"), ("--device cuda", "--device cpu"), val_folder,
         skip=no_cuda_gpu),
    # a layer the stored attention maps do not have (they have 3)
    Case("report-layer-99", ("report", "{store}", "--out", "{tmp}/rep", "--layer", "99"),
         ("--layer 99", "out of range", "3 layers")),
    Case("report-layer--4", ("report", "{store}", "--out", "{tmp}/rep", "--layer", "-4"), ("--layer -4", "3 layers")),
    Case("plot-maps-layer-42", ("plot-maps", "{store}", "--out", "{tmp}/fig", "--layer", "42"),
         ("--layer 42", "3 layers")),
    Case("plot-heads-layer-42", ("plot-heads", "{store}", "--out", "{tmp}/fig", "--layer", "42"),
         ("--layer 42", "3 layers")),
    # the report's other options
    Case("report-source-unknown", ("report", "{store}", "--out", "{tmp}/rep", "--source", "bogus"),
         ("--source", "bogus", "released")),
    Case("report-baseline-unknown", ("report", "{store}", "--out", "{tmp}/rep", "--baseline", "ghost"),
         ("--baseline", "ghost")),
    Case("report-ce-reference-unknown", ("report", "{store}", "--out", "{tmp}/rep", "--ce-reference", "ghost"),
         ("--ce-reference", "ghost")),
    Case("report-format-unknown", ("report", "{store}", "--out", "{tmp}/rep", "--format", "gif"), ("gif",)),
    Case("report-corruption-not-stored", ("report", "{store}", "--out", "{tmp}/rep", "--corruption", "snow"),
         ("snow",)),
    Case("report-out-is-the-store", ("report", "{store}", "--out", "{store}"), ("--out",)),
    Case("report-no-store", ("report", "{empty}", "--out", "{tmp}/rep"), ("no results store",), empty_folder),
    # train --resume: a folder without a run, options that disagree with the stored run, a garbled checkpoint
    Case("train-resume-empty-folder", ("train", "--out", "{empty}", "--resume"), ("nothing to resume", "--resume"),
         empty_folder),
    Case("train-resume-missing-folder", ("train", "--out", "{tmp}/nothing", "--resume"),
         ("nothing to resume", "does not exist")),
    Case("train-resume-other-lr", ("train", "--out", "{run}", "--resume", "--lr", "0.5"), ("--lr 0.5", "differs")),
    Case("train-resume-other-tap", ("train", "--out", "{run}", "--resume", "--tap", "3"), ("--tap 3", "differs")),
    Case("train-resume-garbled-checkpoint", ("train", "--out", "{garbled}", "--resume"), ("cannot read",),
         garbled_run, foreign=("ckpt",)),
    Case("train-existing-run-without-resume", ("train", *TINY, "--epochs", "1", "--out", "{run}"), ("--resume",)),
    Case("train-resume-out-is-a-file", ("train", "--out", "{file}", "--resume"), ("is a file",), a_file,
         foreign=("file",)),
    Case("train-out-is-a-file", ("train", *TINY, "--out", "{file}"), ("--out", "is a file"), a_file,
         foreign=("file",)),
    Case("train-out-below-a-file", ("train", *TINY, "--out", "{file}/run"), ("--out", "is a file"), a_file,
         foreign=("file",)),
    Case("train-init-missing", ("train", *TINY, "--init", "{tmp}/nothing.pth", "--out", "{tmp}/r"),
         ("--init", "no such file")),
    Case("train-save-every-negative", ("train", *TINY, "--save-every", "-1", "--out", "{tmp}/r"), ("--save-every",)),
    # output folders of the report, the plots and the demo
    Case("report-out-is-a-file", ("report", "{store}", "--out", "{file}"), ("--out", "is a file"), a_file,
         foreign=("file",)),
    Case("report-out-below-a-file", ("report", "{store}", "--out", "{file}/rep"), ("--out", "is a file"), a_file,
         foreign=("file",)),
    Case("plot-maps-out-is-a-file", ("plot-maps", "{store}", "--out", "{file}"), ("--out", "is a file"), a_file,
         foreign=("file",)),
    Case("plot-stability-out-is-a-file", ("plot-stability", "{store}", "--out", "{file}"), ("--out", "is a file"),
         a_file, foreign=("file",)),
    Case("demo-out-is-a-file", ("demo", "--quick", "--out", "{file}"), ("--out", "is a file"), a_file,
         foreign=("file",)),
    Case("plot-stability-corruption-not-stored", ("plot-stability", "{store}", "--out", "{tmp}/fig",
                                                  "--corruption", "snow"), ("for snow", "--corruption snow")),
    # checkpoints: empty files, folders without weights, for every command that reads one
    Case("stability-ckpt-zero-bytes", ("stability", "--model", "test_vit", "--ckpt", "{zero}", "--out", "{tmp}/o"),
         ("empty", "0 bytes"), zero_byte_checkpoint, foreign=("zero",)),
    Case("info-ckpt-zero-bytes", ("info", "test_vit", "--ckpt", "{zero}"), ("empty", "0 bytes"),
         zero_byte_checkpoint, foreign=("zero",)),
    Case("train-init-zero-bytes", ("train", *TINY, "--init", "{zero}", "--out", "{tmp}/r"), ("empty", "0 bytes"),
         zero_byte_checkpoint, foreign=("zero",)),
    Case("heads-ckpt-folder-without-weights", ("heads", "--model", "test_vit", "--ckpt", "{empty}", "--out",
                                                "{tmp}/o"), ("folder without a weights file",), empty_folder),
    # output space: a model fine-tuned to 10 classes on benchmarks that score ImageNet-1k logits
    Case("mce-ten-class-model", ("mce", "--model", "test_vit", "--ckpt", "{ten}", "--clean", "{val}", "--on-the-fly",
                                 "-c", "fog", "-s", "1", "--out", "{tmp}/o"), ("10 output classes", "1000"),
         ten_class_checkpoint, foreign=("ten",)),
    Case("clean-ten-class-model", ("clean", "--model", "test_vit", "--ckpt", "{ten}", "--data", "{val}", "--out",
                                   "{tmp}/o"), ("10 output classes",), ten_class_checkpoint, foreign=("ten",)),
    Case("ood-ten-class-model", ("ood", "--model", "test_vit", "--ckpt", "{ten}", "--set", "a", "--data", "{a}",
                                 "--out", "{tmp}/o"), ("10 output classes", "ImageNet-A"), ten_class_checkpoint,
         foreign=("ten",)),
    # store files: --out that is a file, another program's SQLite file, a garbled store (more in test_store_cli.py,
    # with truncated stores, read-only folders, a full disk and locks)
    Case("mce-out-is-a-file", ("mce", *MODEL, "--clean", "{val}", "--on-the-fly", "-c", "fog", "-s", "1", "--out",
                               "{file}"), ("is a file",), lambda t: {**a_file(t), **val_folder(t)}, foreign=("file",)),
    Case("stability-out-is-a-file", ("stability", *MODEL, "--out", "{file}"), ("is a file",), a_file,
         foreign=("file",)),
    Case("clean-foreign-sqlite", ("clean", *MODEL, "--data", "{val}", "--out", "{other}"),
         ("another program", "people"), foreign_sqlite, foreign=("db",)),
    Case("heads-foreign-sqlite", ("heads", *MODEL, "--out", "{other}"), ("another program",), foreign_sqlite,
         foreign=("db",)),
    Case("mce-garbled-store", ("mce", *MODEL, "--clean", "{val}", "--on-the-fly", "-c", "fog", "-s", "1", "--out",
                               "{garbled_store}"), ("damaged",), garbled_store, foreign=("db",)),
]


# -- shared fixtures -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from attnprobe.report.synthetic import make_synthetic_store
    from attnprobe.train import TrainConfig, train

    root = tmp_path_factory.mktemp("bad_inputs_shared")
    make_synthetic_store(root / "store", models=("fan_b", "fan_b_tapadl"), n_images=2, n_samples=20,
                         chunk_size=20, layers=3, heads=2, grid=3, map_images=1,
                         corruptions=["gaussian_noise"]).close()
    train(TrainConfig(train_images=32, val_images=8, batch_size=32, epochs=1, threads=1, out=str(root / "run"),
                      model_kwargs={"embed_dim": 16, "depth": 1, "num_heads": 2}))
    return {"store": root / "store", "run": root / "run", "root": root}


def _snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every file below `roots` with its size and modification time, and every folder.

    SQLite's `-wal`/`-shm` side files are left out: a reader of a WAL database makes them (the store itself,
    `results.sqlite`, is compared like any file)."""
    out = {}
    for root in roots:
        for p in [root, *root.rglob("*")]:
            if p.name.endswith(("-wal", "-shm")):
                continue
            st = p.stat()
            out[str(p)] = (st.st_size, st.st_mtime_ns) if p.is_file() else (-1, 0)
    return out


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case: Case, shared: dict[str, Path], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    reason = case.skip() if case.skip else None
    if reason:
        pytest.skip(reason)
    names = {"tmp": tmp_path, **{k: v for k, v in shared.items() if k != "root"}}
    names.update(case.setup(tmp_path) if case.setup else {})
    args = [a.format(**{k: str(v) for k, v in names.items()}) for a in case.args]
    foreign = {n: _sha(names[n]) for n in case.foreign}
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # a command that writes relative to the working directory shows up here
    before = _snapshot(tmp_path, shared["root"])

    res = runner.invoke(app, args)

    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    for word in case.words:
        assert word.lower() in lines[0].lower(), (word, lines[0])
    assert _snapshot(tmp_path, shared["root"]) == before, "the command wrote files"
    for n, digest in foreign.items():
        assert _sha(names[n]) == digest, f"{n} was modified"
