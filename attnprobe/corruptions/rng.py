"""Per-image random draws that do not depend on the batch, the device or the thread that runs them.

Every image of a batch gets its own 64-bit key and its own `torch.Generator` (Mersenne Twister, on the CPU), so an
image's draws are the same whether it is corrupted alone or in a batch of 500, on the CPU or on a GPU: the numbers
are made on the CPU and moved. A corruption draws in a fixed order from each image's generator (e.g. snow: the
snow field, then the blur angle), so that order is part of `ENGINE_VERSION` (see `attnprobe.corruptions.api`).

Keys come from `seed`:

* one int for the whole batch: each image's key mixes the seed with a hash of the image's own pixels (computed
  with integer arithmetic on the image's device, so it is exact everywhere). Different images get independent
  draws and the result of an image never depends on its neighbours in the batch;
* one seed per image (a sequence or a 1-D integer tensor), e.g. `attnprobe.data.corruptions.image_seed(...)`
  (what the data layer passes): the key is a hash of that seed alone, so the draws follow the image's id.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import torch

from attnprobe.errors import UserError

__all__ = ["ImageRNG", "image_keys", "splitmix64"]

_MASK64 = (1 << 64) - 1
# NOTE: distinguishes the two kinds of keys, so an explicit seed s and an int seed s never give the same draws.
_DOMAIN_PER_IMAGE = 0x5EED_0F_1A6E
_DOMAIN_CONTENT = 0xC0_47E47


def splitmix64(value: int) -> int:
    """One SplitMix64 step: a well-mixed 64-bit integer from any integer (pure Python, exact everywhere)."""
    z = (value + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


@lru_cache(maxsize=4)
def _hash_weights(n: int, device: str) -> torch.Tensor:
    """(2, n) fixed int32 weights below 2**23, for the content hash."""
    j = torch.arange(1, n + 1, dtype=torch.int64, device=device)
    w1 = (j * 2654435761) % 8388593  # NOTE: j < 2**28 and the factor < 2**32: no int64 overflow
    w2 = (j * 40503 + 2246822519) % 8388587
    return torch.stack([w1, w2]).to(torch.int32)


def content_hashes(images: torch.Tensor) -> list[int]:
    """A 64-bit hash of each image's pixels, exact on any device (integer sums cannot round).

    Each product of a pixel value (< 2**8) and a weight (< 2**23) fits in int32; their int64 sum cannot overflow.
    """
    b = images.shape[0]
    flat = images.reshape(b, -1)  # (B, N)
    n = flat.shape[1]
    weights = _hash_weights(n, str(images.device))  # (2, N)
    out = []
    for i in range(b):  # NOTE: one image at a time keeps the temporaries small at 2048x1024
        sums = (flat[i].to(torch.int32)[None] * weights).sum(1, dtype=torch.int64).tolist()
        out.append((int(sums[0]), int(sums[1])))
    c, h, w = images.shape[1:]
    shape_word = splitmix64((c << 42) | (h << 21) | w)
    return [splitmix64(splitmix64(h1 ^ shape_word) ^ h2) for h1, h2 in out]


def image_keys(images: torch.Tensor, seed: int | Sequence[int] | torch.Tensor) -> list[int]:
    """One 64-bit key per image (see the module docstring for the two kinds of `seed`)."""
    b = images.shape[0]
    if isinstance(seed, bool):
        raise UserError(f"seed must be an int or one int per image, got {seed!r}")
    if isinstance(seed, int):
        base = splitmix64((seed & _MASK64) ^ _DOMAIN_CONTENT)
        return [splitmix64(base ^ h) for h in content_hashes(images)]
    if isinstance(seed, torch.Tensor):
        if seed.dim() != 1 or seed.dtype.is_floating_point or seed.dtype == torch.bool:
            raise UserError(f"seed must be an int or a 1-D integer tensor with one seed per image, got a tensor of "
                            f"shape {tuple(seed.shape)} and dtype {seed.dtype}")
        seeds = [int(s) for s in seed.tolist()]
    else:
        try:
            seeds = [int(s) for s in seed]
        except (TypeError, ValueError):
            raise UserError(f"seed must be an int or one int per image, got {seed!r}") from None
    if len(seeds) != b:
        raise UserError(f"got {len(seeds)} seeds for {b} images; pass one seed per image or a single int")
    return [splitmix64((s & _MASK64) ^ _DOMAIN_PER_IMAGE) for s in seeds]


def _rng_workers(rows: int, numel: int, device: torch.device) -> int:
    """Threads for drawing: for a GPU batch every CPU core (the draws are its bottleneck), else torch's threads."""
    if rows < 2 or numel < (1 << 20):
        return 1
    cores = os.cpu_count() or 1
    return max(1, min(rows, cores if device.type != "cpu" else torch.get_num_threads(), 32))


class ImageRNG:
    """The random draws of one batch: one CPU generator per image, results stacked and moved to `device`.

    Args:
        keys: one 64-bit key per image (`image_keys`).
        device: where the drawn tensors go.
    """

    def __init__(self, keys: Sequence[int], device: torch.device | str) -> None:
        self.keys = list(keys)
        self.device = torch.device(device)
        self._generators: list[torch.Generator] | None = None

    @property
    def _gens(self) -> list[torch.Generator]:
        if self._generators is None:  # NOTE: made on first use; deterministic corruptions never draw
            self._generators = []
            for k in self.keys:
                g = torch.Generator(device="cpu")
                g.manual_seed(int(k) & _MASK64)
                self._generators.append(g)
        return self._generators

    def __len__(self) -> int:
        return len(self.keys)

    def _fill(self, shape: Sequence[int], dtype: torch.dtype, fill, device: str | None) -> torch.Tensor:  # noqa: ANN001
        target = self.device if device is None else torch.device(device)
        pin = target.type == "cuda"
        out = torch.empty((len(self._gens), *shape), dtype=dtype, pin_memory=pin)
        rows = list(zip(out, self._gens))
        workers = _rng_workers(len(rows), out.numel(), target)
        if workers > 1:
            # NOTE: each image has its own generator, so filling rows in parallel threads gives the same numbers
            with ThreadPoolExecutor(max_workers=workers) as pool:
                list(pool.map(lambda rg: fill(*rg), rows))
        else:
            for row, g in rows:
                fill(row, g)
        return out if target.type == "cpu" else out.to(target, non_blocking=True)

    def uniform(self, shape: Sequence[int], low: float = 0.0, high: float = 1.0, dtype: torch.dtype = torch.float32,
                device: str | None = None) -> torch.Tensor:
        """(B, *shape) uniform on [low, high), on the batch's device (or `device`)."""
        return self._fill(shape, dtype, lambda row, g: row.uniform_(low, high, generator=g), device)

    def normal(self, shape: Sequence[int], mean: float = 0.0, std: float = 1.0, dtype: torch.dtype = torch.float32,
               device: str | None = None) -> torch.Tensor:
        """(B, *shape) normal draws."""
        return self._fill(shape, dtype, lambda row, g: row.normal_(mean, std, generator=g), device)

    def integers(self, shape: Sequence[int], low: int, high: int, dtype: torch.dtype = torch.int64,
                 device: str | None = None) -> torch.Tensor:
        """(B, *shape) integers uniform on [low, high)."""
        return self._fill(shape, dtype, lambda row, g: row.random_(low, high, generator=g), device)

    def small_integers(self, shape: Sequence[int], high: int) -> torch.Tensor:
        """(B, *shape) uint8 integers uniform on [0, high), high <= 256, on the batch's device.

        A power-of-two `high` of k bits takes floor(31 / k) values from each 31-bit draw (15 per draw for glass
        blur's 2-bit shifts: drawing is most of its cost); any other `high` takes one draw per value.
        """
        bits = max(1, (high - 1).bit_length())
        numel = math.prod(shape)
        if high != 1 << bits or bits > 8 or numel == 0:
            return self.integers(shape, 0, high, dtype=torch.uint8)
        per_word = 31 // bits
        words = self.integers((-(-numel // per_word),), 0, 1 << 31, dtype=torch.int32)  # (B, m)
        offsets = torch.arange(0, per_word * bits, bits, dtype=torch.int32, device=words.device)
        values = (words[..., None] >> offsets).bitwise_and_(high - 1)  # (B, m, per_word)
        return values.reshape(len(self), -1)[:, :numel].to(torch.uint8).reshape(len(self), *shape)

    def scalar_uniform(self, low: float, high: float) -> list[float]:
        """One uniform float64 on [low, high) per image (stays on the CPU)."""
        return [float(torch.empty((), dtype=torch.float64).uniform_(low, high, generator=g)) for g in self._gens]

    def scalar_integer(self, low: int, high: int | Sequence[int]) -> list[int]:
        """One integer uniform on [low, high) per image (stays on the CPU); `high` may differ per image."""
        highs = [high] * len(self._gens) if isinstance(high, int) else list(high)
        return [int(torch.empty((), dtype=torch.int64).random_(low, hi, generator=g))
                for g, hi in zip(self._gens, highs)]
