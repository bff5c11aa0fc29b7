"""The results store: chunks are atomic and never counted twice; cells, diagnostics and artifacts round-trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from attnprobe.errors import UserError
from attnprobe.store import CellKey, ChunkCounts, DiagKey, ResultsStore, StoreConflictError

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
    """The same chunk again (another process computed it too) is a no-op; other numbers are refused."""
    with ResultsStore(tmp_path) as store:
        assert store.add_chunk(KEY, 0, ChunkCounts(n=10, correct=7, extra={"flips": 2}))
        assert not store.add_chunk(KEY, 0, ChunkCounts(n=10, correct=7, extra={"flips": 2}))
        with pytest.raises(StoreConflictError, match="chunk 0 of fan_b/imagenet_c/gaussian_noise-s3"):
            store.add_chunk(KEY, 0, ChunkCounts(n=10, correct=6, extra={"flips": 2}))
        with pytest.raises(StoreConflictError):
            store.add_chunk(KEY, 0, ChunkCounts(n=10, correct=7, extra={"flips": 3}))
        assert store.cell_totals(KEY) == ChunkCounts(n=10, correct=7, extra={"flips": 2})


def test_store_survives_reopen_and_readonly(tmp_path: Path) -> None:
    with ResultsStore(tmp_path) as store:
        store.add_chunk(KEY, 0, ChunkCounts(n=3, correct=3))
    with ResultsStore(tmp_path, readonly=True) as ro:
        assert ro.done_chunks(KEY) == {0}
        with pytest.raises(UserError, match="cannot write"):
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
        assert store.add_diagnostics(dk, [("img0", 0, 0, 0.5), ("img0", 0, 1, 0.25)]) == 2
        assert store.diagnostic_images(dk) == {"img0"}
        # a second run on the same store: stored rows keep their first value, new rows are added
        assert store.add_diagnostics(dk, [("img0", 0, 0, 0.5 + 1e-9), ("img1", 0, 0, 0.75)]) == 1
        assert [r["value"] for r in store.diagnostics(metric="attention_cosine")] == [0.5, 0.25, 0.75]
        f = tmp_path / "maps" / "a.npz"
        f.parent.mkdir()
        f.write_bytes(b"x")
        store.add_artifact("fan_b", "abc", "attention_maps", "samples", "clean", 0, "img0", f, {"layers": 2})
        (art,) = store.artifacts(kind="attention_maps")
        assert art["path"] == "maps/a.npz" and Path(art["abspath"]).is_file() and art["meta"] == {"layers": 2}
        store.register_model("fan_b", "abc", "/x.pth", {"paper": {"mce": 46.1}})
        assert store.model_card("fan_b", "abc")["paper"]["mce"] == 46.1


# -- per-sample correctness (paired bootstraps over images) -----------------------------------------------------------
def _bits_key(cond: str = "clean") -> CellKey:
    return CellKey("m", "sha", "clean", "ds", "pre", cond, 0)


def test_sample_bits_round_trip_in_chunk_order(tmp_path: Path) -> None:
    import numpy as np

    key = _bits_key()
    a = np.array([1, 0, 1, 1, 0, 0, 1, 0, 1], dtype=bool)  # 9 samples: not a multiple of 8
    b = np.array([0, 1, 1], dtype=bool)
    skip_b = np.array([False, False, True])
    with ResultsStore(tmp_path) as s:
        s.add_chunk(key, 1, ChunkCounts(n=2, correct=1, skipped=1), correct_bits=b, skipped_mask=skip_b)
        s.add_chunk(key, 0, ChunkCounts(n=9, correct=5), correct_bits=a)
        got = s.sample_correctness(key)
        assert got is not None and got.dtype == bool
        assert got.tolist() == a.tolist() + [False, True, False]  # a skipped sample reads as not correct
        assert s.sample_skipped(key).tolist() == [False] * 9 + [False, False, True]
        assert s.sample_correctness(_bits_key("other")) is None
    with ResultsStore(tmp_path, readonly=True) as s:
        assert s.sample_correctness(key).sum() == 6


def test_sample_bits_missing_on_any_chunk_gives_none(tmp_path: Path) -> None:
    import numpy as np

    key = _bits_key()
    with ResultsStore(tmp_path) as s:
        s.add_chunk(key, 0, ChunkCounts(n=3, correct=1), correct_bits=np.array([0, 1, 0], dtype=bool))
        s.add_chunk(key, 1, ChunkCounts(n=3, correct=1))  # e.g. a scorer without per-sample output
        assert s.sample_correctness(key) is None and s.sample_skipped(key) is None


def test_sample_bits_are_atomic_with_the_chunk_and_cleared(tmp_path: Path) -> None:
    import numpy as np

    key = _bits_key()
    with ResultsStore(tmp_path) as s:
        with pytest.raises(ValueError):  # wrong length: neither the counts nor the bits are written
            s.add_chunk(key, 0, ChunkCounts(n=4, correct=1), correct_bits=np.zeros(3, dtype=bool))
        assert s.done_chunks(key) == set()
        s.add_chunk(key, 0, ChunkCounts(n=2, correct=1), correct_bits=np.array([True, False]))
        with pytest.raises(StoreConflictError):  # a conflicting chunk rolls back as a whole
            s.add_chunk(key, 0, ChunkCounts(n=2, correct=2), correct_bits=np.array([True, True]))
        with pytest.raises(StoreConflictError):  # same counts, other per-sample record
            s.add_chunk(key, 0, ChunkCounts(n=2, correct=1), correct_bits=np.array([False, True]))
        assert s.sample_correctness(key).tolist() == [True, False]
        s.clear_cell(key)
        assert s.query("SELECT COUNT(*) FROM sample_bits")[0][0] == 0 and s.sample_correctness(key) is None


def test_store_without_sample_bits_table_reads_none(tmp_path: Path) -> None:
    """A store written before per-sample records existed (no `sample_bits` table), opened read-only."""
    key = _bits_key()
    with ResultsStore(tmp_path) as s:
        s.add_chunk(key, 0, ChunkCounts(n=2, correct=1))
        s.finish_cell(key, 1)
        s.query("DROP TABLE sample_bits")
    with ResultsStore(tmp_path, readonly=True) as s:
        assert s.sample_correctness(key) is None and s.cell_totals(key).correct == 1


def test_run_cells_stores_per_sample_correctness(tmp_path: Path) -> None:
    import torch
    from torch import nn

    from attnprobe.engine import CellSpec, run_cells

    class Items(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 10

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int, bool]:
            return torch.eye(4)[i % 4], i % 3, i != 6  # sample 6 unreadable

    model = nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(3, 4))  # predicts i % 4 for i % 4 < 3, class 0 for i % 4 == 3
    key = CellKey("lin", "sha", "clean", "items", "none", "clean", 0)
    with ResultsStore(tmp_path) as s:
        [r] = run_cells(model, [CellSpec(key, Items())], s, batch_size=3, workers=0, chunk_size=4)
        bits, skipped = s.sample_correctness(key), s.sample_skipped(key)
    pred = [(i % 4) if i % 4 < 3 else 0 for i in range(10)]
    want = [pred[i] == i % 3 and i != 6 for i in range(10)]
    assert bits.tolist() == want and skipped.tolist() == [i == 6 for i in range(10)]
    assert r.correct == sum(want) and r.skipped == 1


# -- recognising stores, journal modes ----------------------------------------------------------------------------
@pytest.mark.parametrize("ddl", ["", "CREATE TABLE meta (k TEXT, v TEXT)",
                                 "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"])
def test_other_sqlite_files_are_refused_untouched(tmp_path: Path, ddl: str) -> None:
    import hashlib
    import sqlite3

    from attnprobe.store import NotAStoreError

    db = tmp_path / "results.sqlite"
    with sqlite3.connect(db) as con:
        con.execute("PRAGMA user_version = 7")  # an empty database still gets a header
        if ddl:
            con.execute(ddl)
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    for readonly in (False, True):
        with pytest.raises(NotAStoreError, match="another program"):
            ResultsStore(tmp_path, readonly=readonly)
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before


def test_a_new_store_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    from attnprobe.store.files import publish_new_file

    first, second = tmp_path / "a.new", tmp_path / "b.new"
    first.write_bytes(b"first")
    second.write_bytes(b"second")
    assert publish_new_file(first, tmp_path / "results.sqlite")
    assert not publish_new_file(second, tmp_path / "results.sqlite")  # a concurrent creator lost: it uses ours
    assert (tmp_path / "results.sqlite").read_bytes() == b"first" and sorted(p.name for p in tmp_path.iterdir()) == [
        "results.sqlite"]


@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_both_journal_modes_share_a_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, journal: str) -> None:
    from attnprobe.store.files import filesystem_type, is_network_filesystem

    monkeypatch.setenv("ATTNPROBE_STORE_JOURNAL", journal)
    with ResultsStore(tmp_path) as a, ResultsStore(tmp_path) as b:
        assert a.journal_mode == b.journal_mode == journal
        assert a.claim_chunk(KEY, 2)[0] == 0 and b.claim_chunk(KEY, 2)[0] == 1
        a.add_chunk(KEY, 0, ChunkCounts(n=3, correct=2))
        b.add_chunk(KEY, 1, ChunkCounts(n=3, correct=1))
        with ResultsStore(tmp_path, readonly=True) as r:
            assert r.cell_totals(KEY) == ChunkCounts(n=6, correct=3)
    if Path("/proc/self/mountinfo").exists():
        assert filesystem_type(tmp_path) is not None and not is_network_filesystem(filesystem_type(tmp_path))
    assert is_network_filesystem("nfs4") and is_network_filesystem("lustre") and not is_network_filesystem("ext4")
