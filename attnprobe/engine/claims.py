"""Which chunks this run computes next, so that any number of attnprobe processes can share one results store.

A chunk is *claimed* before it is computed: rank 0 takes a lease on it in the store (`ResultsStore.claim_chunk`), so
another process working on the same cells (a second array job, a second terminal) skips it and computes other
chunks; the lease expires if this process dies, and the chunk is then taken over. Every rank receives the same claims
(one broadcast per chunk under torchrun) and computes its share of each chunk.

The DataLoader asks for batch indices ahead of the model (`prefetch_factor x workers` batches), so the claims must
stay ahead of it: before a chunk starts, rank 0 claims until every rank has more than that many batches queued
behind the chunk, or marks the end of the *pass* when nothing more can be claimed now. A pass's loader stops at that
mark. Passes repeat while chunks of the run's cells are missing: when the rest is leased by other live processes,
rank 0 polls until they commit (or their leases expire and the chunks can be claimed); the run ends when every
chunk of every cell is committed, by this process or another.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from typing import Literal

import torch

from attnprobe import distributed as D
from attnprobe.engine.cells import CellSpec
from attnprobe.engine.loader import Chunk
from attnprobe.engine.plan import CellPlan
from attnprobe.engine.progress import ProgressHook
from attnprobe.store import ResultsStore
from attnprobe.store.leases import lease_seconds

__all__ = ["ChunkQueue", "read_ahead"]

_END = None  # in `ChunkQueue.items`: the end of a pass


def read_ahead(loader_kwargs: dict) -> int:
    """How many batches a DataLoader with these settings asks for beyond the one being consumed."""
    workers = int(loader_kwargs.get("num_workers", 0))
    return int(loader_kwargs.get("prefetch_factor") or 2) * workers if workers > 0 else 0


def _batches(size: int, rank: int, world: int, batch_size: int) -> int:
    return math.ceil(len(range(rank, size, world)) / batch_size)


class _Claimer:
    """Rank 0's side: claims chunks in cell order from the store (or, without a store, simply hands them out)."""

    def __init__(self, cells: Sequence[CellSpec], plan: Sequence[CellPlan], store: ResultsStore | None,
                 chunk_size: int, hook: ProgressHook) -> None:
        self.keys = [c.key for c in cells]
        self.plan, self.store, self.chunk_size, self.hook = plan, store, chunk_size, hook
        self.known = [set(p.done) for p in plan]  # committed chunks this process knows of
        self.handed: list[set[int]] = [set() for _ in plan]  # claimed by this process
        self.complete = [len(p.done) >= p.n_chunks for p in plan]
        self.cursor = 0

    def _size(self, ci: int, chunk: int) -> int:
        return min(self.chunk_size, self.plan[ci].n - chunk * self.chunk_size)

    def note(self, ci: int, committed: set[int]) -> None:
        """Learn which chunks are committed; those computed by other processes advance the progress bar."""
        for c in committed - self.known[ci]:
            if c not in self.handed[ci]:
                self.hook.advance(self._size(ci, c))
        self.known[ci] |= committed
        self.complete[ci] = len(self.known[ci]) >= self.plan[ci].n_chunks

    def claim(self) -> tuple[int, int] | None:
        """The next (cell, chunk) this process computes, or None when nothing is free right now."""
        while self.cursor < len(self.keys):
            ci = self.cursor
            if not self.complete[ci]:
                if self.store is None:
                    free = [c for c in range(self.plan[ci].n_chunks) if c not in self.known[ci] | self.handed[ci]]
                    chunk = free[0] if free else None
                else:
                    chunk, states = self.store.claim_chunk(self.keys[ci], self.plan[ci].n_chunks)
                    self.note(ci, states.committed)
                if chunk is not None:
                    self.handed[ci].add(chunk)
                    return ci, chunk
            self.cursor += 1
        return None

    def status(self) -> tuple[Literal["done", "free", "wait"], str]:
        """Between passes: every chunk committed ("done"), a chunk free to claim ("free"), or chunks leased by
        other live processes ("wait", with a description for the user)."""
        self.cursor = 0
        if self.store is None:
            return ("done", "") if all(len(h | k) >= p.n_chunks for h, k, p in zip(self.handed, self.known, self.plan)
                                       ) else ("free", "")
        waiting = []
        for ci, key in enumerate(self.keys):
            if self.complete[ci]:
                continue
            states = self.store.chunk_states(key)
            self.note(ci, states.committed)
            if self.complete[ci]:
                continue
            if states.open_chunks(self.plan[ci].n_chunks):
                return "free", ""
            owners = {o.split("|")[0] + " pid " + o.split("|")[2] if o.count("|") == 3 else o
                      for o in states.leased.values()}
            waiting.append(f"{self.plan[ci].n_chunks - len(states.committed)} chunk(s) of {key.label()} "
                           f"(by {', '.join(sorted(owners))})")
        return ("wait", "; ".join(waiting[:3]) + (" ..." if len(waiting) > 3 else "")) if waiting else ("done", "")


class ChunkQueue:
    """The chunks this run computes, in order, identical on every rank; also the DataLoader's batch sampler.

    Collective calls (every rank, same order): the constructor, `next_pass`, `next_chunk`.
    """

    def __init__(self, cells: Sequence[CellSpec], plan: Sequence[CellPlan], store: ResultsStore | None,
                 chunk_size: int, batch_size: int, ahead: int, hook: ProgressHook) -> None:
        self.plan, self.chunk_size, self.batch_size, self.hook = plan, chunk_size, batch_size, hook
        self.rank, self.world = D.rank(), D.world_size()
        self.offsets = [0]
        for p in plan:
            self.offsets.append(self.offsets[-1] + p.n)
        self.ahead = self._gather(ahead)
        self.items: list[Chunk | None] = []
        self.consumed = 0  # items handed to the loop so far
        self.ended = True  # no pass open
        self._claimer = _Claimer(cells, plan, store, chunk_size, hook) if D.is_main() else None
        self.poll_s = min(2.0, lease_seconds() / 4)

    def _gather(self, ahead: int) -> list[int]:
        """Every rank's read-ahead (ranks on other nodes may run more loader workers)."""
        if self.world == 1:
            return [ahead]
        mine = torch.zeros(self.world, dtype=torch.float64)
        mine[self.rank] = ahead
        return [int(v) for v in D.all_reduce_sum(mine).tolist()]

    def samples_left(self) -> int:
        """Samples of the chunks not committed when the run started (others may compute some of them)."""
        return sum(p.n - p.samples_done(self.chunk_size) for p in self.plan)

    # -- the loop's side ------------------------------------------------------------------------------------------
    def next_pass(self) -> bool:
        """Open a pass with fresh claims; False once every chunk of every cell is committed. Collective."""
        told = False
        while True:
            msg = self._open_pass(told) if self._claimer is not None else None
            kind, new, end = D.broadcast_object(msg)
            if kind == "done":
                return False
            if kind == "go":
                self._append(new, end)
                return True
            told = told or kind == "wait"

    def next_chunk(self) -> Chunk | None:
        """The next chunk of the open pass, claims kept ahead of the loader; None at the pass's end. Collective."""
        if not self.ended:
            new, end = D.broadcast_object(self._top_up() if self._claimer is not None else None)
            self._append(new, end)
        item = self.items[self.consumed]
        self.consumed += 1
        return item

    def committed(self, ci: int, chunk: int) -> None:
        """This process committed (or found committed) `chunk` of cell `ci` (rank 0)."""
        if self._claimer is not None:
            self._claimer.note(ci, {chunk})

    def cell_complete(self, ci: int) -> bool:
        """Whether rank 0 knows every chunk of cell `ci` to be committed (False on other ranks)."""
        return self._claimer is not None and self._claimer.complete[ci]

    def batches(self) -> _PassBatches:
        """The batch sampler of the pass just opened."""
        return _PassBatches(self, self.consumed)

    # -- rank 0 --------------------------------------------------------------------------------------------------
    def _open_pass(self, told: bool) -> tuple[str, list[tuple[int, int]], bool]:
        assert self._claimer is not None
        self._claimer.cursor = 0
        new, end = self._top_up()
        if new:
            return "go", new, end
        state, what = self._claimer.status()
        if state == "wait":
            if not told:
                self.hook.warn(f"waiting for {what}: another attnprobe process is computing them (its lease expires "
                               f"{lease_seconds():g} s after it stops)")
            time.sleep(self.poll_s)
        return state, [], True

    def _top_up(self) -> tuple[list[tuple[int, int]], bool]:
        """Claim until the loader cannot run dry before the next top-up; `True` = nothing more to claim now."""
        assert self._claimer is not None
        new: list[tuple[int, int]] = []
        while not self._ahead_enough(new):
            got = self._claimer.claim()
            if got is None:
                return new, True
            new.append(got)
        return new, False

    def _ahead_enough(self, new: list[tuple[int, int]]) -> bool:
        sizes = [ch.size for ch in self.items[self.consumed:] if ch is not None]
        sizes += [min(self.chunk_size, self.plan[ci].n - c * self.chunk_size) for ci, c in new]
        if not sizes:
            return False
        for r, ahead in enumerate(self.ahead):
            # NOTE: while the first chunk is consumed, the loader may already ask for `ahead` batches behind it
            if ahead and sum(_batches(s, r, self.world, self.batch_size) for s in sizes[1:]) <= ahead:
                return False
        return True

    def _append(self, new: list[tuple[int, int]], end: bool) -> None:
        for ci, c in new:
            start, stop = self.offsets[ci] + c * self.chunk_size, min(self.offsets[ci + 1],
                                                                      self.offsets[ci] + (c + 1) * self.chunk_size)
            self.items.append(Chunk(ci, c, stop - start, D.shard(range(start, stop), self.rank, self.world),
                                    self.batch_size))
        if end:
            self.items.append(_END)
        self.ended = end


class _PassBatches:
    """One pass's batch sampler: this rank's batches of every queued chunk, in order, up to the end of the pass."""

    def __init__(self, queue: ChunkQueue, start: int) -> None:
        self.queue, self.start = queue, start

    def __iter__(self) -> Iterator[list[int]]:
        i = self.start
        while True:
            if i >= len(self.queue.items):
                raise RuntimeError("attnprobe internal error: the data loader read past the claimed chunks; please "
                                   "report this with the command line")
            ch = self.queue.items[i]
            i += 1
            if ch is None:
                return
            for b in ch.batches():
                yield list(b)
