"""Running the chunks of a CPU batch side by side, one torch thread each.

A chunk holds a few images (they stay in cache); every torch operation on it is small, so splitting each one
among torch's threads costs more in hand-offs than it gains (measured: 26 ms per 224-px image for the 15
corruptions with 1 thread, 20 ms with 2). Whole chunks in parallel threads, each running its operations on one
thread, use the cores without those hand-offs (16 ms). torch releases the GIL inside its operations, and the
compiled loops (`jit`) release it too.

`torch.set_num_threads` only changes the calling thread's OpenMP team size in the builds that use OpenMP (the
PyPI and conda ones); `_pool` checks that the caller's setting survives and otherwise runs chunks one after
the other, as before.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import TypeVar

import torch

__all__ = ["map_chunks"]

T = TypeVar("T")
R = TypeVar("R")
_state = threading.local()


def _one_torch_thread() -> None:
    if not getattr(_state, "single", False):
        torch.set_num_threads(1)
        _state.single = True


@lru_cache(maxsize=4)
def _pool(workers: int, pid: int) -> ThreadPoolExecutor | None:
    """The pool for `workers` threads, or None where a worker's thread setting would leak into the caller.

    NOTE: keyed by pid: a forked loader worker inherits the parent's pool object without its threads.
    """
    before = torch.get_num_threads()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="attnprobe-chunks",
                              initializer=_one_torch_thread)
    list(pool.map(lambda _: threading.get_ident(), range(workers)))  # start the workers now
    if torch.get_num_threads() != before:  # a build with one global setting: undo it, stay sequential
        torch.set_num_threads(before)
        pool.shutdown()
        return None
    return pool


def map_chunks(fn: Callable[[T], R], chunks: Sequence[T], device: torch.device) -> list[R]:
    """[fn(c) for c in chunks], on CPU batches of two or more chunks in parallel single-threaded workers."""
    threads = torch.get_num_threads()
    workers = min(len(chunks), threads, os.cpu_count() or 1)
    if device.type != "cpu" or workers < 2 or getattr(_state, "single", False):
        return [fn(c) for c in chunks]
    pool = _pool(workers, os.getpid())
    if pool is None:
        return [fn(c) for c in chunks]
    return list(pool.map(fn, chunks))
