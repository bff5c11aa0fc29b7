"""The results store: chunks are atomic and never counted twice; cells, diagnostics and artifacts round-trip."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from attnprobe.errors import UserError
from attnprobe.store import CellKey, ChunkCounts, DiagKey, ResultsStore

KEY = CellKey("fan_b", "abc", "imagenet_c", "ds1", "pre1", "gaussian_noise", 3)


def test_chunks_sum_and_cell_completion(tmp_path: Path) -> None:
    with ResultsStore(tmp_path) as store:
        store.add_chunk(KEY, 0, ChunkCounts(n=10, correct=7, extra={"flips": 2}))
        store.add_chunk(KEY, 1, ChunkCounts(n=5, correct=1, skipped=1, extra={"flips": 1}))
        assert store.done_chunks(KEY) == {0, 1}
        assert not store.is_cell_done(KEY)
        with pytest.raises(RuntimeError, match="missing"):
            store.finish_cell(KEY, n_chunks=3)
        store.finish_cell(KEY, n_chunks=2)
        (cell,) = store.cells(task="imagenet_c")
        assert (cell["n"], cell["correct"], cell["skipped"], cell["extra"]) == (15, 8, 1, {"flips": 3})


def test_a_chunk_is_never_counted_twice(tmp_path: Path) -> None:
    with ResultsStore(tmp_path) as store:
        store.add_chunk(KEY, 0, ChunkCounts(n=10, correct=7))
        with pytest.raises(sqlite3.IntegrityError):
            store.add_chunk(KEY, 0, ChunkCounts(n=10, correct=7))
        assert store.cell_totals(KEY).n == 10


def test_store_survives_reopen_and_readonly(tmp_path: Path) -> None:
    with ResultsStore(tmp_path) as store:
        store.add_chunk(KEY, 0, ChunkCounts(n=3, correct=3))
    with ResultsStore(tmp_path, readonly=True) as ro:
        assert ro.done_chunks(KEY) == {0}
        with pytest.raises(sqlite3.OperationalError):
            ro.add_chunk(KEY, 1, ChunkCounts(n=1, correct=1))
    with pytest.raises(UserError, match="no results store"):
        ResultsStore(tmp_path / "elsewhere", readonly=True)


def test_clear_cell_only_touches_that_cell(tmp_path: Path) -> None:
    other = CellKey("fan_b", "abc", "imagenet_c", "ds1", "pre1", "gaussian_noise", 4)
    with ResultsStore(tmp_path) as store:
        for k in (KEY, other):
            store.add_chunk(k, 0, ChunkCounts(n=1, correct=1))
            store.finish_cell(k, 1)
        store.clear_cell(KEY)
        assert [c["severity"] for c in store.cells()] == [4]


def test_diagnostics_and_artifacts(tmp_path: Path) -> None:
    dk = DiagKey("fan_b", "abc", "attention_cosine", "samples", "gaussian_noise", 3)
    with ResultsStore(tmp_path) as store:
        store.add_diagnostics(dk, [("img0", 0, 0, 0.5), ("img0", 0, 1, 0.25)])
        assert store.diagnostic_images(dk) == {"img0"}
        with pytest.raises(sqlite3.IntegrityError):
            store.add_diagnostics(dk, [("img0", 0, 0, 0.5)])
        assert [r["value"] for r in store.diagnostics(metric="attention_cosine")] == [0.5, 0.25]
        f = tmp_path / "maps" / "a.npz"
        f.parent.mkdir()
        f.write_bytes(b"x")
        store.add_artifact("fan_b", "abc", "attention_maps", "samples", "clean", 0, "img0", f, {"layers": 2})
        (art,) = store.artifacts(kind="attention_maps")
        assert art["path"] == "maps/a.npz" and Path(art["abspath"]).is_file() and art["meta"] == {"layers": 2}
        store.register_model("fan_b", "abc", "/x.pth", {"paper": {"mce": 46.1}})
        assert store.model_card("fan_b", "abc")["paper"]["mce"] == 46.1
