"""The evaluation engine: one resumable, chunked, sharded loop for every counting benchmark.

A run evaluates a list of *cells* (one `CellSpec`: a store key + a dataset) with a model that is loaded once, and
writes counts to the results store in fixed-size *chunks* of each cell's sorted sample list. The benchmark drivers
in `attnprobe.benchmarks` build cells and scorers; this package knows nothing about ImageNet.

    from attnprobe.engine import CellSpec, run_cells
    from attnprobe.store import CellKey, ResultsStore

    key = CellKey(model=lm.name, checkpoint_sha256=lm.checkpoint_sha256, task="imagenet_r",
                  dataset=ds.fingerprint, preprocessing=lm.preprocessing.key(), condition="imagenet_r")
    with ResultsStore("results/") as store:
        [res] = run_cells(lm.model, [CellSpec(key, ds)], store, batch_size=128, scorer=my_scorer)

Modules: `loop` (`run_cells`), `plan` (each cell's state when a run starts), `claims` (which chunks this process
computes next: leases in the store, shared by other processes, and the DataLoader's batch sampler), `loader`
(DataLoader defaults, the cells end to end), `scoring` (`Scorer` and the top-1 scorers), `cells` (`CellSpec`,
`CellResult`), `progress` (`ProgressHook`, `RichProgress`), `execution` (precision, channels_last, torch.compile,
and the store-key tag of reduced precision), `device_input` (decoding and transforming images on the compute
device).

Several processes (independent jobs, a second terminal) may run `run_cells` on the same store at once: they split
the chunks between them, and each returns the totals of the whole cells.

Dataset contract: `len(ds)` samples in a fixed (sorted) order; `ds[i]` returns `(input, target)` or
`(input, target, ok)` where `ok=False` marks an unreadable sample (its input must still have the right shape, e.g.
zeros): it is left out of the scoring and counted as `skipped`. Optional `ds.sample_name(i) -> str` names a sample
in warnings. Inputs may have any shape the model/scorer accepts (images `(3, H, W)`, videos `(T, 3, H, W)`).
Optional `ds.encoded(progressive=..., in_worker=...)` returns the same samples as encoded files
(`attnprobe.data.encoded.EncodedImages`) for the device input path, or None (see `run_cells(decode=...)`).

Distributed: start the same command with `torchrun`, call `attnprobe.distributed.init_from_env()` first, open the
store on rank 0 only and pass `store=None` elsewhere; `run_cells` does the rest and returns rank 0's totals on
every rank.
"""

from attnprobe.engine.cells import CellResult, CellSpec, finite
from attnprobe.engine.execution import PRECISIONS, Execution
from attnprobe.engine.loader import default_workers, loader_settings
from attnprobe.engine.loop import CHUNK_SIZE, run_cells
from attnprobe.engine.progress import NullProgress, ProgressHook, RichProgress
from attnprobe.engine.scoring import Scorer, restricted_top1_scorer, top1_scorer

__all__ = [
    "CHUNK_SIZE",
    "CellResult",
    "CellSpec",
    "Execution",
    "NullProgress",
    "PRECISIONS",
    "ProgressHook",
    "RichProgress",
    "Scorer",
    "default_workers",
    "finite",
    "loader_settings",
    "restricted_top1_scorer",
    "run_cells",
    "top1_scorer",
]
