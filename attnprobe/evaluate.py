"""Evaluation drivers: one resumable, distributed loop for every counting benchmark, and the ImageNet-C driver.

The generic loop (`run_cells`) evaluates a list of *cells* (one `CellKey` + one dataset each) with a model that is
loaded once, and writes counts to the results store in fixed-size *chunks* of each cell's sorted sample list:

* resumable: each finished chunk is committed in its own transaction; a rerun skips committed chunks and finished
  cells, so a run killed at any moment (Ctrl-C, kill -9) and rerun counts every sample exactly once;
* distributed: under `torchrun`, every chunk is sharded over the ranks (`index % world == rank`, no padding), the
  counts of all ranks are summed with one all-reduce per chunk, and only rank 0 writes;
* cheap: one DataLoader for all cells (workers stay alive across cells, prefetching runs over cell boundaries),
  counts stay on the device until a chunk ends (one host sync per chunk, not per batch);
* pluggable: a `Scorer` turns a batch into sums (top-1 correct by default; e.g. logits restricted to 200 classes,
  flip counts per video, PGD with gradients).

Usage:

    from attnprobe.evaluate import CellSpec, Scorer, run_cells, top1_scorer
    from attnprobe.store import CellKey, ResultsStore
    from attnprobe.zoo import load_model

    lm = load_model("fan_b_tapadl", checkpoint="tapadl_fan_base.pth.tar")
    key = CellKey(model=lm.name, checkpoint_sha256=lm.checkpoint_sha256, task="imagenet_r",
                  dataset=ds.fingerprint, preprocessing=lm.preprocessing.key(), condition="imagenet_r")
    with ResultsStore("results/") as store:
        [res] = run_cells(lm.model, [CellSpec(key, ds)], store, batch_size=128, scorer=my_scorer)
    print(res.top1_error, res.extra)

Dataset contract: `len(ds)` samples in a fixed (sorted) order; `ds[i]` returns `(input, target)` or
`(input, target, ok)` where `ok=False` marks an unreadable sample (its input must still have the right shape, e.g.
zeros): it is left out of the scoring and counted as `skipped`. Optional `ds.sample_name(i) -> str` names a sample
in warnings. Inputs may have any shape the model/scorer accepts (images `(3, H, W)`, videos `(T, 3, H, W)`).

Scorer contract: `Scorer(fn, fields)`; `fn(model, inputs, targets) -> {field: sum over the batch}` (tensors or
numbers, on any device); `fields` lists every key `fn` returns, in a fixed order (all ranks must agree). The field
`"correct"` goes to `ChunkCounts.correct`, the others to `ChunkCounts.extra` (summed over chunks by the store).
`needs_grad=True` runs the scorer outside `torch.inference_mode` (adversarial attacks). `per_sample=True` promises
that `fn` also returns `"correct_mask"`, a boolean vector with one entry per sample of the batch (not in `fields`):
the loop then stores each chunk's per-sample correctness beside its counts (`ResultsStore.sample_correctness`), for
bootstraps paired over images. The built-in top-1 scorers do.

Drivers built on it: `evaluate_clean` (clean top-1, task "clean") and `evaluate_imagenet_c` (task "imagenet_c":
the released tree or on-the-fly corruption, one pass over all 75 cells, an `ImageNetCReport` with CE/mCE);
`imagenet_c_tables` reads the ImageNet-C results back from a store for tables and figures.

Distributed: start the same command with `torchrun`, call `attnprobe.distributed.init_from_env()` first, open the
store on rank 0 only and pass `store=None` elsewhere; `run_cells` does the rest and returns rank 0's totals on
every rank.
"""

from __future__ import annotations

import bisect
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from attnprobe import distributed as D
from attnprobe.errors import UserError
from attnprobe.store import CellKey, ChunkCounts, ResultsStore

__all__ = [
    "CHUNK_SIZE",
    "CellResult",
    "CellSpec",
    "ImageNetCReport",
    "check_imagenet_c_inputs",
    "NullProgress",
    "ProgressHook",
    "RichProgress",
    "Scorer",
    "clean_cell",
    "default_workers",
    "evaluate_clean",
    "evaluate_imagenet_c",
    "imagenet_c_tables",
    "loader_settings",
    "restricted_top1_scorer",
    "run_cells",
    "top1_scorer",
]

log = logging.getLogger(__name__)

#: Samples per committed chunk. 1000 keeps a 50k-image cell at 50 tiny transactions and loses at most ~1000 images'
#: work on a kill. A store remembers the chunk size implicitly: rerunning with another size is refused.
CHUNK_SIZE = 1000

#: How many unreadable sample names a result keeps (the count is always exact).
_MAX_SKIPPED_NAMES = 100


# ---------------------------------------------------------------------------------------------------------------
# scoring
# ---------------------------------------------------------------------------------------------------------------
ScoreFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], Mapping[str, Any]]


@dataclass(frozen=True)
class Scorer:
    """Turns one batch into sums. See the module docstring for the contract.

    Attributes:
        fn: `fn(model, inputs, targets) -> {field: batch sum}`; inputs and targets are already on the device.
        fields: every key `fn` returns, in a fixed order; `"correct"` is stored as the chunk's correct count.
        needs_grad: run outside `torch.inference_mode` (e.g. PGD needs input gradients).
        per_sample: `fn` also returns `"correct_mask"` (bool, one per sample), stored per chunk.
    """

    fn: ScoreFn
    fields: tuple[str, ...] = ("correct",)
    needs_grad: bool = False
    per_sample: bool = False


def _top1(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    hit = model(x).argmax(dim=1) == y
    return {"correct": hit.sum(), "correct_mask": hit}


#: Top-1 correct count over all logits (the default), with per-sample correctness.
top1_scorer = Scorer(_top1, per_sample=True)


def restricted_top1_scorer(indices: Sequence[int]) -> Scorer:
    """Top-1 correct count among a subset of the logits (ImageNet-A/R: 200 of 1000 classes).

    Targets are positions in `indices` (0..len(indices)-1), as ImageNet-A/R folders are labelled.
    """
    idx = torch.as_tensor(list(indices), dtype=torch.long)
    cache: dict[torch.device, torch.Tensor] = {}

    def fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = model(x)
        sel = cache.setdefault(logits.device, idx.to(logits.device))
        hit = logits.index_select(1, sel).argmax(dim=1) == y
        return {"correct": hit.sum(), "correct_mask": hit}

    return Scorer(fn, per_sample=True)


# ---------------------------------------------------------------------------------------------------------------
# cells and results
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class CellSpec:
    """One cell to evaluate: where its counts go (`key`) and its samples (`dataset`, sorted, see contract).

    `info` is stored with the finished cell (e.g. the on-the-fly recipe, whether inputs were resized).
    """

    key: CellKey
    dataset: Dataset
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class CellResult:
    """Totals of one cell after `run_cells` (from the store when there is one)."""

    key: CellKey
    n: int
    correct: int
    skipped: int
    extra: dict[str, Any]
    n_chunks: int
    computed_chunks: int
    cached: bool
    seconds: float = 0.0
    skipped_samples: list[str] = field(default_factory=list)

    @property
    def top1_accuracy(self) -> float:
        return self.correct / self.n if self.n else math.nan

    @property
    def top1_error(self) -> float:
        return 1.0 - self.correct / self.n if self.n else math.nan

    def as_dict(self) -> dict[str, Any]:
        return {"condition": self.key.condition, "severity": self.key.severity, "task": self.key.task,
                "dataset": self.key.dataset, "n": self.n, "correct": self.correct, "skipped": self.skipped,
                "top1_error": _finite(self.top1_error), "extra": self.extra, "cached": self.cached}


# ---------------------------------------------------------------------------------------------------------------
# progress
# ---------------------------------------------------------------------------------------------------------------
class ProgressHook:
    """Receives progress events; the base class ignores them (library code never prints)."""

    def start(self, n_cells: int, n_samples: int) -> None:
        """Before the first batch: cells in the run and samples still to compute (over all ranks)."""

    def cell_start(self, key: CellKey, n_samples: int, n_done: int) -> None:
        """A cell begins: its size and how many of its samples are already stored."""

    def advance(self, n_images: int) -> None:
        """A batch finished (`n_images` over all ranks, approximately)."""

    def cell_end(self, result: CellResult) -> None:
        """A cell is finished (or was already in the store)."""

    def warn(self, message: str) -> None:
        """A recoverable problem (e.g. an unreadable image that was skipped)."""


NullProgress = ProgressHook


class RichProgress(ProgressHook, AbstractContextManager):
    """A `rich` progress display on stderr: one bar over cells, one over the current cell's images, with images/s.

    Use it only where the caller decided to draw (see `attnprobe.cli._common.show_progress`):

        with RichProgress() as progress:
            run_cells(model, cells, store, progress=progress)
    """

    def __init__(self, console: Any = None, warn: Callable[[str], None] | None = None) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self._console = console or Console(stderr=True)
        self._warn = warn
        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TaskProgressColumn(), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                             TimeRemainingColumn(), console=self._console, transient=False)
        self._cells_task: Any = None
        self._img_task: Any = None
        self._t0 = 0.0
        self._seen = 0

    def __enter__(self) -> RichProgress:
        self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()

    def start(self, n_cells: int, n_samples: int) -> None:
        self._cells_task = self._bar.add_task("cells", total=n_cells, rate="")
        self._img_task = self._bar.add_task("images", total=max(n_samples, 1), rate="")
        self._t0, self._seen = time.perf_counter(), 0

    def cell_start(self, key: CellKey, n_samples: int, n_done: int) -> None:
        sev = f" s{key.severity}" if key.severity else ""
        self._bar.update(self._cells_task, description=f"{key.condition}{sev}")

    def advance(self, n_images: int) -> None:
        self._seen += n_images
        rate = self._seen / max(time.perf_counter() - self._t0, 1e-9)
        self._bar.update(self._img_task, advance=n_images, rate=f"{rate:,.0f} img/s")

    def cell_end(self, result: CellResult) -> None:
        self._bar.update(self._cells_task, advance=1)

    def warn(self, message: str) -> None:
        if self._warn is not None:
            self._warn(message)
        else:
            self._console.print(f"[yellow]warning:[/] {message}")


# ---------------------------------------------------------------------------------------------------------------
# data loader defaults
# ---------------------------------------------------------------------------------------------------------------
def default_workers(world_size: int = 1) -> int:
    """Loader worker processes per rank: min(8, CPU cores / ranks on this node).

    8 workers decode ~2-3k JPEGs/s, enough for one GPU on ImageNet-C's small 224-px files; more only costs memory.
    """
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(8, cores // max(local_world, 1)))


def loader_settings(device: torch.device, workers: int | None, world_size: int = 1) -> dict[str, Any]:
    """DataLoader keyword arguments used by `run_cells` (also used by the benchmark in `bench/`).

    Defaults and why: workers = `default_workers()`; `pin_memory` only on CUDA (page-locked buffers make the
    host-to-device copy asynchronous; on CPU they only cost memory); `prefetch_factor=4` with workers, so a slow
    JPEG does not stall the GPU; no `persistent_workers`, because one loader serves all cells of a run.
    """
    w = default_workers(world_size) if workers is None else max(0, int(workers))
    kw: dict[str, Any] = {"num_workers": w, "pin_memory": device.type == "cuda"}
    if w > 0:
        kw["prefetch_factor"] = 4
    return kw


# ---------------------------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class _Chunk:
    cell: int  # index into the cells list
    chunk: int  # chunk index within the cell
    size: int  # samples in the chunk over all ranks
    mine: Sequence[int]  # this rank's share (a range), as indices into the concatenation of all cells
    batch_size: int
    last: bool  # last chunk still to compute for this cell

    def batches(self) -> list[range]:
        return [self.mine[i:i + self.batch_size] for i in range(0, len(self.mine), self.batch_size)]


class _Cells(Dataset):
    """All cells' datasets end to end. Batches never straddle two cells, so a batch is fetched with one lookup of
    its cell (`__getitems__`, used by the DataLoader) instead of one bisect per sample as in `ConcatDataset`."""

    def __init__(self, datasets: Sequence[Dataset], offsets: Sequence[int]) -> None:
        self.datasets, self.offsets = list(datasets), list(offsets)

    def __len__(self) -> int:
        return self.offsets[-1]

    def _locate(self, i: int) -> int:
        return bisect.bisect_right(self.offsets, i) - 1

    def __getitem__(self, i: int) -> Any:
        c = self._locate(i)
        return self.datasets[c][i - self.offsets[c]]

    def __getitems__(self, indices: list[int]) -> list[Any]:
        c = self._locate(indices[0])
        ds, off = self.datasets[c], self.offsets[c]
        return [ds[i - off] for i in indices]


class _BatchSampler:
    """Yields the batches of every chunk to compute, in order, without materialising 3.75M indices up front."""

    def __init__(self, todo: list[_Chunk]) -> None:
        self.todo = todo

    def __iter__(self) -> Iterator[list[int]]:
        for ch in self.todo:
            for b in ch.batches():
                yield list(b)

    def __len__(self) -> int:
        return sum(len(ch.batches()) for ch in self.todo)


def _chunk_rows(store: ResultsStore, key: CellKey) -> dict[int, tuple[int, int]]:
    where = " AND ".join(f"{c} = ?" for c in ("model", "checkpoint_sha256", "task", "dataset", "preprocessing",
                                               "condition", "severity"))
    rows = store.query(f"SELECT chunk, n, skipped FROM chunks WHERE {where}", key.as_tuple())
    return {int(r[0]): (int(r[1]), int(r[2])) for r in rows}


def _plan_on_main(cells: Sequence[CellSpec], store: ResultsStore | None, chunk_size: int, fresh: bool,
                  sizes: list[int]) -> list[dict[str, Any]]:
    """Rank 0 decides, per cell, which chunks are still to compute (and clears cells for `fresh`)."""
    plan = []
    for spec, n in zip(cells, sizes):
        n_chunks = math.ceil(n / chunk_size)
        done: set[int] = set()
        finished = False
        if store is not None:
            if fresh:
                store.clear_cell(spec.key)
            rows = _chunk_rows(store, spec.key)
            for c, (cn, cs) in rows.items():
                expect = min(chunk_size, n - c * chunk_size)
                if c >= n_chunks or cn + cs != expect:
                    raise UserError(
                        f"the results store holds chunks of {spec.key.condition} severity {spec.key.severity} made "
                        f"with another chunk size or sample list (chunk {c}: {cn + cs} samples, expected {expect}); "
                        f"rerun with --fresh to recompute this cell")
            done = set(rows)
            finished = store.is_cell_done(spec.key)
        plan.append({"n": n, "n_chunks": n_chunks, "done": sorted(done), "finished": finished})
    return plan


def _unpack(batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    if isinstance(batch, (list, tuple)):
        if len(batch) == 3:
            return batch[0], batch[1], batch[2]
        if len(batch) == 2:
            return batch[0], batch[1], None
    raise TypeError("a dataset item must be (input, target) or (input, target, ok)")


def run_cells(model: nn.Module, cells: Sequence[CellSpec], store: ResultsStore | None, *,
              batch_size: int = 128, workers: int | None = None, device: torch.device | str | None = None,
              scorer: Scorer = top1_scorer, chunk_size: int = CHUNK_SIZE, fresh: bool = False,
              strict: bool = False, progress: ProgressHook | None = None,
              autocast_dtype: torch.dtype | None = None, pin_memory: bool | None = None) -> list[CellResult]:
    """Evaluate `cells` with `model` (loaded once), resumably, on one or many processes.

    Args:
        model: the network in eval mode; moved to `device`.
        cells: what to evaluate; each dataset follows the contract in the module docstring.
        store: results store (rank 0 only; `None` on other ranks, or for an in-memory run without resume).
        batch_size: samples per batch on each rank.
        workers: DataLoader workers per rank (`None`: `default_workers()`).
        device: compute device (default: the model's device).
        scorer: turns a batch into sums (`top1_scorer` by default).
        chunk_size: samples per committed chunk; must stay the same between a run and its resumption.
        fresh: recompute the cells even if the store has them (their old rows are deleted first).
        strict: an unreadable sample fails the run (`UserError`) instead of being skipped and counted.
        progress: receives progress events (rank 0 only); `None` is silent.
        autocast_dtype: run the model under `torch.autocast` with this dtype (e.g. `torch.bfloat16`); off by default
            because reduced precision changes a few predictions.
        pin_memory: override the default (pinned only on CUDA).

    Returns:
        One `CellResult` per cell, in order, on every rank.

    Raises:
        UserError: `strict` and an unreadable sample, or a store whose chunks do not fit this run.
    """
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}")
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    rank, world = D.rank(), D.world_size()
    main = rank == 0
    if not main:
        store = None  # only rank 0 ever writes
    dev = torch.device(device) if device is not None else _model_device(model)
    model = model.to(dev).eval()
    hook = progress if (progress is not None and main) else ProgressHook()

    # -- plan: rank 0 reads the store; everyone checks they see the same cells ---------------------------------
    sizes = [len(spec.dataset) for spec in cells]
    mine = [(spec.key.as_tuple(), n) for spec, n in zip(cells, sizes)]
    plan = _plan_on_main(cells, store, chunk_size, fresh, sizes) if main else None
    plan, theirs = D.broadcast_object((plan, mine))
    if theirs != mine:
        raise UserError(f"rank {rank} sees different cells or sample counts than rank 0; every rank must read the "
                        f"same data tree (same path, same files)")

    todo: list[_Chunk] = []
    offsets = [0]
    for n in sizes:
        offsets.append(offsets[-1] + n)
    for ci, p in enumerate(plan):
        done_set = set(p["done"])
        missing = [c for c in range(p["n_chunks"]) if c not in done_set]
        for k, c in enumerate(missing):
            start, stop = c * chunk_size, min(p["n"], (c + 1) * chunk_size)
            # NOTE: index % world == rank within the chunk: no sample twice, no padding (unlike DistributedSampler)
            share = D.shard(range(offsets[ci] + start, offsets[ci] + stop), rank, world)
            todo.append(_Chunk(ci, c, stop - start, share, batch_size, k == len(missing) - 1))

    results: list[CellResult | None] = [None] * len(cells)
    skipped_names: list[list[str]] = [[] for _ in cells]
    seconds = [0.0] * len(cells)
    computed = [0] * len(cells)
    mem_totals: list[dict[str, Any]] = [{} for _ in cells]

    hook.start(len(cells), sum(t.size for t in todo))

    def finish(ci: int) -> None:
        spec, p = cells[ci], plan[ci]
        if store is not None:
            if not p["finished"] or computed[ci]:
                store.finish_cell(spec.key, p["n_chunks"], {**spec.info, "n_samples": p["n"],
                                                             "chunk_size": chunk_size, "world_size": world})
            tot = store.cell_totals(spec.key)
            n, correct, skipped, extra = tot.n, tot.correct, tot.skipped, dict(tot.extra or {})
        else:
            t = mem_totals[ci]
            n, correct, skipped = t.get("n", 0), t.get("correct", 0), t.get("skipped", 0)
            extra = {k: v for k, v in t.items() if k not in ("n", "correct", "skipped")}
        res = CellResult(key=spec.key, n=n, correct=correct, skipped=skipped, extra=extra,
                         n_chunks=p["n_chunks"], computed_chunks=computed[ci], cached=computed[ci] == 0,
                         seconds=seconds[ci], skipped_samples=skipped_names[ci])
        results[ci] = res
        hook.cell_end(res)

    # cells with nothing left to compute
    pending = {t.cell for t in todo}
    for ci in range(len(cells)):
        if ci not in pending and main:
            hook.cell_start(cells[ci].key, plan[ci]["n"], plan[ci]["n"])
            finish(ci)

    if todo:
        concat = _Cells([spec.dataset for spec in cells], offsets)
        kw = loader_settings(dev, workers, world)
        if pin_memory is not None:
            kw["pin_memory"] = pin_memory
        loader = DataLoader(concat, batch_sampler=_BatchSampler(todo), **kw)
        grad_ctx = nullcontext if scorer.needs_grad else torch.inference_mode
        amp_ctx: Callable[[], Any] = ((lambda: torch.autocast(dev.type, dtype=autocast_dtype))
                                      if autocast_dtype is not None else nullcontext)
        it: Iterator[Any] = iter(loader)
        current = -1
        per_sample = scorer.per_sample
        try:
            for ch in todo:
                if ch.cell != current:
                    current = ch.cell
                    p = plan[current]
                    n_done = sum(min(chunk_size, p["n"] - c * chunk_size) for c in p["done"])
                    hook.cell_start(cells[current].key, p["n"], n_done)
                t0 = time.perf_counter()
                parts: list[Mapping[str, Any]] = []  # per-batch sums, reduced once per chunk (no per-batch kernels)
                masks: list[torch.Tensor] = []  # per-sample correctness of the readable samples (on the device)
                oks: list[torch.Tensor] = []  # readable flags of every sample of this rank's share (CPU)
                n_ok = n_bad = 0
                failed = ""
                for idx in ch.batches():
                    x, y, ok = _unpack(next(it))
                    if per_sample:
                        oks.append(ok.reshape(-1).bool() if ok is not None else torch.ones(len(idx), dtype=torch.bool))
                    if ok is not None and not bool(ok.all()):
                        okb = ok.bool()
                        for j in (~okb).nonzero().flatten().tolist():
                            gi = idx[j]
                            name = _sample_name(cells[ch.cell].dataset, gi - offsets[ch.cell])
                            if strict and not failed:
                                failed = name
                            if len(skipped_names[ch.cell]) < _MAX_SKIPPED_NAMES:
                                skipped_names[ch.cell].append(name)
                            hook.warn(f"skipped unreadable sample {name}")
                            log.info("skipped unreadable sample %s", name)
                        n_bad += int((~okb).sum())
                        x, y = x[okb], y[okb]
                    n_ok += int(y.shape[0])
                    if y.shape[0]:
                        x = x.to(dev, non_blocking=True)
                        y = y.to(dev, non_blocking=True)
                        with grad_ctx(), amp_ctx():
                            out = scorer.fn(model, x, y)
                        # NOTE: detach, so a gradient-based scorer does not keep its graphs alive until the chunk ends
                        parts.append({f: out[f].detach() if isinstance(out[f], torch.Tensor) else out[f]
                                      for f in scorer.fields})
                        if per_sample:
                            masks.append(out["correct_mask"].detach().reshape(-1))
                    hook.advance(len(idx) * world)
                # one host sync and one all-reduce per chunk
                head = torch.tensor([n_ok, n_bad, 1 if failed else 0], dtype=torch.float64, device=dev)
                acc = _reduce_parts(parts, scorer.fields, dev)
                codes = (_sample_codes(masks, oks, ch.size, rank, world, dev) if per_sample
                         else head.new_zeros(0))
                # NOTE: the per-sample codes ride in the same all-reduce (disjoint positions per rank, so a sum
                # assembles the chunk in sample order); one collective and one host copy per chunk
                total_t = D.all_reduce_sum(torch.cat([head, acc, codes])).cpu()
                n_head = 3 + len(scorer.fields)
                total = total_t[:n_head].tolist()
                if total[2] > 0:
                    where = f" ({failed})" if failed else " on another rank"
                    raise UserError(f"unreadable image{where}; remove or repair it, or run without --strict to "
                                    f"skip unreadable images and count them")
                n_all, bad_all = int(round(total[0])), int(round(total[1]))
                if n_all + bad_all != ch.size:
                    raise RuntimeError(f"chunk {ch.chunk} of cell {cells[ch.cell].key} has {n_all + bad_all} "
                                       f"samples over all ranks, expected {ch.size}")
                sums = {f: _num(v) for f, v in zip(scorer.fields, total[3:])}
                counts = ChunkCounts(n=n_all, correct=int(round(sums.get("correct", 0))), skipped=bad_all,
                                     extra={k: v for k, v in sums.items() if k != "correct"} or None)
                if store is not None:
                    bits = skip = None
                    if per_sample:
                        code = total_t[n_head:].round().to(torch.int64).numpy()
                        bits, skip = code == 1, code == 2
                    store.add_chunk(cells[ch.cell].key, ch.chunk, counts, correct_bits=bits, skipped_mask=skip)
                mt = mem_totals[ch.cell]
                for k, v in (("n", counts.n), ("correct", counts.correct), ("skipped", counts.skipped),
                             *((counts.extra or {}).items())):
                    mt[k] = mt.get(k, 0) + v
                computed[ch.cell] += 1
                seconds[ch.cell] += time.perf_counter() - t0
                if ch.last and main:
                    finish(ch.cell)
        finally:
            del it  # shuts the loader's workers down, also on Ctrl-C

    # every rank returns rank 0's totals
    out = D.broadcast_object([r.__dict__ if r is not None else None for r in results])
    return [CellResult(**d) for d in out]


def _reduce_parts(parts: Sequence[Mapping[str, Any]], fields: Sequence[str], dev: torch.device) -> torch.Tensor:
    """Sum the per-batch outputs of a scorer field by field: a float64 vector on `dev`."""
    if not parts:
        return torch.zeros(len(fields), dtype=torch.float64, device=dev)
    cols = []
    for f in fields:
        vals = [p[f] for p in parts]
        if all(isinstance(v, torch.Tensor) for v in vals):
            cols.append(torch.stack([v.reshape(()).to(dev, torch.float64) for v in vals]).sum())
        else:
            cols.append(torch.tensor(float(sum(float(v) for v in vals)), dtype=torch.float64, device=dev))
    return torch.stack(cols)


def _sample_codes(masks: Sequence[torch.Tensor], oks: Sequence[torch.Tensor], size: int, rank: int, world: int,
                  dev: torch.device) -> torch.Tensor:
    """This rank's per-sample codes of one chunk, placed at its positions in the chunk (zeros elsewhere):
    1 = correct, 0 = wrong, 2 = skipped. Positions follow `D.shard` (`index % world == rank`)."""
    codes = torch.zeros(size, dtype=torch.float64, device=dev)
    if not oks:
        return codes
    ok = torch.cat(list(oks))
    local = torch.full((ok.numel(),), 2.0, dtype=torch.float64, device=dev)
    if masks:
        hits = torch.cat(list(masks)).to(dev, torch.float64)
        if hits.numel() != int(ok.sum()):
            raise RuntimeError(f"the scorer's correct_mask has {hits.numel()} entries for {int(ok.sum())} samples")
        local[ok.to(dev)] = hits
    codes[rank::world] = local
    return codes


def _finite(x: float) -> float | None:
    """NaN (no readable sample) -> None, so that JSON output stays valid JSON."""
    return None if isinstance(x, float) and math.isnan(x) else x


def _num(v: float) -> int | float:
    return int(round(v)) if abs(v - round(v)) < 1e-9 else v


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _sample_name(ds: Dataset, i: int) -> str:
    fn = getattr(ds, "sample_name", None)
    return str(fn(i)) if callable(fn) else f"sample {i}"


# ---------------------------------------------------------------------------------------------------------------
# drivers: clean accuracy and ImageNet-C
# ---------------------------------------------------------------------------------------------------------------
def _key(loaded: Any, task: str, dataset: str, condition: str, severity: int) -> CellKey:
    return CellKey(model=loaded.name, checkpoint_sha256=loaded.checkpoint_sha256, task=task, dataset=dataset,
                   preprocessing=loaded.preprocessing.key(), condition=condition, severity=int(severity))


def _register(loaded: Any, store: ResultsStore | None) -> None:
    if store is not None:
        store.register_model(loaded.name, loaded.checkpoint_sha256,
                             str(loaded.checkpoint_path) if getattr(loaded, "checkpoint_path", None) else None,
                             getattr(loaded, "card", None))


def clean_cell(loaded: Any, val_dir: str | Path, limit: int | None = None,
               samples: list[tuple[str, int]] | None = None) -> CellSpec:
    """The clean-accuracy cell of a validation folder (`<val>/<wnid>/*`), with the model's eval transform.

    `samples` is the folder's listing if the caller already scanned it (`attnprobe.data.folders.scan_class_folders`).
    """
    from attnprobe.data.folders import ImageFolderDataset
    from attnprobe.data.imagenet_c import CleanInput

    ds = ImageFolderDataset(val_dir, CleanInput(loaded.preprocessing), samples=samples, limit=limit,
                            kind="imagenet_val")
    return CellSpec(_key(loaded, "clean", ds.fingerprint, "clean", 0), ds,
                    {"source": "clean", "root": str(Path(val_dir).expanduser().resolve())})


def evaluate_clean(loaded: Any, val_dir: str | Path, store: ResultsStore | None, *, limit: int | None = None,
                   samples: list[tuple[str, int]] | None = None, **run_kw: Any) -> CellResult:
    """Top-1 accuracy of `loaded` on a clean ImageNet-style folder (labels from the canonical wnid order).

    `samples`: the folder's listing if already scanned. `run_kw` goes to `run_cells` (batch_size, workers, device,
    fresh, strict, progress, ...).
    """
    spec = clean_cell(loaded, val_dir, limit, samples)
    if D.is_main():
        _register(loaded, store)
    return run_cells(loaded.model, [spec], store, **run_kw)[0]


@dataclass
class ImageNetCReport:
    """Everything `attnprobe mce` reports for one model; `as_dict()` is the `--json` payload entry."""

    model: str
    checkpoint_sha256: str
    preprocessing: str
    source: str
    cells: list[CellResult]
    clean: CellResult | None
    out: str | None
    notes: list[str]

    def errors(self) -> dict[str, dict[int, float]]:
        """Top-1 error per corruption and severity (cells without a single readable image are left out)."""
        table: dict[str, dict[int, float]] = {}
        for r in self.cells:
            if r.n:
                table.setdefault(r.key.condition, {})[r.key.severity] = r.top1_error
        return table

    def summary(self) -> dict[str, Any]:
        """mCE and friends; `None` where the table is too partial for a metric (never a partial average)."""
        from attnprobe import robustness as R

        errors = self.errors()
        full = {c: v for c, v in errors.items() if all(s in v for s in (1, 2, 3, 4, 5))}
        complete = R.is_complete(full)
        clean_err = self.clean.top1_error if self.clean is not None and self.clean.n else None
        out: dict[str, Any] = {
            "complete": complete,
            "missing_corruptions": R.missing_corruptions(full),
            "mce": R.mce(full) if complete else None,
            "ce": R.corruption_errors(full),
            "clean_error": clean_err,
            "relative_mce": R.relative_mce(full, clean_err) if complete and clean_err is not None else None,
            "mean_corrupted_accuracy": R.mean_corrupted_accuracy(full) if complete else None,
        }
        out["retention"] = (R.retention(out["mean_corrupted_accuracy"], 1.0 - clean_err)
                            if complete and clean_err is not None and clean_err < 1.0 else None)
        return out

    def as_dict(self) -> dict[str, Any]:
        cells = [{"corruption": r.key.condition, "severity": r.key.severity, "n": r.n, "correct": r.correct,
                  "skipped": r.skipped, "top1_error": _finite(r.top1_error), "cached": r.cached} for r in self.cells]
        d: dict[str, Any] = {"model": self.model, "checkpoint_sha256": self.checkpoint_sha256,
                             "preprocessing": self.preprocessing, "source": self.source, "cells": cells}
        d.update(self.summary())
        if self.clean is not None:
            d["clean"] = {"n": self.clean.n, "correct": self.clean.correct, "skipped": self.clean.skipped,
                          "top1_error": _finite(self.clean.top1_error), "dataset": self.clean.key.dataset}
        d["out"] = self.out
        d["notes"] = self.notes
        return d


def check_imagenet_c_inputs(data: str | Path | None = None, clean: str | Path | None = None,
                            on_the_fly: bool = False, corruptions: Sequence[str] | None = None,
                            severities: Sequence[int] | None = None) -> dict[str, Any]:
    """Validate the ImageNet-C inputs and list the files, before any model is loaded or image decoded.

    Returns:
        Scanned inputs to pass to `evaluate_imagenet_c(..., scanned=...)`.

    Raises:
        UserError: conflicting or missing options, unknown names, a tree that is not ImageNet-C, missing or empty
            folders.
    """
    from attnprobe.data.folders import scan_class_folders
    from attnprobe.data.imagenet_c import check_corruption_names, check_severities, scan_released_tree

    names, sevs = check_corruption_names(corruptions), check_severities(severities)
    if on_the_fly and clean is None:
        raise UserError("--on-the-fly corrupts a clean folder: add --clean VAL_DIR")
    if on_the_fly and data is not None:
        raise UserError("pass either --data IMAGENET_C_ROOT or --clean VAL_DIR --on-the-fly, not both")
    if data is None and not on_the_fly:
        raise UserError("nothing to evaluate: pass --data IMAGENET_C_ROOT, or --clean VAL_DIR --on-the-fly")
    tree = scan_released_tree(data, names, sevs) if data is not None else None
    clean_samples = scan_class_folders(clean, what="clean validation folder") if clean is not None else None
    return {"data": data, "clean": clean, "on_the_fly": on_the_fly, "corruptions": names, "severities": sevs,
            "tree": tree, "clean_samples": clean_samples}


def evaluate_imagenet_c(loaded: Any, store: ResultsStore | None, *, data: str | Path | None = None,
                        clean: str | Path | None = None, on_the_fly: bool = False,
                        corruptions: Sequence[str] | None = None, severities: Sequence[int] | None = None,
                        limit: int | None = None, jpeg_quality: int | None = 85,
                        scanned: dict[str, Any] | None = None, **run_kw: Any) -> ImageNetCReport:
    """The ImageNet-C benchmark of one loaded model: every (corruption, severity) cell in one pass, resumable.

    Args:
        loaded: a `LoadedModel` from `attnprobe.zoo.load_model` (model, name, checkpoint sha256, preprocessing).
        store: the results store (rank 0; `None` on other ranks).
        data: the released ImageNet-C tree `<root>/<corruption>/<severity>/<wnid>/*.JPEG`.
        clean: a clean validation folder: corrupted on the fly with `on_the_fly`, and in every case scored clean
            too (for the relative mCE and the retention).
        on_the_fly: corrupt `clean` with the ImageNet-C recipe instead of reading `data`.
        corruptions: names to evaluate (default: the 15 benchmark corruptions).
        severities: severities to evaluate (default 1-5).
        limit: evenly spaced subset of this many images per cell (quick checks; reported as such).
        jpeg_quality: JPEG round trip of on-the-fly images (85 as the release; `None` to skip).
        scanned: the result of `check_imagenet_c_inputs` for these arguments (else it is called here).
        run_kw: passed to `run_cells` (batch_size, workers, device, fresh, strict, progress, ...).

    Raises:
        UserError: bad names, a tree that is not ImageNet-C, missing or empty folders; all before any compute.
    """
    from attnprobe.data.imagenet_c import on_the_fly_cells, released_cells

    sc = scanned or check_imagenet_c_inputs(data, clean, on_the_fly, corruptions, severities)
    pre = loaded.preprocessing
    notes: list[str] = []
    if sc["on_the_fly"]:
        data_cells = on_the_fly_cells(sc["clean"], pre, sc["corruptions"], sc["severities"], limit, jpeg_quality,
                                      samples=sc["clean_samples"])
        source, task = "on_the_fly", "imagenet_c"
        if jpeg_quality is None:
            notes.append("on the fly without the JPEG quality-85 round trip of the released files")
    else:
        data_cells = released_cells(sc["tree"], pre, limit=limit)
        source, task = "released", "imagenet_c"
    specs = [CellSpec(_key(loaded, task, c.dataset.fingerprint, c.corruption, c.severity), c.dataset,
                      {**c.info, "limit": limit}) for c in data_cells]
    clean_spec = clean_cell(loaded, sc["clean"], limit, sc["clean_samples"]) if sc["clean"] is not None else None
    if int(pre.input_size) != 224:
        notes.append(f"the model's input size is {pre.input_size}, not 224: images of another size were resized to "
                     f"{pre.input_size}x{pre.input_size}")
    if limit is not None:
        notes.append(f"--limit {limit}: a subset of each cell; not comparable with full-benchmark numbers")
    if D.is_main():
        _register(loaded, store)
    results = run_cells(loaded.model, specs + ([clean_spec] if clean_spec else []), store, **run_kw)
    clean_res = results[-1] if clean_spec else None
    return ImageNetCReport(model=loaded.name, checkpoint_sha256=loaded.checkpoint_sha256, preprocessing=pre.key(),
                           source=source, cells=results[:len(specs)], clean=clean_res,
                           out=str(store.root) if store is not None else None, notes=notes)


def imagenet_c_tables(store: ResultsStore, **filters: Any) -> list[dict[str, Any]]:
    """ImageNet-C results read back from a store, one entry per (model, checkpoint, dataset, preprocessing).

    Each entry has `errors` (`{corruption: {severity: top-1 error}}`), `n` (same layout, image counts),
    `complete`, and `mce` (`None` unless all 15 corruptions x 5 severities are in). For tables and figures.

    Args:
        store: an open results store (read-only is fine).
        filters: column filters for `store.cells`, e.g. `model="fan_b_tapadl"`.
    """
    from attnprobe import robustness as R

    groups: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for row in store.cells(task="imagenet_c", **filters):
        g = groups.setdefault((row["model"], row["checkpoint_sha256"], row["dataset"], row["preprocessing"]),
                              {"model": row["model"], "checkpoint_sha256": row["checkpoint_sha256"],
                               "dataset": row["dataset"], "preprocessing": row["preprocessing"], "errors": {},
                               "n": {}})
        if row["n"]:
            g["errors"].setdefault(row["condition"], {})[int(row["severity"])] = 1.0 - row["correct"] / row["n"]
            g["n"].setdefault(row["condition"], {})[int(row["severity"])] = int(row["n"])
    out = []
    for g in groups.values():
        full = {c: v for c, v in g["errors"].items() if all(s in v for s in (1, 2, 3, 4, 5))}
        g["complete"] = R.is_complete(full)
        g["mce"] = R.mce(full) if g["complete"] else None
        out.append(g)
    return out
