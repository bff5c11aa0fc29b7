"""The generic evaluation loop (attnprobe.engine.run_cells): exact counts, resume, skipping, scorers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from attnprobe.errors import UserError
from attnprobe.engine import CellSpec, ProgressHook, Scorer, restricted_top1_scorer, run_cells
from attnprobe.store import CellKey, ResultsStore


class OneHotSet(torch.utils.data.Dataset):
    """Inputs are the logits themselves: sample i is right iff `i % 3 != 0` (known answer: n - ceil(n/3) correct)."""

    def __init__(self, n: int, bad: tuple[int, ...] = ()) -> None:
        self.n, self.bad = n, set(bad)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, bool]:
        y = i % 10
        pred = y if i % 3 else (y + 1) % 10
        return torch.nn.functional.one_hot(torch.tensor(pred), 10).float(), y, i not in self.bad

    def sample_name(self, i: int) -> str:
        return f"item{i}"


def expected_correct(n: int, bad: tuple[int, ...] = ()) -> int:
    return sum(1 for i in range(n) if i % 3 and i not in bad)


def key(cond: str, sev: int = 1) -> CellKey:
    return CellKey("identity", "random-init", "test", "onehot", "none", cond, sev)


def test_counts_are_exact_across_cells_and_batches(tmp_path: Path) -> None:
    cells = [CellSpec(key("a"), OneHotSet(23)), CellSpec(key("b"), OneHotSet(7)), CellSpec(key("c"), OneHotSet(40))]
    with ResultsStore(tmp_path) as store:
        res = run_cells(nn.Identity(), cells, store, batch_size=4, workers=0, chunk_size=5)
        assert [r.n for r in res] == [23, 7, 40]
        assert [r.correct for r in res] == [expected_correct(23), expected_correct(7), expected_correct(40)]
        assert [r.n_chunks for r in res] == [5, 2, 8]
        assert all(store.is_cell_done(c.key) for c in cells)
        assert len(store.cells(task="test")) == 3
    # in-memory run (no store) gives the same totals, with loader workers
    res2 = run_cells(nn.Identity(), cells, None, batch_size=3, workers=1, chunk_size=7)
    assert [(r.n, r.correct) for r in res2] == [(r.n, r.correct) for r in res]


def test_rerun_skips_finished_cells_and_fresh_recomputes(tmp_path: Path) -> None:
    cells = [CellSpec(key("a"), OneHotSet(12))]
    with ResultsStore(tmp_path) as store:
        first = run_cells(nn.Identity(), cells, store, batch_size=4, workers=0, chunk_size=5)[0]
        again = run_cells(nn.Identity(), cells, store, batch_size=4, workers=0, chunk_size=5)[0]
        assert first.computed_chunks == 3 and again.computed_chunks == 0 and again.cached
        assert (again.n, again.correct) == (first.n, first.correct)
        fresh = run_cells(nn.Identity(), cells, store, batch_size=4, workers=0, chunk_size=5, fresh=True)[0]
        assert fresh.computed_chunks == 3 and (fresh.n, fresh.correct) == (first.n, first.correct)
        assert len(store.query("SELECT * FROM chunks")) == 3


class Crash(Exception):
    pass


def crashing_scorer(after_batches: int) -> Scorer:
    seen = {"n": 0}

    def fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        seen["n"] += 1
        if seen["n"] > after_batches:
            raise Crash
        return {"correct": (model(x).argmax(1) == y).sum()}

    return Scorer(fn)


def test_interrupted_run_resumes_without_double_counting(tmp_path: Path) -> None:
    cells = [CellSpec(key("a"), OneHotSet(30)), CellSpec(key("b"), OneHotSet(17))]
    with ResultsStore(tmp_path) as store:
        with pytest.raises(Crash):  # dies in the middle of chunk 3 of cell "a" (batches of 2, chunks of 4)
            run_cells(nn.Identity(), cells, store, batch_size=2, workers=0, chunk_size=4, scorer=crashing_scorer(5))
        assert store.done_chunks(cells[0].key) == {0, 1}
        assert not store.is_cell_done(cells[0].key)
        res = run_cells(nn.Identity(), cells, store, batch_size=2, workers=0, chunk_size=4)
        assert res[0].computed_chunks == 6 and res[1].computed_chunks == 5
        assert [(r.n, r.correct) for r in res] == [(30, expected_correct(30)), (17, expected_correct(17))]


def test_changed_chunk_size_is_refused(tmp_path: Path) -> None:
    cells = [CellSpec(key("a"), OneHotSet(30))]
    with ResultsStore(tmp_path) as store:
        with pytest.raises(Crash):
            run_cells(nn.Identity(), cells, store, batch_size=2, workers=0, chunk_size=4, scorer=crashing_scorer(3))
        with pytest.raises(UserError, match="--fresh"):
            run_cells(nn.Identity(), cells, store, batch_size=2, workers=0, chunk_size=8)


def test_unreadable_samples_are_skipped_and_counted_or_fail_with_strict(tmp_path: Path) -> None:
    warnings: list[str] = []

    class Hook(ProgressHook):
        def warn(self, message: str) -> None:
            warnings.append(message)

    bad = (2, 9)
    cells = [CellSpec(key("a"), OneHotSet(12, bad=bad))]
    res = run_cells(nn.Identity(), cells, None, batch_size=4, workers=0, chunk_size=5, progress=Hook())[0]
    assert (res.n, res.skipped, res.correct) == (10, 2, expected_correct(12, bad))
    assert res.skipped_samples == ["item2", "item9"] and len(warnings) == 2
    with ResultsStore(tmp_path) as store:
        with pytest.raises(UserError, match="item2"):
            run_cells(nn.Identity(), cells, store, batch_size=4, workers=0, chunk_size=5, strict=True)
        assert store.done_chunks(cells[0].key) == set()


def test_custom_scorer_fields_go_to_extra(tmp_path: Path) -> None:
    def fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        logits = model(x)
        return {"correct": (logits.argmax(1) == y).sum(), "label_sum": y.sum(), "half": 0.5 * len(y)}

    scorer = Scorer(fn, fields=("correct", "label_sum", "half"))
    with ResultsStore(tmp_path) as store:
        res = run_cells(nn.Identity(), [CellSpec(key("a"), OneHotSet(13))], store, batch_size=4, workers=0,
                        chunk_size=5, scorer=scorer)[0]
    assert res.correct == expected_correct(13)
    assert res.extra == {"label_sum": sum(i % 10 for i in range(13)), "half": 6.5}


def test_restricted_scorer_uses_only_the_subset_logits() -> None:
    class Fixed(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = torch.zeros(len(x), 10)
            logits[:, 0] = 10.0  # the overall argmax is 0, outside the subset
            logits[:, 7] = 5.0  # the argmax within the subset [3, 7] is position 1
            return logits

    class Ds(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 6

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            return torch.zeros(1), i % 2  # positions within the subset

    res = run_cells(Fixed(), [CellSpec(key("a"), Ds())], None, batch_size=4, workers=0,
                    scorer=restricted_top1_scorer([3, 7]))[0]
    assert (res.n, res.correct) == (6, 3)
