"""Compiling the engine's CPU loops with Numba (a dependency; without it every caller keeps its torch path).

The loops live in `loops_pixel`, `loops_blur`, `loops_warp`, `loops_weather` and `loops_resample`, each registered
with `kernel` (with example arguments that compile and check it once) and wrapped by a ``*_cpu`` function that
returns None when the loop cannot run. Plain functions the loops call are marked `helper` and compiled inline first.

Loops are compiled with NumPy's error model (a float division by zero gives inf / nan as torch does, no check
per division) and release the GIL, so `over_images` can split a batch among threads.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache, lru_cache

import numpy as np
import torch

__all__ = ["available", "compiled", "each", "helper", "kernel", "over_images", "run"]

_HELPERS: list[Callable] = []


def kernel(*example: object) -> Callable[[Callable], Callable]:
    """Register a loop to compile, with arguments that exercise it (compiled and run once on first use)."""

    def register(loop: Callable) -> Callable:
        loop.__jit_example__ = example
        return loop

    return register


def helper(fn: Callable) -> Callable:
    """Mark a function that loops call: it is compiled (inlined into them) before any loop."""
    _HELPERS.append(fn)
    return fn


@cache
def _compile_helpers(numba) -> None:  # noqa: ANN001
    # NOTE: Numba resolves a loop's globals when it compiles it: a helper must be compiled by then
    for fn in _HELPERS:
        fn.__globals__[fn.__name__] = numba.njit(inline="always")(fn)


@cache
def compiled(loop: Callable) -> Callable | None:
    """The compiled `loop` (registered with `kernel`), or None when Numba is missing or fails on it."""
    example = loop.__jit_example__  # NOTE: outside the try: a loop that is not a kernel is a bug, not a fallback
    try:
        import numba
    except ImportError:
        return None
    for on_disk in (True, False):  # NOTE: no writable cache folder (read-only install): compile in memory
        try:
            _compile_helpers(numba)
            fn = numba.njit(cache=on_disk, nogil=True, error_model="numpy")(loop)
            fn(*example)
            return fn
        except Exception:  # noqa: BLE001, S112 - any Numba failure leaves the torch path
            continue
    return None


@kernel(np.zeros(3, np.uint8))
def _probe(x: np.ndarray) -> None:
    for i in range(x.shape[0]):
        x[i] += 1


def available() -> bool:
    """Whether the compiled loops run (Numba installed and working)."""
    return compiled(_probe) is not None


@lru_cache(maxsize=4)
def _pool(workers: int, pid: int) -> ThreadPoolExecutor:
    """A pool per process: NOTE: a forked loader worker inherits the parent's pool without its threads."""
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="attnprobe-corrupt")


def over_images(n: int, work: Callable[[int, int], None]) -> None:
    """work(start, stop) over images 0 .. n, split among torch's threads (the loops free the GIL)."""
    workers = min(n, max(1, torch.get_num_threads()), os.cpu_count() or 1)
    if workers <= 1:
        work(0, n)
        return
    bounds = np.linspace(0, n, workers + 1).astype(int)
    list(_pool(workers, os.getpid()).map(lambda ab: work(*ab), zip(bounds[:-1], bounds[1:])))  # noqa: RUF007


class _Each:
    """An argument of `run` cut along the images, with the output."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = np.ascontiguousarray(array)


def each(array: np.ndarray) -> _Each:
    """Mark a per-image array (its first axis is the batch's) for `run`."""
    return _Each(array)


def run(loop: Callable, out: np.ndarray, *args: object) -> np.ndarray | None:
    """loop(*args, out) over the images of `out` (split among threads, `over_images`), the `each` arguments cut
    along with it; returns `out`, or None when the loop cannot run (the caller takes its torch path)."""
    fn = compiled(loop)
    if fn is None:
        return None

    def work(start: int, stop: int) -> None:
        fn(*(a.array[start:stop] if isinstance(a, _Each) else a for a in args), out[start:stop])

    over_images(len(out), work)
    return out
