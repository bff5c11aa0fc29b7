"""The one evaluation loop: `run_cells` evaluates cells chunk by chunk, resumably, on one or many processes.

* resumable: each finished chunk is committed in its own transaction; a rerun skips committed chunks and finished
  cells, so a run killed at any moment (Ctrl-C, kill -9) and rerun counts every sample exactly once;
* shared: chunks are claimed in the store before they are computed (`claims.py`), so independent processes started
  on the same store (array jobs, a second terminal) split the work, and each returns the same totals;
* distributed: under `torchrun`, every chunk is sharded over the ranks, the counts of all ranks are summed with one
  all-reduce per chunk, and only rank 0 claims and writes;
* cheap: one DataLoader for all cells (`loader.py`), counts stay on the device until a chunk ends (one host sync
  per chunk, not per batch).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from attnprobe import distributed as D
from attnprobe.data.encoded import EncodedBatch, collate
from attnprobe.engine.cells import CellResult, CellSpec
from attnprobe.engine.claims import ChunkQueue, read_ahead
from attnprobe.engine.device_input import DeviceInput, decoder_name, decoder_tag, resolve_decode
from attnprobe.engine.execution import Execution, tag_preprocessing
from attnprobe.engine.loader import Chunk, ConcatCells, loader_settings
from attnprobe.engine.plan import CellPlan, plan_cells
from attnprobe.engine.progress import ProgressHook
from attnprobe.engine.scoring import Scorer, top1_scorer
from attnprobe.errors import UserError
from attnprobe.store import ChunkCounts, ResultsStore, StoreConflictError

__all__ = ["CHUNK_SIZE", "run_cells"]

log = logging.getLogger(__name__)

#: Samples per committed chunk. 1000 keeps a 50k-image cell at 50 tiny transactions and loses at most ~1000 images'
#: work on a kill. A store remembers the chunk size implicitly: rerunning with another size is refused.
CHUNK_SIZE = 1000

#: How many unreadable sample names a result keeps (the count is always exact).
_MAX_SKIPPED_NAMES = 100


def run_cells(model: nn.Module, cells: Sequence[CellSpec], store: ResultsStore | None, *,
              batch_size: int = 128, workers: int | None = None, device: torch.device | str | None = None,
              scorer: Scorer = top1_scorer, chunk_size: int = CHUNK_SIZE, fresh: bool = False,
              strict: bool = False, progress: ProgressHook | None = None, precision: str | torch.dtype = "fp32",
              decode: str = "auto", channels_last: bool | None = None, compile: bool = False,
              autocast_dtype: torch.dtype | None = None, pin_memory: bool | None = None) -> list[CellResult]:
    """Evaluate `cells` with `model` (loaded once), resumably, on one or many processes.

    Args:
        model: the network in eval mode; moved to `device`.
        cells: what to evaluate; each dataset follows the contract in `attnprobe.engine`.
        store: results store (rank 0 only; `None` on other ranks, or for an in-memory run without resume).
        batch_size: samples per batch on each rank.
        workers: DataLoader workers per rank (`None`: `default_workers()`).
        device: compute device (default: the model's device).
        scorer: turns a batch into sums (`top1_scorer` by default).
        chunk_size: samples per committed chunk; must stay the same between a run and its resumption.
        fresh: recompute the cells even if the store has them (their old rows are deleted first).
        strict: an unreadable sample fails the run (`UserError`) instead of being skipped and counted.
        progress: receives progress events (rank 0 only); `None` is silent.
        precision: "fp32" (default, for paper numbers), "bf16" or "fp16" (`torch.autocast`); reduced precision
            changes a few predictions, so its cells are stored under their own key (`execution.tag_preprocessing`).
        decode: "auto" ("workers" on CUDA, else "cpu"), "cpu" (decode and transform in the loader workers),
            "workers" (decode in the workers, resize/crop/normalise on the device), "device" or "gpu" (decode on the
            device too; nvJPEG on CUDA): datasets with an `encoded()` variant take the device path
            (`engine.device_input`); others (e.g. corrupted on the fly) keep the CPU path.
        channels_last: NHWC model and inputs (None: on CUDA for models with convolutions).
        compile: `torch.compile` the model (compiled at the first batch; nothing is compiled if all is stored).
        autocast_dtype: the older spelling of `precision` as a dtype (used when given).
        pin_memory: override the default (pinned only on CUDA).

    Returns:
        One `CellResult` per cell, in order, on every rank.

    Raises:
        UserError: `strict` and an unreadable sample, a store whose chunks do not fit this run, or a precision or
            decode path the device does not support.
    """
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}")
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    main = D.is_main()
    if not main:
        store = None  # only rank 0 ever writes
    dev = torch.device(device) if device is not None else _model_device(model)
    model = model.to(dev).eval()
    hook = progress if (progress is not None and main) else ProgressHook()
    ex = Execution(autocast_dtype if autocast_dtype is not None else precision, channels_last, compile)
    ex.check(dev)
    cells, datasets, inputs = _input_paths(cells, resolve_decode(decode, dev), dev, ex.info(model, dev))

    plan = plan_cells(cells, store, chunk_size, fresh)
    kw = loader_settings(dev, workers, D.world_size())
    if pin_memory is not None:
        kw["pin_memory"] = pin_memory
    queue = ChunkQueue(cells, plan, store, chunk_size, batch_size, read_ahead(kw), hook)
    run = _Run(cells, plan, queue, store, hook, scorer, dev, chunk_size, strict)
    hook.start(len(cells), queue.samples_left())
    if main:  # cells with nothing left to compute
        for ci, p in enumerate(plan):
            if len(p.done) >= p.n_chunks:
                hook.cell_start(cells[ci].key, p.n, p.n)
                run.finish(ci)
    forward = _Forward(ex.prepare(model, dev), scorer, dev, ex, inputs, ex.uses_channels_last(model, dev))
    dataset = ConcatCells(datasets, queue.offsets)
    try:
        while queue.next_pass():
            it: Iterator[Any] = iter(DataLoader(dataset, batch_sampler=queue.batches(), collate_fn=collate, **kw))
            try:
                current = -1
                while (ch := queue.next_chunk()) is not None:
                    if ch.cell != current:
                        current = ch.cell
                        hook.cell_start(cells[current].key, plan[current].n, plan[current].samples_done(chunk_size))
                    t0 = time.perf_counter()
                    run.commit(ch, run.evaluate(ch, it, forward), time.perf_counter() - t0)
            finally:
                del it  # shuts the loader's workers down, also on Ctrl-C
        if main:  # cells completed (partly) by other processes
            for ci in range(len(cells)):
                run.finish(ci)
    finally:
        if store is not None:
            _release(store)

    # every rank returns rank 0's totals
    out = D.broadcast_object([r.__dict__ if r is not None else None for r in run.results])
    return [CellResult(**d) for d in out]


def _input_paths(cells: Sequence[CellSpec], decode: str, dev: torch.device, info: dict[str, Any]
                 ) -> tuple[list[CellSpec], list[Dataset], list[DeviceInput | None]]:
    """Each cell's dataset as the loader reads it and its device stage (None: the CPU path), and the cells with
    the precision and decoder in their keys and what ran in their info."""
    out_cells, datasets, inputs = [], [], []
    for spec in cells:
        enc_of = getattr(spec.dataset, "encoded", None)
        # NOTE: nvJPEG decodes progressive JPEGs one by one on a slow path; the workers' PIL is faster for those
        enc = (enc_of(progressive=dev.type != "cuda", in_worker=decode == "workers")
               if decode != "cpu" and callable(enc_of) else None)
        path = decode if enc is not None else "cpu"
        pre = tag_preprocessing(spec.key.preprocessing, info["precision"]) + decoder_tag(path, dev)
        out_cells.append(CellSpec(replace(spec.key, preprocessing=pre), spec.dataset,
                                  {**spec.info, **info, "decode": decoder_name(path, dev)}))
        datasets.append(enc if enc is not None else spec.dataset)
        inputs.append(DeviceInput(enc.recipe, dev, getattr(enc, "stages", ())) if enc is not None else None)
    return out_cells, datasets, inputs


@dataclass
class _Forward:
    """The scorer call with the right gradient mode, autocast, input path and device placement."""

    model: nn.Module
    scorer: Scorer
    device: torch.device
    execution: Execution
    inputs: Sequence[DeviceInput | None]  # per cell: the device stage of encoded batches, or None
    channels_last: bool = False

    def prepare(self, cell: int, x: Any, ok: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encoded batches -> the model input on the device (with updated readable flags); tensors pass."""
        if isinstance(x, EncodedBatch):
            stage = self.inputs[cell]
            if stage is None:
                raise RuntimeError("an encoded batch reached a cell without a device input stage")
            return stage(x, ok)
        return x, ok

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> Mapping[str, Any]:
        grad_ctx = nullcontext() if self.scorer.needs_grad else torch.inference_mode()
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        y = y.to(self.device, non_blocking=True)
        with grad_ctx, self.execution.autocast(self.device):
            return self.scorer.fn(self.model, x, y)


@dataclass
class _ChunkOutcome:
    """This rank's raw results of one chunk, before the all-reduce."""

    parts: list[Mapping[str, Any]] = field(default_factory=list)  # per-batch sums, reduced once per chunk
    masks: list[torch.Tensor] = field(default_factory=list)  # per-sample correctness of readable samples (device)
    oks: list[torch.Tensor] = field(default_factory=list)  # readable flags of every sample of this rank (CPU)
    n_ok: int = 0
    n_bad: int = 0
    failed: str = ""  # the first unreadable sample, with --strict


class _Run:
    """State of one `run_cells` call: the plan, running totals per cell, and the results of finished cells."""

    def __init__(self, cells: Sequence[CellSpec], plan: Sequence[CellPlan], queue: ChunkQueue,
                 store: ResultsStore | None, hook: ProgressHook, scorer: Scorer, device: torch.device,
                 chunk_size: int, strict: bool) -> None:
        self.cells, self.plan, self.queue, self.offsets = cells, plan, queue, queue.offsets
        self.scorer, self.device = scorer, device
        self.store, self.hook, self.chunk_size, self.strict = store, hook, chunk_size, strict
        self.rank, self.world = D.rank(), D.world_size()
        self.results: list[CellResult | None] = [None] * len(cells)
        self.skipped_names: list[list[str]] = [[] for _ in cells]
        self.seconds = [0.0] * len(cells)
        self.computed = [0] * len(cells)
        self.mem_totals: list[dict[str, Any]] = [{} for _ in cells]  # used when there is no store

    # -- one chunk on this rank --------------------------------------------------------------------------------
    def evaluate(self, ch: Chunk, batches: Iterator[Any], forward: _Forward) -> _ChunkOutcome:
        """Run this rank's share of chunk `ch`; unreadable samples are left out and named."""
        o = _ChunkOutcome()
        per_sample = self.scorer.per_sample
        for idx in ch.batches():
            x, y, ok = _unpack(next(batches))
            x, ok = forward.prepare(ch.cell, x, ok)
            if per_sample:
                o.oks.append(ok.reshape(-1).bool() if ok is not None else torch.ones(len(idx), dtype=torch.bool))
            if ok is not None and not bool(ok.all()):
                okb = ok.bool()
                self._skip(ch, [idx[j] for j in (~okb).nonzero().flatten().tolist()], o)
                x, y = x[okb], y[okb]
            o.n_ok += int(y.shape[0])
            if y.shape[0]:
                out = forward(x, y)
                # NOTE: detach, so a gradient-based scorer does not keep its graphs alive until the chunk ends
                o.parts.append({f: out[f].detach() if isinstance(out[f], torch.Tensor) else out[f]
                                for f in self.scorer.fields})
                if per_sample:
                    o.masks.append(out["correct_mask"].detach().reshape(-1))
            self.hook.advance(len(idx) * self.world)
        return o

    def _skip(self, ch: Chunk, global_indices: list[int], o: _ChunkOutcome) -> None:
        names = self.skipped_names[ch.cell]
        for gi in global_indices:
            name = _sample_name(self.cells[ch.cell].dataset, gi - self.offsets[ch.cell])
            if self.strict and not o.failed:
                o.failed = name
            if len(names) < _MAX_SKIPPED_NAMES:
                names.append(name)
            self.hook.warn(f"skipped unreadable sample {name}")
            log.info("skipped unreadable sample %s", name)
        o.n_bad += len(global_indices)

    # -- all ranks together: reduce, check, store ----------------------------------------------------------------
    def commit(self, ch: Chunk, o: _ChunkOutcome, seconds: float) -> None:
        """Sum the chunk over ranks (one collective, one host copy) and store it on rank 0."""
        fields, dev, per_sample = self.scorer.fields, self.device, self.scorer.per_sample
        head = torch.tensor([o.n_ok, o.n_bad, 1 if o.failed else 0], dtype=torch.float64, device=dev)
        acc = _reduce_parts(o.parts, fields, dev)
        codes = (_sample_codes(o.masks, o.oks, ch.size, self.rank, self.world, dev) if per_sample
                 else head.new_zeros(0))
        # NOTE: the per-sample codes ride in the same all-reduce (disjoint positions per rank, so a sum assembles
        # the chunk in sample order)
        total_t = D.all_reduce_sum(torch.cat([head, acc, codes])).cpu()
        n_head = 3 + len(fields)
        total = total_t[:n_head].tolist()
        if total[2] > 0:
            where = f" ({o.failed})" if o.failed else " on another rank"
            raise UserError(f"unreadable image{where}; remove or repair it, or run without --strict to skip "
                            f"unreadable images and count them")
        n_all, bad_all = int(round(total[0])), int(round(total[1]))
        if n_all + bad_all != ch.size:
            raise RuntimeError(f"chunk {ch.chunk} of cell {self.cells[ch.cell].key} has {n_all + bad_all} samples "
                               f"over all ranks, expected {ch.size}")
        sums = {f: _num(v) for f, v in zip(fields, total[3:])}
        counts = ChunkCounts(n=n_all, correct=int(round(sums.get("correct", 0))), skipped=bad_all,
                             extra={k: v for k, v in sums.items() if k != "correct"} or None)
        stored = True
        if self.store is not None:
            bits = skip = None
            if per_sample:
                code = total_t[n_head:].round().to(torch.int64).numpy()
                bits, skip = code == 1, code == 2
            stored = self._store_chunk(ch, counts, bits, skip)
        if stored:
            mt = self.mem_totals[ch.cell]
            for k, v in (("n", counts.n), ("correct", counts.correct), ("skipped", counts.skipped),
                         *((counts.extra or {}).items())):
                mt[k] = mt.get(k, 0) + v
            self.computed[ch.cell] += 1
        self.seconds[ch.cell] += seconds
        self.queue.committed(ch.cell, ch.chunk)
        if D.is_main() and self._complete(ch.cell):
            self.finish(ch.cell)

    def _store_chunk(self, ch: Chunk, counts: ChunkCounts, bits: Any, skip: Any) -> bool:
        """Commit on rank 0; False when another process committed the chunk first (its numbers are kept)."""
        assert self.store is not None
        key = self.cells[ch.cell].key
        try:
            return self.store.add_chunk(key, ch.chunk, counts, correct_bits=bits, skipped_mask=skip)
        except StoreConflictError as e:
            if e.stored is not None and e.stored.n + e.stored.skipped != ch.size:
                raise UserError(f"another process stores {key.label()} in chunks of another size (chunk {ch.chunk}: "
                                f"{e.stored.n + e.stored.skipped} samples, here {ch.size}); run every process with "
                                f"the same --chunk-size and data, or rerun with --fresh") from None
            # NOTE: same chunk, other counts: a nondeterministic forward pass (e.g. on GPUs); one value is kept
            self.hook.warn(f"{e}; this process's counts were dropped")
            return False

    def _complete(self, ci: int) -> bool:
        """Whether every chunk of cell `ci` is known to be committed (cells completed by other processes since this
        process last claimed in them are finished at the end of the run)."""
        return self.queue.cell_complete(ci)

    # -- a finished cell -----------------------------------------------------------------------------------------
    def finish(self, ci: int) -> None:
        """Mark cell `ci` done in the store (unless it was) and record its totals, read back from the store."""
        spec, p = self.cells[ci], self.plan[ci]
        if self.results[ci] is not None:
            return
        if self.store is not None:
            if not p.finished:
                try:
                    self.store.finish_cell(spec.key, p.n_chunks, {**spec.info, "n_samples": p.n,
                                                                  "chunk_size": self.chunk_size,
                                                                  "world_size": self.world})
                except RuntimeError:
                    raise UserError(f"chunks of {spec.key.label()} were deleted while this run used them (another "
                                    f"process with --fresh?); rerun the same command") from None
            tot = self.store.cell_totals(spec.key)
            if tot.n + tot.skipped != p.n:
                raise UserError(f"the store's chunks of {spec.key.label()} hold {tot.n + tot.skipped} samples, this "
                                f"run has {p.n}: another process used another --chunk-size or sample list; rerun with "
                                f"--fresh to recompute this cell")
            n, correct, skipped, extra = tot.n, tot.correct, tot.skipped, dict(tot.extra or {})
        else:
            t = self.mem_totals[ci]
            n, correct, skipped = t.get("n", 0), t.get("correct", 0), t.get("skipped", 0)
            extra = {k: v for k, v in t.items() if k not in ("n", "correct", "skipped")}
        res = CellResult(key=spec.key, n=n, correct=correct, skipped=skipped, extra=extra, n_chunks=p.n_chunks,
                         computed_chunks=self.computed[ci], cached=self.computed[ci] == 0,
                         seconds=self.seconds[ci], skipped_samples=self.skipped_names[ci])
        self.results[ci] = res
        self.hook.cell_end(res)


def _release(store: ResultsStore) -> None:
    """Give back the leases of chunks this run claimed but did not commit (an error or Ctrl-C), so others need not
    wait for them to expire."""
    try:
        store.release_leases()
    except UserError:  # NOTE: e.g. the disk is full; the leases then expire on their own
        pass


def _unpack(batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    if isinstance(batch, (list, tuple)):
        if len(batch) == 3:
            return batch[0], batch[1], batch[2]
        if len(batch) == 2:
            return batch[0], batch[1], None
    raise TypeError("a dataset item must be (input, target) or (input, target, ok)")


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


def _num(v: float) -> int | float:
    return int(round(v)) if abs(v - round(v)) < 1e-9 else v


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _sample_name(ds: Dataset, i: int) -> str:
    fn = getattr(ds, "sample_name", None)
    return str(fn(i)) if callable(fn) else f"sample {i}"
