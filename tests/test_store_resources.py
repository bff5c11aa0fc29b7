"""A full disk, a read-only results folder and a store locked by another program: one line, exit code 2, the store
stays valid, and the same command resumes to the numbers of an uninterrupted run once the cause is fixed."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from attnprobe.cli import app
from attnprobe.store import ResultsStore
from tests.imagenet_c_fixtures import make_class_tree, make_imagenet_c_tree, make_models_dir

runner = CliRunner()


@pytest.fixture()
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    monkeypatch.setenv("ATTNPROBE_MODELS_DIR", str(make_models_dir(tmp_path / "models")))
    return {"root": tmp_path, "val": make_class_tree(tmp_path / "val", per_class=2),
            "inc": make_imagenet_c_tree(tmp_path / "inc", per_class=3)}


def mce(data: dict[str, Path], out: Path) -> list[str]:
    """42 chunks of one image (2 corruptions x 2 severities x 9 images, 6 clean images): many small commits."""
    return ["mce", "--model", "tiny_vit", "--data", str(data["inc"]), "--clean", str(data["val"]), "-c",
            "gaussian_noise", "-c", "fog", "-s", "1", "-s", "2", "--workers", "0", "--chunk-size", "1", "--json",
            "--out", str(out)]


def invoke(args: list[str]) -> tuple[int, str, str]:
    res = runner.invoke(app, args)
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.stdout, res.stderr


def one_line_error(code: int, err: str, match: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and match in lines[0], err


def counts(stdout: str) -> list[tuple]:
    r = json.loads(stdout)["results"][0]
    return [(c["corruption"], c["severity"], c["n"], c["correct"]) for c in r["cells"]] + [
        ("clean", 0, r["clean"]["n"], r["clean"]["correct"])]


def chunks_and_integrity(out: Path) -> tuple[int, str]:
    with sqlite3.connect(f"file:{out / 'results.sqlite'}?mode=ro", uri=True) as con:
        return (int(con.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]),
                con.execute("PRAGMA integrity_check").fetchone()[0])


def _run(cmd: list[str]) -> bool:
    return subprocess.run(cmd, capture_output=True, check=False).returncode == 0


@pytest.fixture()
def mountpoint(tmp_path: Path) -> Iterator[Path]:
    """A folder we may mount on (root only; skipped where mounting is not allowed, e.g. most CI runners)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small file system needs root")
    point = tmp_path / "mnt"
    point.mkdir()
    yield point
    _run(["umount", "-l", str(point)])


@pytest.mark.slow
def test_disk_full_on_a_small_tmpfs_then_resume(data: dict[str, Path], mountpoint: Path) -> None:
    if not _run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mountpoint)]):
        pytest.skip("mounting a tmpfs is not allowed here")
    code, straight, err = invoke(mce(data, data["root"] / "straight"))
    assert code == 0, err
    filler = mountpoint / "filler"
    filler.write_bytes(b"\1" * ((4096 - 160) * 1024))  # 160 KiB left: the store starts, then its log fills the disk
    out = mountpoint / "results"
    code, _, err = invoke(mce(data, out))
    one_line_error(code, err, "full")
    n, ok = chunks_and_integrity(out)
    assert ok == "ok" and 0 < n < 42, n  # failed in the middle of the run
    filler.unlink()  # the cause is fixed
    code, resumed, err = invoke(mce(data, out))
    assert code == 0, err
    assert counts(resumed) == counts(straight)
    assert chunks_and_integrity(out) == (42, "ok")


def test_simulated_sqlite_full_then_resume(data: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Where no small file system can be mounted: SQLite's own SQLITE_FULL, from a page limit on the connection."""
    from attnprobe.store import connection

    code, straight, err = invoke(mce(data, data["root"] / "straight"))
    assert code == 0, err
    out = data["root"] / "results"
    ResultsStore(out).close()
    real_connect = connection.connect

    def limited(*args: object, **kwargs: object) -> sqlite3.Connection:
        db = real_connect(*args, **kwargs)
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count = {pages + 1}")  # room for a few chunks, not for 42
        return db

    monkeypatch.setattr(connection, "connect", limited)
    code, _, err = invoke(mce(data, out))
    one_line_error(code, err, "is full (database or disk is full)")
    n, ok = chunks_and_integrity(out)
    assert ok == "ok" and 0 < n < 42, n
    monkeypatch.setattr(connection, "connect", real_connect)
    code, resumed, err = invoke(mce(data, out))
    assert code == 0, err
    assert counts(resumed) == counts(straight)


def _make_read_only(folder: Path) -> None:
    if os.geteuid() != 0:
        for p in folder.iterdir():
            p.chmod(0o444)
        folder.chmod(0o555)
    elif not (_run(["mount", "--bind", str(folder), str(folder)])
              and _run(["mount", "-o", "remount,bind,ro", str(folder)])):
        pytest.skip("root ignores permissions and a read-only bind mount is not allowed here")


def _make_writable(folder: Path) -> None:
    if os.geteuid() != 0:
        folder.chmod(0o755)
        for p in folder.iterdir():
            p.chmod(0o644)
    else:
        _run(["umount", str(folder)])


def test_read_only_results_folder_then_resume(data: dict[str, Path]) -> None:
    out = data["root"] / "ro"
    part = mce(data, out)
    part[part.index("gaussian_noise") - 1:part.index("gaussian_noise") + 1] = []  # fog only, for now
    code, _, err = invoke(part)
    assert code == 0, err
    _make_read_only(out)
    try:
        before = (out / "results.sqlite").read_bytes()
        code, _, err = invoke(mce(data, out))
        one_line_error(code, err, "cannot write")
        code, _, err = invoke(mce(data, out / "new"))  # a new store inside it
        one_line_error(code, err, "cannot write")
        code, _, err = invoke(["stability", "--model", "tiny_vit", "--ckpt", "-", "--n", "1", "--out", str(out)])
        one_line_error(code, err, "cannot write")  # before the model is loaded
        assert (out / "results.sqlite").read_bytes() == before
    finally:
        _make_writable(out)
    code, resumed, err = invoke(mce(data, out))
    assert code == 0, err
    cells = json.loads(resumed)["results"][0]["cells"]
    assert [c["cached"] for c in cells] == [c["corruption"] == "fog" for c in cells]
    code, straight, err = invoke(mce(data, data["root"] / "straight"))
    assert counts(resumed) == counts(straight)


def test_store_locked_by_another_program(data: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    clean = ["clean", "--model", "tiny_vit", "--data", str(data["val"]), "--workers", "0", "--json"]
    out = data["root"] / "locked"
    code, first, err = invoke([*clean, "--out", str(out)])
    assert code == 0, err
    monkeypatch.setenv("ATTNPROBE_STORE_TIMEOUT", "1")
    other = sqlite3.connect(out / "results.sqlite", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # e.g. a sqlite3 shell with an open transaction
    try:
        code, _, err = invoke([*clean, "--out", str(out), "--fresh"])
        one_line_error(code, err, "locked by another program for more than 1 s")
    finally:
        other.execute("ROLLBACK")
        other.close()
    code, again, err = invoke([*clean, "--out", str(out), "--fresh"])
    assert code == 0, err
    assert json.loads(again)["results"][0]["correct"] == json.loads(first)["results"][0]["correct"]


def test_a_full_disk_outside_the_store_is_one_line_too(capsys: pytest.CaptureFixture[str]) -> None:
    """Figures, caches, bundled photos: a full or read-only disk met anywhere by a command is no traceback."""
    import errno

    import typer

    from attnprobe.cli._common import user_errors

    @user_errors
    def save_figure() -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "/scratch/report/fig5.pdf")

    with pytest.raises(typer.Exit) as exit_info:
        save_figure()
    err = capsys.readouterr().err
    assert exit_info.value.exit_code == 2
    one_line_error(2, err, "No space left on device (/scratch/report/fig5.pdf)")

    @user_errors
    def bug() -> None:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "x")

    with pytest.raises(FileNotFoundError):  # other OS errors are not hidden
        bug()
