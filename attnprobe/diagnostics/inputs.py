"""What the diagnostics run on: the models (`ModelEntry`), the conditions (clean, or a corruption at a severity), and
the model inputs made from images (resized and centre-cropped, corrupted after the crop with a per-image seed)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from attnprobe.data import corruptions as C
from attnprobe.data.images import ImageRecord, model_input_u8

__all__ = ["CLEAN", "Condition", "CorruptionSource", "InputCache", "ModelEntry", "corrupted_conditions"]


@dataclass
class ModelEntry:
    """A model to diagnose and what identifies it in the store.

    Attributes:
        name: display / store name (zoo or timm name).
        model: the network (put in eval mode by the drivers).
        checkpoint_sha256: identifies the weights ("random-init" when none were loaded).
        preprocessing: the model's `attnprobe.zoo.Preprocessing` (default: 224 px, bicubic, crop 0.9, ImageNet stats).
        checkpoint_path: the weights file, for the store's model registry.
        card: the zoo card, for the store's model registry.
        precision: "fp32" (default), "bf16" or "fp16" (autocast); values in reduced precision are stored under the
            dataset id with `;precision=...` appended, never mixed with fp32 ones.
    """

    name: str
    model: nn.Module
    checkpoint_sha256: str = "random-init"
    preprocessing: Any = None
    checkpoint_path: str | None = None
    card: dict[str, Any] = field(default_factory=dict)
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.preprocessing is None:
            from attnprobe.zoo import Preprocessing

            self.preprocessing = Preprocessing()

    @classmethod
    def from_loaded(cls, loaded: Any) -> ModelEntry:
        """From `attnprobe.zoo.load_model(...)`'s `LoadedModel`."""
        return cls(name=loaded.name, model=loaded.model, checkpoint_sha256=loaded.checkpoint_sha256,
                   preprocessing=loaded.preprocessing, checkpoint_path=loaded.checkpoint_path, card=loaded.card or {})


@dataclass(frozen=True)
class Condition:
    """Clean images (`corruption=None`) or one corruption at one severity."""

    corruption: str | None = None
    severity: int = 0

    @property
    def name(self) -> str:
        return self.corruption or "clean"

    @property
    def label(self) -> str:
        return self.name if self.corruption is None else f"{self.corruption}-s{self.severity}"


CLEAN = Condition()


@dataclass(frozen=True)
class CorruptionSource:
    """What corrupts the images (`attnprobe.data.corruptions`): the backend and its recipe.

    Corrupted series are stored under the dataset id tagged with `id` (`dataset_of`), so values measured on
    the pixels of two backends, recipes or engine versions never mix; clean series keep the plain dataset id.
    """

    backend: str | None = None  # None: the torch engine
    recipe: str | None = None  # None: the backend's (imagenet-c for the engine)
    id: str = field(init=False)

    def __post_init__(self) -> None:
        backend, recipe = C.choose_backend(self.backend, self.recipe)
        object.__setattr__(self, "backend", backend)
        object.__setattr__(self, "recipe", recipe)
        object.__setattr__(self, "id", C.corruption_id(backend, recipe))

    def dataset_of(self, dataset: str, cond: Condition) -> str:
        """The dataset id a series of `cond` is stored under: tagged with `id` for a corruption."""
        return dataset if cond.corruption is None else C.tag_corruption(dataset, self.id)


def corrupted_conditions(corruption: str, severities: Iterable[int]) -> list[Condition]:
    """Validated conditions for one corruption at several severities."""
    name = C.validate_corruption(corruption)
    return [Condition(name, C.validate_severity(s)) for s in severities]


class InputCache:
    """The uint8 model inputs of one batch of images, per preprocessing and condition: every image is decoded once,
    and models with the same preprocessing get pixel-identical (corrupted) inputs."""

    def __init__(self, source: CorruptionSource | None = None) -> None:
        self.source = source if source is not None else CorruptionSource()
        self._pil: dict[str, Any] = {}
        self._u8: dict[tuple[str, Condition], dict[str, np.ndarray]] = {}

    def get(self, entry: ModelEntry, records: Sequence[ImageRecord], cond: Condition) -> np.ndarray:
        """(B, S, S, 3) uint8: `records` as `entry`'s evaluation transform prepares them, under `cond`."""
        pre = entry.preprocessing
        cache = self._u8.setdefault((pre.key(), cond), {})
        missing = list({r.id: r for r in records if r.id not in cache}.values())
        if missing and cond.corruption is None:
            for r in missing:
                if r.id not in self._pil:
                    self._pil[r.id] = r.load()
                cache[r.id] = model_input_u8(self._pil[r.id], pre)
        elif missing:
            cache.update(self._corrupt(entry, missing, cond))
        return np.stack([cache[r.id] for r in records])

    def _corrupt(self, entry: ModelEntry, records: Sequence[ImageRecord], cond: Condition) -> dict[str, np.ndarray]:
        """The corrupted inputs of `records`, in one call of the batched engine (per-image seeds: the same pixels
        as one image at a time)."""
        import torch

        assert cond.corruption is not None
        clean = torch.from_numpy(self.get(entry, records, CLEAN)).permute(0, 3, 1, 2)  # (B, 3, S, S)
        seeds = [C.image_seed(r.id, cond.corruption, cond.severity) for r in records]
        out = C.corrupt_batch(clean.contiguous(), cond.corruption, cond.severity, seeds, backend=self.source.backend,
                              recipe=self.source.recipe)
        hwc = out.permute(0, 2, 3, 1).numpy()  # (B, S, S, 3)
        return {r.id: np.ascontiguousarray(hwc[i]) for i, r in enumerate(records)}
