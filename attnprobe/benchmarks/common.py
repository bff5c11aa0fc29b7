"""What every benchmark driver needs: the store key of a cell for a loaded model, and registering the model."""

from __future__ import annotations

from typing import Any

from attnprobe.store import CellKey, ResultsStore

__all__ = ["cell_key", "register_model"]


def cell_key(loaded: Any, task: str, dataset: str, condition: str, severity: int = 0) -> CellKey:
    """The key of one cell of `loaded` (a `LoadedModel`): model, checkpoint hash and preprocessing come from it."""
    return CellKey(model=loaded.name, checkpoint_sha256=loaded.checkpoint_sha256, task=task, dataset=dataset,
                   preprocessing=loaded.preprocessing.key(), condition=condition, severity=int(severity))


def register_model(loaded: Any, store: ResultsStore | None) -> None:
    """Record the model, its checkpoint path and card in the store (rank 0; a no-op without a store)."""
    if store is not None:
        path = getattr(loaded, "checkpoint_path", None)
        store.register_model(loaded.name, loaded.checkpoint_sha256, str(path) if path else None,
                             getattr(loaded, "card", None))
