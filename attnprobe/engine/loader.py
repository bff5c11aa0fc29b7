"""Feeding the engine: DataLoader defaults, all cells' datasets end to end, and the chunks to compute.

One DataLoader serves every cell of a pass (a run is one pass unless it waits for chunks of other processes), so
workers stay alive across cells and prefetching runs over cell boundaries; batches never straddle two cells or two
chunks. The batch sampler is `claims.ChunkQueue`: chunks are claimed as the loader reads ahead.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

__all__ = ["Chunk", "ConcatCells", "default_workers", "loader_settings"]


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


@dataclass
class Chunk:
    """One chunk of one cell, as this rank computes it."""

    cell: int  # index into the cells list
    chunk: int  # chunk index within the cell
    size: int  # samples in the chunk over all ranks
    mine: Sequence[int]  # this rank's share (a range), as indices into the concatenation of all cells
    batch_size: int

    def batches(self) -> list[range]:
        return [self.mine[i:i + self.batch_size] for i in range(0, len(self.mine), self.batch_size)]


class ConcatCells(Dataset):
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
