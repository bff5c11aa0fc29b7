"""torch.distributed helpers for evaluation runs started with `torchrun` (gloo on CPU, nccl on CUDA).

    torchrun --nproc_per_node=8 -m attnprobe mce --model fan_b_tapadl --data /data/imagenet-c --out results/

Every rank runs the same command; `init_from_env()` reads torchrun's environment variables (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT). A plain `python -m attnprobe ...` is a world of one and touches nothing in
torch.distributed. The evaluation loop (`attnprobe.engine`) shards each chunk of samples with `shard()` (no
duplicates, no padding), sums the counts of all ranks with `all_reduce_sum()`, and lets only rank 0 open the
results store; the other ranks learn from rank 0 which chunks are done (`broadcast_object()`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

__all__ = [
    "DistContext",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "cleanup",
    "init_from_env",
    "is_main",
    "resolve_device",
    "rank",
    "shard",
    "world_size",
]


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the run, and the device it should compute on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_from_env(device: str | torch.device | None = None, backend: str | None = None,
                  timeout_s: float = 1800.0) -> DistContext:
    """Join the process group described by torchrun's environment variables, if any.

    Args:
        device: force a device ("cpu", "cuda"); by default CUDA (the local rank's GPU) when available, else CPU.
        backend: force a backend; by default nccl for CUDA and gloo for CPU.
        timeout_s: collective timeout; long, because rank 0 may list a large data tree while others wait.

    Returns:
        The context of this process; a world of one when WORLD_SIZE is unset or 1.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank_ = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank_)))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend=backend or ("nccl" if dev.type == "cuda" else "gloo"),
                                timeout=timedelta(seconds=timeout_s))
    if dist.is_initialized():
        world, rank_ = dist.get_world_size(), dist.get_rank()
    return DistContext(rank=rank_, world_size=world, local_rank=local_rank, device=dev)


def resolve_device(device: str | torch.device | None, local_rank: int = 0) -> torch.device:
    """The device a `--device` value names, checked once, before any model or store is touched.

    Args:
        device: "cpu", "cuda", "cuda:N", "mps" (or a `torch.device`); None: the local rank's GPU when there is one,
            else the CPU.
        local_rank: this process's rank on its node; a bare "cuda" means GPU `local_rank` (modulo the GPU count).

    Raises:
        UserError: a string that names no device, or a device this machine does not have (one line with the fix).
    """
    from attnprobe.errors import UserError

    if device is None:
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise UserError(f"unknown --device {str(device)!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {device} asks for a CUDA GPU but this machine has none that torch can use; "
                            "use --device cpu")
        count = torch.cuda.device_count()
        if dev.index is None:
            return torch.device(f"cuda:{local_rank % max(count, 1)}")
        if dev.index >= count:
            raise UserError(f"--device {device}: this machine has {count} CUDA GPU(s) (cuda:0 to cuda:{count - 1})")
        return dev
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise UserError(f"--device {device}: Apple's MPS backend is not available here; use --device cpu")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device {device}: attnprobe runs on cpu, cuda or cuda:N (and mps), not {dev.type}")
    return dev


def cleanup() -> None:
    """Leave the process group (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    return dist.get_rank() if _active() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if _active() else 1


def is_main() -> bool:
    """Whether this process is rank 0, the only one that writes results."""
    return rank() == 0


def shard(indices: Sequence[T], rank_: int, world: int) -> Sequence[T]:
    """This rank's share of `indices`: every `world`-th item starting at `rank_` (a range stays a range).

    Every item goes to exactly one rank (no duplicates) and nothing is padded, so shards may differ in length by
    one; counts are summed across ranks, never averaged.
    """
    if not 0 <= rank_ < world:
        raise ValueError(f"rank {rank_} is outside a world of {world}")
    return indices[rank_::world]


def _backend_device() -> torch.device:
    """The device tensors must live on for collectives (CUDA for nccl, CPU otherwise)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all ranks (returned on the tensor's original device). Identity in a single process."""
    if not _active():
        return values
    t = values.to(_backend_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.to(values.device)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Send a picklable object from rank `src` to every rank; returns it everywhere. Identity in a single process."""
    if not _active():
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src, device=_backend_device())
    return box[0]


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if _active():
        dist.barrier()
