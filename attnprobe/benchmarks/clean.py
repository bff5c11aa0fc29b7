"""Clean top-1 accuracy on an ImageNet-style validation folder (task "clean"), over the engine.

    from attnprobe.benchmarks.clean import evaluate_clean
    res = evaluate_clean(loaded, "/data/imagenet/val", store)      # a CellResult: res.top1_accuracy, res.n
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from attnprobe import distributed as D
from attnprobe.benchmarks.common import cell_key, register_model
from attnprobe.engine import CellResult, CellSpec, run_cells
from attnprobe.store import ResultsStore

__all__ = ["clean_cell", "evaluate_clean"]


def clean_cell(loaded: Any, val_dir: str | Path, limit: int | None = None,
               samples: list[tuple[str, int]] | None = None) -> CellSpec:
    """The clean-accuracy cell of a validation folder (`<val>/<wnid>/*`), with the model's eval transform.

    `samples` is the folder's listing if the caller already scanned it (`attnprobe.data.folders.scan_class_folders`).
    """
    from attnprobe.data.folders import ImageFolderDataset
    from attnprobe.data.imagenet_c import CleanInput

    ds = ImageFolderDataset(val_dir, CleanInput(loaded.preprocessing), samples=samples, limit=limit,
                            kind="imagenet_val")
    return CellSpec(cell_key(loaded, "clean", ds.fingerprint, "clean", 0), ds,
                    {"source": "clean", "root": str(Path(val_dir).expanduser().resolve()), "limit": limit})


def evaluate_clean(loaded: Any, val_dir: str | Path, store: ResultsStore | None, *, limit: int | None = None,
                   samples: list[tuple[str, int]] | None = None, **run_kw: Any) -> CellResult:
    """Top-1 accuracy of `loaded` on a clean ImageNet-style folder (labels from the canonical wnid order).

    `samples`: the folder's listing if already scanned. `run_kw` goes to `run_cells` (batch_size, workers, device,
    fresh, strict, progress, ...).
    """
    spec = clean_cell(loaded, val_dir, limit, samples)
    if D.is_main():
        register_model(loaded, store)
    return run_cells(loaded.model, [spec], store, **run_kw)[0]
