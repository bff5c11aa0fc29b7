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

__all__ = ["CLEAN", "Condition", "InputCache", "ModelEntry", "corrupted_conditions"]


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


def corrupted_conditions(corruption: str, severities: Iterable[int]) -> list[Condition]:
    """Validated conditions for one corruption at several severities."""
    name = C.validate_corruption(corruption)
    return [Condition(name, C.validate_severity(s)) for s in severities]


class InputCache:
    """The uint8 model inputs of one batch of images, per preprocessing and condition: every image is decoded once,
    and models with the same preprocessing get pixel-identical (corrupted) inputs."""

    def __init__(self) -> None:
        self._pil: dict[str, Any] = {}
        self._u8: dict[tuple[str, Condition], dict[str, np.ndarray]] = {}

    def get(self, entry: ModelEntry, records: Sequence[ImageRecord], cond: Condition) -> np.ndarray:
        """(B, S, S, 3) uint8: `records` as `entry`'s evaluation transform prepares them, under `cond`."""
        pre = entry.preprocessing
        cache = self._u8.setdefault((pre.key(), cond), {})
        out = []
        for r in records:
            if r.id not in cache:
                if cond.corruption is None:
                    if r.id not in self._pil:
                        self._pil[r.id] = r.load()
                    cache[r.id] = model_input_u8(self._pil[r.id], pre)
                else:
                    clean = self.get(entry, [r], CLEAN)[0]
                    seed = C.image_seed(r.id, cond.corruption, cond.severity)
                    cache[r.id] = C.corrupt(clean, cond.corruption, cond.severity, seed=seed)
            out.append(cache[r.id])
        return np.stack(out)
