"""Store files a command cannot use, through the CLI: each is refused with one line and exit code 2 before any
model is loaded, and nothing is written into a file that is not an attnprobe store. Old stores are upgraded."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from attnprobe.cli import app
from attnprobe.store import APPLICATION_ID, SCHEMA_VERSION, CellKey, ChunkCounts, ResultsStore
from tests.imagenet_c_fixtures import make_class_tree, make_imagenet_c_tree, make_models_dir

runner = CliRunner()


@pytest.fixture()
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    monkeypatch.setenv("ATTNPROBE_MODELS_DIR", str(make_models_dir(tmp_path / "models")))
    return {"root": tmp_path, "val": make_class_tree(tmp_path / "val", per_class=1),
            "inc": make_imagenet_c_tree(tmp_path / "inc", corruptions=("fog",), severities=(1,), per_class=1)}


def command(name: str, data: dict[str, Path], out: Path) -> list[str]:
    """A small, valid invocation of `name` writing to (or reading from) `out`."""
    model = ["--model", "tiny_vit"]
    return {
        "mce": ["mce", *model, "--data", str(data["inc"]), "-c", "fog", "-s", "1", "--workers", "0",
                "--out", str(out)],
        "clean": ["clean", *model, "--data", str(data["val"]), "--workers", "0", "--out", str(out)],
        "stability": ["stability", *model, "--ckpt", "-", "--n", "1", "--out", str(out)],
        "heads": ["heads", *model, "--ckpt", "-", "--n", "1", "--out", str(out)],
        "report": ["report", str(out), "--out", str(data["root"] / "report")],
    }[name]


def invoke(args: list[str]) -> tuple[int, str, str]:
    res = runner.invoke(app, args)
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.stdout, res.stderr


def refused(args: list[str], match: str) -> None:
    code, _, err = invoke(args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and match in lines[0], err


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def a_store(folder: Path) -> Path:
    with ResultsStore(folder) as s:
        key = CellKey("m", "sha", "clean", "ds", "pre", "clean", 0)
        for c in range(40):  # some pages, so that truncating or garbling hits table data
            s.add_chunk(key, c, ChunkCounts(n=100, correct=c, extra={"pad": "x" * 200}))
    return folder / "results.sqlite"


@pytest.mark.parametrize("cmd", ["mce", "stability", "report"])
def test_out_that_is_a_file(data: dict[str, Path], cmd: str) -> None:
    f = data["root"] / "notes.txt"
    f.write_text("my notes")
    refused(command(cmd, data, f), "no results store at" if cmd == "report" else "is a file, not a folder")
    assert f.read_text() == "my notes"


@pytest.mark.parametrize("cmd", ["mce", "stability", "report"])
def test_foreign_sqlite_file_is_never_written(data: dict[str, Path], cmd: str) -> None:
    folder = data["root"] / "other"
    folder.mkdir()
    db = folder / "results.sqlite"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE people (name TEXT)")
        con.execute("INSERT INTO people VALUES ('ada')")
    before = digest(db)
    refused(command(cmd, data, folder), "SQLite database of another program (people)")
    assert digest(db) == before
    with sqlite3.connect(db) as con:
        assert [r[0] for r in con.execute("SELECT name FROM sqlite_master")] == ["people"]
    assert sorted(p.name for p in folder.iterdir()) == ["results.sqlite"]


@pytest.mark.parametrize("cmd", ["clean", "report"])
def test_truncated_store(data: dict[str, Path], cmd: str) -> None:
    db = a_store(data["root"] / "store")
    raw = db.read_bytes()
    db.write_bytes(raw[:len(raw) // 2 + 100])  # cut mid-page, as a full disk during a copy would
    before = digest(db)
    refused(command(cmd, data, db.parent), "is truncated or garbled")
    assert digest(db) == before


@pytest.mark.parametrize("cmd", ["heads", "mce", "report"])
def test_garbled_store(data: dict[str, Path], cmd: str) -> None:
    db = a_store(data["root"] / "store")
    raw = bytearray(db.read_bytes())
    raw[100:] = os.urandom(len(raw) - 100)  # the header survives, every page is noise
    db.write_bytes(bytes(raw))
    before = digest(db)
    refused(command(cmd, data, db.parent), "is damaged")
    assert digest(db) == before


@pytest.mark.parametrize("content", [b"", b"not a database at all" * 10])
def test_empty_or_other_file_named_like_a_store(data: dict[str, Path], content: bytes) -> None:
    folder = data["root"] / "odd"
    folder.mkdir()
    (folder / "results.sqlite").write_bytes(content)
    refused(command("clean", data, folder), "not")
    assert (folder / "results.sqlite").read_bytes() == content


def test_store_written_before_the_application_id_is_upgraded_in_place(data: dict[str, Path]) -> None:
    """A schema-1 store (no application id, no leases table) is recognised, read as is, and upgraded on write."""
    out = data["root"] / "old"
    code, stdout, err = invoke(command("clean", data, out) + ["--json"])
    assert code == 0, err
    first = json.loads(stdout)["results"][0]
    db = out / "results.sqlite"
    with sqlite3.connect(db) as con:  # make it exactly what attnprobe wrote before schema 2
        con.execute("DROP TABLE leases")
        con.execute("PRAGMA application_id = 0")
        con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
        con.execute("DELETE FROM meta WHERE key = 'application'")
    code, _, err = invoke(command("report", data, out))
    assert code == 0, err
    with sqlite3.connect(db) as con:  # reading did not upgrade it
        assert con.execute("PRAGMA application_id").fetchone()[0] == 0
    code, stdout, err = invoke(command("mce", data, out) + ["--json"])
    assert code == 0, err
    again = invoke(command("clean", data, out) + ["--json"])
    assert again[0] == 0 and json.loads(again[1])["results"][0]["correct"] == first["correct"]
    assert json.loads(again[1])["results"][0]["cached"]
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
        assert "leases" in {r[0] for r in con.execute("SELECT name FROM sqlite_master")}


def test_store_of_a_newer_attnprobe_is_refused(data: dict[str, Path]) -> None:
    db = a_store(data["root"] / "new")
    with sqlite3.connect(db) as con:
        con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    refused(command("stability", data, db.parent), "newer attnprobe")
