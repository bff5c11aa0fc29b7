"""The diagnostics run: every model on the same image batches, one forward pass per condition group, values written
to the store (or kept in memory) as each batch ends, the few maps a figure needs saved beside the store."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from attnprobe.capture import AttentionCapture, no_token_attention_message
from attnprobe.data import corruptions as C
from attnprobe.data.images import ImageRecord, ImageSet, normalize_u8
from attnprobe.diagnostics.inputs import CLEAN, Condition, CorruptionSource, InputCache, ModelEntry
from attnprobe.diagnostics.maps import ARTIFACT_KIND, artifact_path, save_maps
from attnprobe.diagnostics.reducer import BatchReducer, Plan
from attnprobe.diagnostics.results import RunningStats, ranges, stored_stats
from attnprobe.engine.execution import Execution
from attnprobe.errors import UserError
from attnprobe.store import DiagKey, ResultsStore

__all__ = ["DiagnosticsRun", "Progress"]

#: `progress(finished, total)`: images just finished (summed over models) and the run's total still to compute.
Progress = Callable[[int, int], None]


def _diag_key(entry: ModelEntry, metric: str, dataset: str, cond: Condition) -> DiagKey:
    return DiagKey(model=entry.name, checkpoint_sha256=entry.checkpoint_sha256, metric=metric, dataset=dataset,
                   condition=cond.name, severity=cond.severity)


def _model_device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def _images_per_pass(e: ModelEntry, n: int) -> int:
    """Images per forward pass: all of a batch, but one for segmentation models.

    NOTE: a segmentation window (1024 x 1024 px, 64 x 64 tokens) has 4096 x 4096 maps: the clean and corrupted maps of
    one layer and one image are 1 GB in float32, so a batch of 16 would need 16 GB at every layer; one image per pass
    keeps memory flat (each layer's maps are reduced and released before the next layer runs).
    """
    return 1 if getattr(e.model, "task", None) == "segmentation" else max(n, 1)


class _Resume:
    """What the store already holds for one model: stored images per series, and saved map files."""

    def __init__(self, run: DiagnosticsRun, entry: ModelEntry) -> None:
        store = run.store
        self.images: dict[tuple[str, Condition], set[str]] = {}
        for metric, cond in run.plan.series():
            key = _diag_key(entry, metric, run.dataset_of(cond), cond)
            if store is not None and run.fresh:
                store.clear_diagnostics(key)
            self.images[(metric, cond)] = (store.diagnostic_images(key) if store is not None and not run.fresh
                                           else set())
        self.maps: set[tuple[str, Condition]] = set()
        if store is not None and not run.fresh:
            for a in run.stored_maps(entry):
                if Path(a["abspath"]).is_file():
                    self.maps.add((a["image"], Condition(None if a["condition"] == "clean" else a["condition"],
                                                         int(a["severity"]))))
        self._keep_ids, self._map_conds = run.keep_ids, [CLEAN, *run.plan.conditions]

    def needs(self, image_id: str) -> bool:
        """Whether any value or saved map of this image is still missing."""
        if any(image_id not in ids for ids in self.images.values()):
            return True
        return image_id in self._keep_ids and any((image_id, c) not in self.maps for c in self._map_conds)


class DiagnosticsRun:
    """One diagnostics command over several models; `run()` computes, the other methods read the results."""

    def __init__(self, plan: Plan, entries: Sequence[ModelEntry], images: ImageSet, store: ResultsStore | None,
                 batch_size: int, keep_maps: int | None, fresh: bool, progress: Progress | None,
                 maps_root: Path | None, corruption: CorruptionSource | None = None) -> None:
        if not entries:
            raise UserError("no model given; pass at least one --model")
        names = [(e.name, e.checkpoint_sha256) for e in entries]
        if len(set(names)) != len(names):
            raise UserError("the same model and checkpoint is listed twice; give each --model once")
        if len(images) == 0:
            raise UserError("no images to run on; check --data / --image / --n")
        if batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, got {batch_size}")
        self.plan, self.entries, self.images, self.store = plan, list(entries), images, store
        self.batch_size, self.fresh, self.progress = batch_size, fresh, progress
        self.corruption = corruption if corruption is not None else CorruptionSource()
        n_keep = len(images) if keep_maps is None else max(int(keep_maps), 0)
        self.keep_ids = set(images.ids[:n_keep])
        if self.keep_ids and store is None and maps_root is None:
            self.keep_ids = set()  # NOTE: nowhere to write maps without a store or an explicit folder
        self.maps_root = maps_root if maps_root is not None else (store.root if store is not None else None)
        self.stats: dict[tuple[int, str, Condition], RunningStats] = {}  # in-memory values (no store)
        self.layer_info: dict[int, list[dict[str, Any]]] = {}  # per model: `layer_meta` of each token layer
        self.notes: dict[int, dict[str, set[int]]] = {}
        self.artifacts: list[dict[str, Any]] = []

    # -- the run ----------------------------------------------------------------------------------------------
    def run(self) -> None:
        """Compute what the store does not hold yet, batch by batch, every model on the same batches."""
        for e in self.entries:
            problem = no_token_attention_message(e.model, e.name, need_token=True)
            if problem:
                raise UserError(problem)
        for e in self.entries:
            e.model.eval()
            if self.store is not None:
                self.store.register_model(e.name, e.checkpoint_sha256, e.checkpoint_path, e.card)
        resume = {id(e): _Resume(self, e) for e in self.entries}
        records = self.images.records
        total = sum(1 for r in records for e in self.entries if resume[id(e)].needs(r.id))
        for start in range(0, len(records), self.batch_size):
            batch = records[start:start + self.batch_size]
            inputs = InputCache(self.corruption)
            for e in self.entries:
                sub = [r for r in batch if resume[id(e)].needs(r.id)]
                step = _images_per_pass(e, len(sub))
                for i in range(0, len(sub), step):
                    self._run_batch(e, sub[i:i + step], resume[id(e)], inputs)
                    if self.progress is not None:
                        self.progress(len(sub[i:i + step]), total)
        for e in self.entries:
            if id(e) not in self.layer_info and records:
                self._describe(e, records[0])

    def _run_batch(self, e: ModelEntry, sub: list[ImageRecord], resume: _Resume, inputs: InputCache) -> None:
        device = _model_device(e.model)
        keep_pos = [i for i, r in enumerate(sub) if r.id in self.keep_ids]
        clean_u8 = inputs.get(e, sub, CLEAN)
        for gi, cond in enumerate(self.plan.groups()):
            with_clean = gi == 0  # the first forward group always carries the clean images
            parts = [clean_u8] + ([inputs.get(e, sub, cond)] if cond is not None else [])
            x = normalize_u8(np.concatenate(parts), e.preprocessing).to(device)
            reducer = BatchReducer(self.plan, len(sub), cond, with_clean, keep_pos)
            with torch.no_grad(), Execution(e.precision).autocast(device), \
                    AttentionCapture(e.model, reduce=reducer, keep_maps=False):
                e.model(x)
            self._learn(e, reducer)
            self._write_values(e, sub, reducer, resume)
            self._write_maps(e, sub, reducer, keep_pos, parts, cond, with_clean)

    def _describe(self, e: ModelEntry, record: ImageRecord) -> None:
        """Layer kinds, shapes and notes of a model none of whose images needed computing (a resumed run)."""
        plan = Plan(self.plan.command, [], self.plan.clean_metrics + self.plan.corrupted_metrics, [], False,
                    self.plan.k, self.plan.tau)
        x = normalize_u8(InputCache().get(e, [record], CLEAN), e.preprocessing).to(_model_device(e.model))
        reducer = BatchReducer(plan, 1, None, True, [])
        with torch.no_grad(), AttentionCapture(e.model, reduce=reducer, keep_maps=False):
            e.model(x)
        self._learn(e, reducer)

    def _learn(self, e: ModelEntry, reducer: BatchReducer) -> None:
        if not reducer.windows:
            raise UserError(f"{e.name}: the forward pass produced no token attention map; attnprobe cannot "
                            "diagnose this model")
        self.layer_info.setdefault(id(e), reducer.layers)
        notes = self.notes.setdefault(id(e), {})
        for what, layers in reducer.notes.items():
            notes.setdefault(what, set()).update(layers)

    def _write_values(self, e: ModelEntry, sub: list[ImageRecord], reducer: BatchReducer, resume: _Resume) -> None:
        for (metric, cond), per_layer in reducer.values.items():
            have = resume.images[(metric, cond)]
            fresh_rows = [i for i, r in enumerate(sub) if r.id not in have]
            if not fresh_rows:
                continue
            rows = []
            for layer, vals in sorted(per_layer.items()):
                as_list = vals.tolist()
                for i in fresh_rows:
                    v = as_list[i]
                    if isinstance(v, float):
                        rows.append((sub[i].id, layer, -1, v))
                    else:
                        rows.extend((sub[i].id, layer, h, hv) for h, hv in enumerate(v))
            if self.store is not None:
                self.store.add_diagnostics(_diag_key(e, metric, self.dataset_of(cond), cond), rows)
            else:
                stats = self.stats.setdefault((id(e), metric, cond), RunningStats())
                for layer, vals in per_layer.items():
                    stats.add_values(layer, vals[fresh_rows])
            have.update(sub[i].id for i in fresh_rows)

    def _write_maps(self, e: ModelEntry, sub: list[ImageRecord], reducer: BatchReducer, keep_pos: list[int],
                    inputs: list[np.ndarray], cond: Condition | None, with_clean: bool) -> None:
        if not keep_pos or self.maps_root is None:
            return
        conds = ([CLEAN] if with_clean else []) + ([cond] if cond is not None else [])
        for c in conds:
            u8 = inputs[0] if c.corruption is None else inputs[1]
            for pos in keep_pos:
                layers = reducer.kept.get((pos, c))
                if not layers:
                    continue
                r = sub[pos]
                path = artifact_path(self.maps_root, e, r.id, c, None if c.corruption is None else self.corruption.id)
                seed = None if c.corruption is None else C.image_seed(r.id, c.corruption, c.severity)
                meta = save_maps(path, e, self.dataset_of(c), r.id, c, seed, u8[pos], layers,
                                 reducer.kept_cls.get((pos, c), []), reducer.layers)
                if self.store is not None:
                    self.store.add_artifact(e.name, e.checkpoint_sha256, ARTIFACT_KIND, self.dataset_of(c), c.name,
                                            c.severity, r.id, path, meta=meta)
                self.artifacts.append({"model": e.name, "image": r.id, "condition": c.name, "severity": c.severity,
                                       "path": str(path)})

    # -- results ----------------------------------------------------------------------------------------------
    def stats_for(self, e: ModelEntry, metric: str, cond: Condition) -> RunningStats:
        """Statistics per (layer, head) of one series over this run's images (from the store when there is one)."""
        if self.store is None:
            return self.stats.get((id(e), metric, cond), RunningStats())
        return stored_stats(self.store, _diag_key(e, metric, self.dataset_of(cond), cond), self.images.ids)

    def dataset_of(self, cond: Condition) -> str:
        """The dataset id of `cond`'s series: the images', tagged with the corruption source for a corruption."""
        return self.corruption.dataset_of(self.images.dataset, cond)

    def stored_maps(self, e: ModelEntry) -> list[dict[str, Any]]:
        """The store's map artifacts of `e` on these images: clean ones, and corrupted ones of this run's source."""
        if self.store is None:
            return []
        wanted = {self.images.dataset, self.dataset_of(Condition("any", 1))}
        return [a for a in self.store.artifacts(model=e.name, checkpoint_sha256=e.checkpoint_sha256,
                                                kind=ARTIFACT_KIND) if a["dataset"] in wanted]

    def base(self, e: ModelEntry, cond: Condition) -> dict[str, Any]:
        """The fields every result entry starts with."""
        return {"model": e.name, "checkpoint_sha256": e.checkpoint_sha256, "dataset": self.dataset_of(cond),
                "condition": cond.name, "corruption": cond.corruption, "severity": cond.severity,
                "corruption_id": None if cond.corruption is None else self.corruption.id,
                "notes": self.model_notes(e)}

    def layer_meta(self, e: ModelEntry, layer: int) -> dict[str, Any]:
        """`name`, `kind`, `heads`, `queries`, `keys`, `windows` of a token-attention layer (name None if unknown)."""
        info = self.layer_info.get(id(e), [])
        return dict(info[layer]) if layer < len(info) else {"name": None}

    def model_notes(self, e: ModelEntry) -> list[str]:
        """What was left out for this model, one line each (e.g. head similarity of single-head layers)."""
        return [f"{what} (layers {ranges(layers)})" if layers != {-1} else what
                for what, layers in sorted(self.notes.get(id(e), {}).items())]
