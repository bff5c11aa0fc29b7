"""Planning a run: the state of every cell when the run starts (its size, chunks, what is already committed).

Rank 0 reads the store (committed chunks, finished cells), checks that they fit this run (same chunk size and sample
list), and every rank receives the same plan. Which chunks this process then computes is decided as it goes
(`claims.py`: other processes may share the store); within a chunk, samples are dealt out `index % world == rank`
(no sample twice, no padding, unlike `DistributedSampler`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from attnprobe import distributed as D
from attnprobe.engine.cells import CellSpec
from attnprobe.errors import UserError
from attnprobe.store import CellKey, ResultsStore

__all__ = ["CellPlan", "plan_cells"]


@dataclass
class CellPlan:
    """One cell's state at the start of a run."""

    n: int  # samples in the cell
    n_chunks: int
    done: list[int] = field(default_factory=list)  # chunks already committed
    finished: bool = False  # `finish_cell` was called in an earlier run

    def samples_done(self, chunk_size: int) -> int:
        return sum(min(chunk_size, self.n - c * chunk_size) for c in self.done)


def _chunk_rows(store: ResultsStore, key: CellKey) -> dict[int, tuple[int, int]]:
    where = " AND ".join(f"{c} = ?" for c in ("model", "checkpoint_sha256", "task", "dataset", "preprocessing",
                                               "condition", "severity"))
    rows = store.query(f"SELECT chunk, n, skipped FROM chunks WHERE {where}", key.as_tuple())
    return {int(r[0]): (int(r[1]), int(r[2])) for r in rows}


def _plan_on_main(cells: Sequence[CellSpec], store: ResultsStore | None, chunk_size: int, fresh: bool,
                  sizes: list[int]) -> list[CellPlan]:
    """Rank 0 decides, per cell, which chunks are still to compute (and clears cells for `fresh`)."""
    plan = []
    for spec, n in zip(cells, sizes):
        p = CellPlan(n=n, n_chunks=math.ceil(n / chunk_size))
        if store is not None:
            if fresh:
                store.clear_cell(spec.key)
            rows = _chunk_rows(store, spec.key)
            for c, (cn, cs) in rows.items():
                expect = min(chunk_size, n - c * chunk_size)
                if c >= p.n_chunks or cn + cs != expect:
                    raise UserError(
                        f"the results store holds chunks of {spec.key.condition} severity {spec.key.severity} made "
                        f"with another chunk size or sample list (chunk {c}: {cn + cs} samples, expected {expect}); "
                        f"rerun with --fresh to recompute this cell")
            p.done = sorted(rows)
            p.finished = store.is_cell_done(spec.key)
        plan.append(p)
    return plan


def plan_cells(cells: Sequence[CellSpec], store: ResultsStore | None, chunk_size: int, fresh: bool
               ) -> list[CellPlan]:
    """The plan of every cell, decided on rank 0 and identical on every rank.

    Raises:
        UserError: a rank sees other cells or sample counts than rank 0, or the store holds chunks of another
            chunk size or sample list.
    """
    sizes = [len(spec.dataset) for spec in cells]
    mine = [(spec.key.as_tuple(), n) for spec, n in zip(cells, sizes)]
    plan = _plan_on_main(cells, store, chunk_size, fresh, sizes) if D.is_main() else None
    plan, theirs = D.broadcast_object((plan, mine))
    if theirs != mine:
        raise UserError(f"rank {D.rank()} sees different cells or sample counts than rank 0; every rank must read "
                        f"the same data tree (same path, same files)")
    return plan
