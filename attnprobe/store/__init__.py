"""The results store: one SQLite file (`results.sqlite`) in an output directory, shared by every command and by any
number of attnprobe processes at once.

Evaluation writes raw results here; tables, figures and reports are drawn from it, never from live tensors.

Three kinds of rows:

* **Counting benchmarks** (clean accuracy, ImageNet-C/-P/-A/-R, PGD): a *cell* is one
  (model, checkpoint sha256, task, dataset fingerprint, preprocessing, condition, severity). A cell is evaluated
  in fixed *chunks* of its sorted sample list; each finished chunk is committed in its own transaction with its
  counts. A killed run loses at most the chunks in flight, and a rerun skips committed chunks, so nothing is
  counted twice. A cell is *done* once every chunk is in and `finish_cell` was called. A chunk may also carry its
  per-sample top-1 correctness (table `sample_bits`), written in the same transaction; reports use it for
  bootstraps paired over images. Processes sharing a store claim chunks before computing them (`leases`).
* **Diagnostics** (attention stability, overfocusing, head similarity): one value per
  (model, checkpoint, metric, dataset, condition, severity, image, layer, head); `head = -1` means
  "not per head" (e.g. head-averaged or head-pair metrics).
* **Artifacts**: files written beside the store (attention maps for figures), with their metadata.

Conventions: `severity = 0` means "not applicable" (clean data, ImageNet-A/R, PGD); `condition = "clean"` for clean
data. Rates are stored as counts, and diagnostics as fractions, never percentages.

Modules: `results` (`ResultsStore`), `keys` (`CellKey`, `DiagKey`, `ChunkCounts`), `cells` (chunks, per-sample
records, finished cells), `diagnostics`, `artifacts` (models and files), `leases` (who computes which chunk),
`connection` (SQLite connection, lock timeout, error mapping), `schema` (tables, recognition, upgrades), `files`
(file header, file system, atomic file writes), `errors`, `merge` (`merge_stores`).

Under torchrun only rank 0 opens a store (see `attnprobe.distributed`); independent processes (array jobs, a second
terminal) may all open the same store.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from attnprobe.store.errors import (NotAStoreError, StoreConflictError, StoreDamagedError, StoreError,
                                    StoreFullError, StoreLockedError, StoreReadOnlyError)
from attnprobe.store.files import write_atomically
from attnprobe.store.keys import CellKey, ChunkCounts, DiagKey
from attnprobe.store.leases import ChunkStates
from attnprobe.store.merge import MergeReport, merge_stores
from attnprobe.store.results import STORE_FILENAME, ResultsStore, check_location
from attnprobe.store.schema import APPLICATION_ID, SCHEMA_VERSION

__all__ = [
    "APPLICATION_ID", "SCHEMA_VERSION", "STORE_FILENAME", "CellKey", "ChunkCounts", "ChunkStates", "DiagKey",
    "MergeReport", "NotAStoreError", "ResultsStore", "StoreConflictError", "StoreDamagedError", "StoreError",
    "StoreFullError", "StoreLockedError", "StoreReadOnlyError", "as_dict", "check_location", "merge_stores",
    "write_atomically",
]


def as_dict(obj: Any) -> dict[str, Any]:
    """Dataclass → dict helper for JSON output."""
    return asdict(obj)
