"""Attention diagnostics drivers: stability, overfocusing, head similarity, and saved maps for figures.

Each driver runs one or more models on the *same* images and the *same* corruption draws (seeded per image with
`attnprobe.data.corruptions.image_seed`), captures token attention with `AttentionCapture`, reduces every layer's
maps to per-image values as soon as the layer has run (nothing N x N outlives its layer, except the few maps kept for
figures), and writes the values to the results store. A rerun skips images already stored; `fresh=True` recomputes.

    from attnprobe.diagnostics import ModelEntry, stability
    from attnprobe.data.selection import select_images
    entries = [ModelEntry.from_loaded(zoo.load_model("fan_b", ckpt_a)), ModelEntry.from_loaded(...)]
    res = stability(entries, select_images(data="val/", n=64), "gaussian_noise", [3], store=ResultsStore("out"))
    res.to_json()   # {"results": [{"model": ..., "layers": [{"layer": 0, "mean_cosine": ...}, ...]}, ...]}

Images are prepared as the model's evaluation transform does (resize, centre crop), corrupted *after* the crop (the
ImageNet-C recipe), then normalised. Models with the same input size therefore see pixel-identical corrupted images;
models with different input sizes get the same seeds (but necessarily different pixels). For a corrupted condition the clean and corrupted images of a batch go through the
model in one forward pass ([clean; corrupted]) and each layer's map is split in two halves.

Stored values (`ResultsStore.add_diagnostics`, one row per image, layer and head; `head = -1` when not per head):

* `attention_cosine` (per head; condition = corruption, severity 1-5): cosine of clean vs corrupted maps.
* `head_similarity` (head -1; condition `clean` or a corruption): mean cosine over head pairs.
* `row_similarity`, `topk_column_mass`, `row_entropy`, `column_gini` (head -1): overfocusing measures.

Windowed attention (Swin): every metric is computed per window and averaged over the windows of an image.

Artifact format (`kind="attention_maps"`, one file per model, image and condition; registered with
`ResultsStore.add_artifact`, path relative to the store root):

    <out>/maps/<model>/<checkpoint sha256[:12]>/<condition>[-s<severity>]/<image slug>.npz

    image       uint8 (S, S, 3)   the model input before normalisation (clean, or corrupted with the stored seed)
    attn        float16 (L, H, N, N)   token attention of every layer, depth order, when all layers share a shape;
                otherwise (Swin) attn_000, attn_001, ... float16 (nW, H, n, n), one per layer
    cls_attn    float16 (Lc, H, 1, N + 1)   class-attention maps (FAN / CaiT), only when the model has them
    layer_names str (L,)   module names of the token-attention layers
    meta        str   JSON: format_version, model, checkpoint_sha256, dataset, image, condition, severity, seed,
                      preprocessing, windows (per layer), num_prefix_tokens (class/distillation tokens in front of
                      the patch tokens, 0 for FAN/RVT), grid ([h, w] of the patch tokens when square)

`attnprobe report` draws the paper's attention figures (Fig. 1, 3, 4, supplementary Fig. I) from these files.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from attnprobe.capture import AttentionCapture, LayerMap, find_attention_layers
from attnprobe.data import corruptions as C
from attnprobe.data.images import ImageSet, model_input_u8, normalize_u8
from attnprobe.errors import UserError
from attnprobe.metrics import OVERFOCUS_METRICS, attention_cosine, head_similarity, overfocusing, window_mean
from attnprobe.store import DiagKey, ResultsStore, write_atomically

__all__ = [
    "ARTIFACT_KIND", "Condition", "DiagnosticsResult", "ModelEntry", "attention_maps", "heads", "overfocus",
    "stability", "load_maps",
]

ARTIFACT_KIND = "attention_maps"
ARTIFACT_VERSION = 1
DEFAULT_BATCH_SIZE = 16
DEFAULT_KEEP_MAPS = 2
STABILITY_METRIC = "attention_cosine"
HEADS_METRIC = "head_similarity"
_SQL_CHUNK = 500

#: `progress(finished, total)`: images just finished (summed over models) and the run's total still to compute.
Progress = Callable[[int, int], None]


# -- inputs -----------------------------------------------------------------------------------------------------------
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
    """

    name: str
    model: nn.Module
    checkpoint_sha256: str = "random-init"
    preprocessing: Any = None
    checkpoint_path: str | None = None
    card: dict[str, Any] = field(default_factory=dict)

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


# -- outputs ----------------------------------------------------------------------------------------------------------
class _Stats:
    """Running count / sum / sum of squares / min / max per (layer, head)."""

    def __init__(self) -> None:
        self.cells: dict[tuple[int, int], list[float]] = {}

    def add(self, layer: int, head: int, n: float, s: float, ss: float, lo: float, hi: float) -> None:
        c = self.cells.get((layer, head))
        if c is None:
            self.cells[(layer, head)] = [n, s, ss, lo, hi]
        else:
            c[0] += n
            c[1] += s
            c[2] += ss
            c[3] = min(c[3], lo)
            c[4] = max(c[4], hi)

    def add_values(self, layer: int, values: torch.Tensor) -> None:
        """values: (B,) head-free or (B, H) per head."""
        v = values.detach().double().cpu()
        if v.ndim == 1:
            self.add(layer, -1, v.numel(), v.sum().item(), (v * v).sum().item(), v.min().item(), v.max().item())
            return
        for h in range(v.shape[1]):
            col = v[:, h]
            self.add(layer, h, col.numel(), col.sum().item(), (col * col).sum().item(), col.min().item(),
                     col.max().item())

    def layer_summary(self, layer: int) -> dict[str, Any] | None:
        cells = {h: c for (lay, h), c in self.cells.items() if lay == layer}
        if not cells:
            return None
        n = sum(c[0] for c in cells.values())
        s = sum(c[1] for c in cells.values())
        ss = sum(c[2] for c in cells.values())
        mean = s / n
        var = max(ss / n - mean * mean, 0.0)
        out = {"mean": mean, "std": math.sqrt(var), "min": min(c[3] for c in cells.values()),
               "max": max(c[4] for c in cells.values()), "n": int(n)}
        heads = sorted(h for h in cells if h >= 0)
        if heads:
            out["per_head"] = [cells[h][1] / cells[h][0] for h in heads]
            out["n_images"] = int(cells[heads[0]][0])
        else:
            out["n_images"] = int(n)
        return out

    def layers(self) -> list[int]:
        return sorted({lay for lay, _ in self.cells})

    def overall(self) -> float | None:
        n = sum(c[0] for c in self.cells.values())
        return sum(c[1] for c in self.cells.values()) / n if n else None


@dataclass
class DiagnosticsResult:
    """What a driver returns: one entry per (model, condition), JSON-ready via `to_json()`."""

    command: str
    results: list[dict[str, Any]]
    out: str | None = None
    artifacts: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        payload: dict[str, Any] = {"command": self.command, "results": self.results}
        if self.out:
            payload["out"] = self.out
        return payload


# -- the engine -------------------------------------------------------------------------------------------------------
@dataclass
class _Plan:
    """What one command computes: which conditions, which series, which maps to keep."""

    command: str
    conditions: list[Condition]  # corrupted conditions (each forwarded together with the clean images)
    clean_metrics: list[str]  # metrics stored for the clean condition
    corrupted_metrics: list[str]  # metrics stored for each corrupted condition (excluding attention_cosine)
    cosine: bool  # attention_cosine of clean vs each corrupted condition
    k: int = 5
    tau: float = 2.0

    def series(self) -> list[tuple[str, Condition]]:
        out = [(m, CLEAN) for m in self.clean_metrics]
        for cond in self.conditions:
            out += [(m, cond) for m in self.corrupted_metrics]
            if self.cosine:
                out.append((STABILITY_METRIC, cond))
        return out

    def groups(self) -> list[Condition | None]:
        """Forward groups: each corrupted condition (with the clean half), or clean alone when there is none."""
        return list(self.conditions) if self.conditions else [None]


def _diag_key(entry: ModelEntry, metric: str, dataset: str, cond: Condition) -> DiagKey:
    return DiagKey(model=entry.name, checkpoint_sha256=entry.checkpoint_sha256, metric=metric, dataset=dataset,
                   condition=cond.name, severity=cond.severity)


def _slug(text: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[-80:] or "image"
    return f"{safe}-{hashlib.sha1(text.encode('utf-8')).hexdigest()[:8]}"


def _artifact_path(root: Path, entry: ModelEntry, image_id: str, cond: Condition) -> Path:
    sub = cond.name if cond.corruption is None else f"{cond.name}-s{cond.severity}"
    return root / "maps" / _slug(entry.name) / entry.checkpoint_sha256.replace(":", "_")[:12] / sub / \
        f"{_slug(image_id)}.npz"


def _model_device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def _num_prefix_tokens(model: nn.Module, n_tokens: int) -> int:
    prefix = getattr(model, "num_prefix_tokens", None)
    if isinstance(prefix, int):
        return prefix
    # NOTE: without the attribute, a few extra tokens in front of a square grid are taken as class/register tokens
    extra = n_tokens - math.isqrt(n_tokens) ** 2
    return extra if extra <= 8 else 0


class _BatchReducer:
    """The per-layer `reduce` callback for one forward pass of [clean; corrupted] (or clean only) images."""

    def __init__(self, plan: _Plan, n_images: int, cond: Condition | None, with_clean: bool,
                 keep_positions: Sequence[int]) -> None:
        self.plan, self.n, self.cond, self.with_clean = plan, n_images, cond, with_clean
        self.keep = list(keep_positions)
        self.values: dict[tuple[str, Condition], dict[int, torch.Tensor]] = {}
        self.kept: dict[tuple[int, Condition], list[np.ndarray]] = {}
        self.kept_cls: dict[tuple[int, Condition], list[np.ndarray]] = {}
        self.windows: list[int] = []

    def _put(self, metric: str, cond: Condition, layer: int, values: torch.Tensor) -> None:
        self.values.setdefault((metric, cond), {})[layer] = values.detach().float().cpu()

    def _per_condition(self, part: torch.Tensor, nw: int, cond: Condition, metrics: list[str], layer: int) -> None:
        if HEADS_METRIC in metrics:
            if part.shape[1] < 2:
                raise UserError(f"head similarity needs at least 2 heads, but layer {layer} has {part.shape[1]}")
            self._put(HEADS_METRIC, cond, layer, window_mean(head_similarity(part), nw))
        wanted = [m for m in metrics if m in OVERFOCUS_METRICS]
        if wanted:
            of = overfocusing(part, k=self.plan.k, tau=self.plan.tau)
            for m in wanted:
                self._put(m, cond, layer, window_mean(of[m], nw))

    def _keep(self, store: dict, part: torch.Tensor, nw: int, cond: Condition) -> None:
        if not self.keep or part.shape[0] != self.n * nw:
            return
        per_image = part.reshape(self.n, nw, *part.shape[1:])  # (B, nW, H, n, n)
        for pos in self.keep:
            arr = per_image[pos]
            arr = arr[0] if nw == 1 else arr  # (H, N, N) for global attention, (nW, H, n, n) for windows
            store.setdefault((pos, cond), []).append(arr.to(torch.float16).cpu().numpy())

    def __call__(self, lm: LayerMap) -> None:
        attn = lm.attn
        parts_n = 2 if self.cond is not None else 1
        total = self.n * parts_n
        nw = attn.shape[0] // total if attn.shape[0] % total == 0 else 1
        size = self.n * nw
        clean = attn[:size]
        corr = attn[size:2 * size] if self.cond is not None else None
        if lm.kind != "token":
            if self.with_clean:
                self._keep(self.kept_cls, clean, 1, CLEAN)
            if corr is not None:
                self._keep(self.kept_cls, corr, 1, self.cond)
            return
        layer = lm.index
        self.windows.append(nw)
        if self.with_clean:
            self._per_condition(clean, nw, CLEAN, self.plan.clean_metrics, layer)
            self._keep(self.kept, clean, nw, CLEAN)
        if corr is not None:
            self._per_condition(corr, nw, self.cond, self.plan.corrupted_metrics, layer)
            if self.plan.cosine:
                self._put(STABILITY_METRIC, self.cond, layer, window_mean(attention_cosine(clean, corr), nw))
            self._keep(self.kept, corr, nw, self.cond)


class _Engine:
    def __init__(self, plan: _Plan, entries: Sequence[ModelEntry], images: ImageSet, store: ResultsStore | None,
                 batch_size: int, keep_maps: int | None, fresh: bool, progress: Progress | None,
                 maps_root: Path | None) -> None:
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
        n_keep = len(images) if keep_maps is None else max(int(keep_maps), 0)
        self.keep_ids = set(images.ids[:n_keep])
        if self.keep_ids and store is None and maps_root is None:
            self.keep_ids = set()  # NOTE: nowhere to write maps without a store or an explicit folder
        self.maps_root = maps_root if maps_root is not None else (store.root if store is not None else None)
        self.stats: dict[tuple[int, str, Condition], _Stats] = {}
        self.layer_names: dict[int, list[str]] = {}
        self.windows: dict[int, list[int]] = {}
        self.artifacts: list[dict[str, Any]] = []

    # -- bookkeeping ------------------------------------------------------------------------------------------
    def _done(self, entry: ModelEntry) -> dict[tuple[str, Condition], set[str]]:
        done: dict[tuple[str, Condition], set[str]] = {}
        for metric, cond in self.plan.series():
            key = _diag_key(entry, metric, self.images.dataset, cond)
            if self.store is None:
                done[(metric, cond)] = set()
            elif self.fresh:
                self.store.clear_diagnostics(key)
                done[(metric, cond)] = set()
            else:
                done[(metric, cond)] = self.store.diagnostic_images(key)
        return done

    def _artifact_done(self, entry: ModelEntry) -> set[tuple[str, Condition]]:
        if self.store is None or self.fresh:
            return set()
        have = set()
        for a in self.store.artifacts(model=entry.name, checkpoint_sha256=entry.checkpoint_sha256, kind=ARTIFACT_KIND,
                                      dataset=self.images.dataset):
            if Path(a["abspath"]).is_file():
                have.add((a["image"], Condition(None if a["condition"] == "clean" else a["condition"],
                                                int(a["severity"]))))
        return have

    def _conditions_of_maps(self) -> list[Condition]:
        return [CLEAN, *self.plan.conditions]  # the first forward group always carries the clean images

    # -- the run ----------------------------------------------------------------------------------------------
    def run(self) -> None:
        for e in self.entries:
            e.model.eval()
            if self.store is not None:
                self.store.register_model(e.name, e.checkpoint_sha256, e.checkpoint_path, e.card)
            find = [layer for layer in find_attention_layers(e.model) if layer.kind == "token"]
            self.layer_names[id(e)] = [layer.name for layer in find]
        done = {id(e): self._done(e) for e in self.entries}
        art_done = {id(e): self._artifact_done(e) for e in self.entries}
        map_conds = self._conditions_of_maps()

        def needs(e: ModelEntry, image_id: str) -> bool:
            if any(image_id not in ids for ids in done[id(e)].values()):
                return True
            return image_id in self.keep_ids and any((image_id, c) not in art_done[id(e)] for c in map_conds)

        records = self.images.records
        total = sum(1 for r in records for e in self.entries if needs(e, r.id))
        for start in range(0, len(records), self.batch_size):
            batch = records[start:start + self.batch_size]
            pil_cache: dict[str, Any] = {}
            u8_cache: dict[tuple[str, Condition], dict[str, np.ndarray]] = {}
            for e in self.entries:
                sub = [r for r in batch if needs(e, r.id)]
                if not sub:
                    continue
                self._run_batch(e, sub, done[id(e)], pil_cache, u8_cache)
                if self.progress is not None:
                    self.progress(len(sub), total)

    def _inputs(self, e: ModelEntry, sub: list, cond: Condition, pil_cache: dict, u8_cache: dict) -> np.ndarray:
        pre = e.preprocessing
        key = (pre.key(), cond)
        cache = u8_cache.setdefault(key, {})
        out = []
        for r in sub:
            if r.id not in cache:
                if cond.corruption is None:
                    if r.id not in pil_cache:
                        pil_cache[r.id] = r.load()
                    cache[r.id] = model_input_u8(pil_cache[r.id], pre)
                else:
                    clean = self._inputs(e, [r], CLEAN, pil_cache, u8_cache)[0]
                    seed = C.image_seed(r.id, cond.corruption, cond.severity)
                    cache[r.id] = C.corrupt(clean, cond.corruption, cond.severity, seed=seed)
            out.append(cache[r.id])
        return np.stack(out)

    def _run_batch(self, e: ModelEntry, sub: list, done: dict, pil_cache: dict, u8_cache: dict) -> None:
        device = _model_device(e.model)
        keep_pos = [i for i, r in enumerate(sub) if r.id in self.keep_ids]
        clean_u8 = self._inputs(e, sub, CLEAN, pil_cache, u8_cache)
        for gi, cond in enumerate(self.plan.groups()):
            with_clean = gi == 0
            parts = [clean_u8]
            if cond is not None:
                parts.append(self._inputs(e, sub, cond, pil_cache, u8_cache))
            x = normalize_u8(np.concatenate(parts), e.preprocessing).to(device)
            reducer = _BatchReducer(self.plan, len(sub), cond, with_clean, keep_pos)
            with torch.no_grad(), AttentionCapture(e.model, reduce=reducer, keep_maps=False):
                e.model(x)
            if not reducer.windows:
                raise UserError(f"{e.name}: the forward pass produced no token attention map; attnprobe cannot "
                                "diagnose this model")
            self.windows[id(e)] = reducer.windows
            self._write(e, sub, reducer, done)
            self._write_maps(e, sub, reducer, keep_pos, [clean_u8] + parts[1:], cond, with_clean)

    def _write(self, e: ModelEntry, sub: list, reducer: _BatchReducer, done: dict) -> None:
        for (metric, cond), per_layer in reducer.values.items():
            have = done[(metric, cond)]
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
                self.store.add_diagnostics(_diag_key(e, metric, self.images.dataset, cond), rows)
            else:
                stats = self.stats.setdefault((id(e), metric, cond), _Stats())
                for layer, vals in per_layer.items():
                    stats.add_values(layer, vals[fresh_rows])
            have.update(sub[i].id for i in fresh_rows)

    def _write_maps(self, e: ModelEntry, sub: list, reducer: _BatchReducer, keep_pos: list[int],
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
                path = _artifact_path(self.maps_root, e, r.id, c)
                seed = None if c.corruption is None else C.image_seed(r.id, c.corruption, c.severity)
                meta = self._save_npz(path, e, r.id, c, seed, u8[pos], layers, reducer.kept_cls.get((pos, c), []),
                                      reducer.windows)
                info = {"model": e.name, "image": r.id, "condition": c.name, "severity": c.severity,
                        "path": str(path)}
                if self.store is not None:
                    self.store.add_artifact(e.name, e.checkpoint_sha256, ARTIFACT_KIND, self.images.dataset, c.name,
                                            c.severity, r.id, path, meta=meta)
                self.artifacts.append(info)

    def _save_npz(self, path: Path, e: ModelEntry, image_id: str, cond: Condition, seed: int | None,
                  image: np.ndarray, layers: list[np.ndarray], cls_layers: list[np.ndarray],
                  windows: list[int]) -> dict[str, Any]:
        names = self.layer_names.get(id(e), [])
        arrays: dict[str, np.ndarray] = {"image": np.asarray(image, dtype=np.uint8)}
        if len({a.shape for a in layers}) == 1 and all(w == 1 for w in windows):
            arrays["attn"] = np.stack(layers)
        else:
            for i, a in enumerate(layers):
                arrays[f"attn_{i:03d}"] = a
        if cls_layers and len({a.shape for a in cls_layers}) == 1:
            arrays["cls_attn"] = np.stack(cls_layers)
        arrays["layer_names"] = np.array(names if len(names) == len(layers) else [f"layer{i}" for i in
                                                                                  range(len(layers))])
        n_tokens = int(layers[0].shape[-1])
        prefix = _num_prefix_tokens(e.model, n_tokens) if windows and windows[0] == 1 else 0
        side = math.isqrt(n_tokens - prefix)
        meta = {"format_version": ARTIFACT_VERSION, "model": e.name, "checkpoint_sha256": e.checkpoint_sha256,
                "dataset": self.images.dataset, "image": image_id, "condition": cond.name, "severity": cond.severity,
                "seed": seed, "seed_scheme": C.SEED_SCHEME if seed is not None else None,
                "preprocessing": e.preprocessing.key(), "windows": list(windows), "num_prefix_tokens": prefix,
                "grid": [side, side] if side * side == n_tokens - prefix else None, "num_layers": len(layers)}
        arrays["meta"] = np.array(json.dumps(meta))
        # NOTE: uncompressed: float16 attention barely compresses (~10%), and zlib took seconds per FAN-B image,
        # more than the forward pass itself; only the few images a figure needs are saved. A temporary name per
        # process: two runs on one store may write the same file at once.
        write_atomically(path, lambda tmp: np.savez(tmp, **arrays), "an attention-map file")
        return meta

    # -- summaries --------------------------------------------------------------------------------------------
    def stats_for(self, e: ModelEntry, metric: str, cond: Condition) -> _Stats:
        if self.store is None:
            return self.stats.get((id(e), metric, cond), _Stats())
        key = _diag_key(e, metric, self.images.dataset, cond)
        stats = _Stats()
        ids = self.images.ids
        where = " AND ".join(f"{c} = ?" for c in ("model", "checkpoint_sha256", "metric", "dataset", "condition",
                                                  "severity"))
        for i in range(0, len(ids), _SQL_CHUNK):
            chunk = ids[i:i + _SQL_CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self.store.query(
                f"SELECT layer, head, COUNT(*), SUM(value), SUM(value * value), MIN(value), MAX(value) "
                f"FROM diagnostics WHERE {where} AND image IN ({marks}) GROUP BY layer, head",
                (*key.as_tuple(), *chunk))
            for r in rows:
                stats.add(int(r[0]), int(r[1]), r[2], r[3], r[4], r[5], r[6])
        return stats

    def base(self, e: ModelEntry, cond: Condition) -> dict[str, Any]:
        return {"model": e.name, "checkpoint_sha256": e.checkpoint_sha256, "dataset": self.images.dataset,
                "condition": cond.name, "corruption": cond.corruption, "severity": cond.severity}

    def layer_name(self, e: ModelEntry, layer: int) -> str | None:
        names = self.layer_names.get(id(e), [])
        return names[layer] if layer < len(names) else None


def _round(x: float | None, digits: int = 6) -> float | None:
    return None if x is None else round(float(x), digits)


# -- public drivers ---------------------------------------------------------------------------------------------------
def stability(entries: Sequence[ModelEntry], images: ImageSet, corruption: str, severities: Sequence[int] = (3,), *,
              store: ResultsStore | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
              keep_maps: int = DEFAULT_KEEP_MAPS, fresh: bool = False,
              progress: Progress | None = None) -> DiagnosticsResult:
    """Attention stability: per image, layer and head, cosine between clean and corrupted maps.

    Args:
        entries: the models (all see the same images and corruption draws).
        images: the images (`attnprobe.data.selection.select_images`).
        corruption: corruption name; severities: 1-5 each.
        store: results store (values, resume, saved maps); None keeps results in memory only.
        batch_size: images per forward pass (each pass holds the clean and the corrupted copy).
        keep_maps: save full maps of the first this-many images (clean and corrupted) for figures.
        fresh: drop this series' stored values first and recompute.
        progress: `progress(finished, total)` after each batch (images summed over models).

    Returns:
        One result per (model, severity): `mean_cosine` over layers, heads and images, and `layers`, each with
        `layer`, `name`, `mean_cosine`, `std_cosine`, `min_cosine`, `max_cosine`, `per_head`, `n_images`.
    """
    conds = corrupted_conditions(corruption, severities)
    plan = _Plan("stability", conds, clean_metrics=[], corrupted_metrics=[], cosine=True)
    eng = _Engine(plan, entries, images, store, batch_size, keep_maps, fresh, progress, None)
    eng.run()
    results = []
    for e in entries:
        for cond in conds:
            st = eng.stats_for(e, STABILITY_METRIC, cond)
            layers = []
            for layer in st.layers():
                s = st.layer_summary(layer)
                layers.append({"layer": layer, "name": eng.layer_name(e, layer), "mean_cosine": _round(s["mean"]),
                               "std_cosine": _round(s["std"]), "min_cosine": _round(s["min"]),
                               "max_cosine": _round(s["max"]), "per_head": [_round(v) for v in s.get("per_head", [])],
                               "n_images": s["n_images"]})
            results.append({**eng.base(e, cond), "metric": STABILITY_METRIC, "mean_cosine": _round(st.overall()),
                            "n_images": max((lay["n_images"] for lay in layers), default=0), "layers": layers})
    return DiagnosticsResult("stability", results, str(store.root) if store else None, eng.artifacts)


def _with_clean(corruption: str | None, severities: Sequence[int]) -> list[Condition]:
    return corrupted_conditions(corruption, severities) if corruption else []


def overfocus(entries: Sequence[ModelEntry], images: ImageSet, corruption: str | None = None,
              severities: Sequence[int] = (3,), *, k: int = 5, tau: float = 2.0, store: ResultsStore | None = None,
              batch_size: int = DEFAULT_BATCH_SIZE, keep_maps: int = 0, fresh: bool = False,
              progress: Progress | None = None) -> DiagnosticsResult:
    """Overfocusing measures per layer on clean images (and corrupted ones when `corruption` is given).

    Returns:
        One result per (model, condition), each layer with the means over images of `row_similarity`,
        `topk_column_mass`, `row_entropy`, `column_gini`; the result's top level has their means over layers.
    """
    if k < 1:
        raise UserError(f"--k must be at least 1, got {k}")
    if tau <= 0:
        raise UserError(f"--tau must be positive, got {tau}")
    conds = _with_clean(corruption, severities)
    metrics = list(OVERFOCUS_METRICS)
    plan = _Plan("overfocus", conds, clean_metrics=metrics, corrupted_metrics=metrics, cosine=False, k=k, tau=tau)
    eng = _Engine(plan, entries, images, store, batch_size, keep_maps, fresh, progress, None)
    eng.run()
    results = []
    for e in entries:
        for cond in [CLEAN, *conds]:
            per_metric = {m: eng.stats_for(e, m, cond) for m in metrics}
            layer_ids = sorted({lay for st in per_metric.values() for lay in st.layers()})
            layers = []
            for layer in layer_ids:
                row: dict[str, Any] = {"layer": layer, "name": eng.layer_name(e, layer)}
                for m, st in per_metric.items():
                    s = st.layer_summary(layer)
                    row[m] = _round(s["mean"]) if s else None
                    row[f"{m}_std"] = _round(s["std"]) if s else None
                    row["n_images"] = s["n_images"] if s else 0
                layers.append(row)
            results.append({**eng.base(e, cond), "k": k, "tau": tau,
                            **{m: _round(per_metric[m].overall()) for m in metrics},
                            "n_images": max((lay["n_images"] for lay in layers), default=0), "layers": layers})
    return DiagnosticsResult("overfocus", results, str(store.root) if store else None, eng.artifacts)


def heads(entries: Sequence[ModelEntry], images: ImageSet, corruption: str | None = None,
          severities: Sequence[int] = (3,), *, store: ResultsStore | None = None,
          batch_size: int = DEFAULT_BATCH_SIZE, keep_maps: int = 0, fresh: bool = False,
          progress: Progress | None = None) -> DiagnosticsResult:
    """Head similarity per layer (mean cosine over head pairs; the paper's 0.63 vs 0.27 is the mean over layers).

    Returns:
        One result per (model, condition): `head_similarity` (mean over layers and images) and `layers`, each with
        `head_similarity`, `std`, `min`, `max`, `n_images`.
    """
    conds = _with_clean(corruption, severities)
    plan = _Plan("heads", conds, clean_metrics=[HEADS_METRIC], corrupted_metrics=[HEADS_METRIC], cosine=False)
    eng = _Engine(plan, entries, images, store, batch_size, keep_maps, fresh, progress, None)
    eng.run()
    results = []
    for e in entries:
        for cond in [CLEAN, *conds]:
            st = eng.stats_for(e, HEADS_METRIC, cond)
            layers = []
            for layer in st.layers():
                s = st.layer_summary(layer)
                layers.append({"layer": layer, "name": eng.layer_name(e, layer), "head_similarity": _round(s["mean"]),
                               "std": _round(s["std"]), "min": _round(s["min"]), "max": _round(s["max"]),
                               "n_images": s["n_images"]})
            means = [lay["head_similarity"] for lay in layers]
            results.append({**eng.base(e, cond), "metric": HEADS_METRIC,
                            "head_similarity": _round(sum(means) / len(means)) if means else None,
                            "n_images": max((lay["n_images"] for lay in layers), default=0), "layers": layers})
    return DiagnosticsResult("heads", results, str(store.root) if store else None, eng.artifacts)


def attention_maps(entries: Sequence[ModelEntry], images: ImageSet, corruption: str | None = None,
                   severities: Sequence[int] = (3,), *, store: ResultsStore | None = None,
                   out_dir: str | Path | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                   fresh: bool = False, progress: Progress | None = None) -> DiagnosticsResult:
    """Save every layer's maps of every image (clean, and corrupted when `corruption` is given) as `.npz` artifacts.

    Args:
        out_dir: where `maps/` goes when there is no store (with a store: the store's folder).

    Returns:
        One result per model: `artifacts` (image, condition, severity, path) and `layers` (layer, name, shape).
    """
    if store is None and out_dir is None:
        raise UserError("attention maps need somewhere to go; pass --out DIR")
    conds = _with_clean(corruption, severities)
    plan = _Plan("attention", conds, clean_metrics=[], corrupted_metrics=[], cosine=False)
    eng = _Engine(plan, entries, images, store, batch_size, None, fresh, progress,
                  Path(out_dir).expanduser().resolve() if store is None else None)
    eng.run()
    results = []
    for e in entries:
        arts = [a for a in eng.artifacts if a["model"] == e.name]
        if store is not None:
            for a in store.artifacts(model=e.name, checkpoint_sha256=e.checkpoint_sha256, kind=ARTIFACT_KIND,
                                     dataset=images.dataset):
                wanted = a["image"] in eng.keep_ids and any(
                    a["condition"] == c.name and int(a["severity"]) == c.severity for c in [CLEAN, *conds])
                if wanted and not any(x["path"] == a["abspath"] for x in arts):
                    arts.append({"model": e.name, "image": a["image"], "condition": a["condition"],
                                 "severity": int(a["severity"]), "path": a["abspath"]})
        layers = [{"layer": i, "name": n} for i, n in enumerate(eng.layer_names.get(id(e), []))]
        results.append({"model": e.name, "checkpoint_sha256": e.checkpoint_sha256, "dataset": images.dataset,
                        "artifacts": sorted(arts, key=lambda a: (a["image"], a["condition"], a["severity"])),
                        "layers": layers})
    return DiagnosticsResult("attention", results, str(store.root) if store else None, eng.artifacts)


def load_maps(path: str | Path) -> dict[str, Any]:
    """Read an `attention_maps` artifact: `image`, `attn` (list of per-layer float32 arrays), `cls_attn`, `meta`."""
    with np.load(Path(path), allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        if "attn" in z.files:
            attn = [a.astype(np.float32) for a in z["attn"]]
        else:
            attn = [z[k].astype(np.float32) for k in sorted(f for f in z.files if f.startswith("attn_"))]
        cls = [a.astype(np.float32) for a in z["cls_attn"]] if "cls_attn" in z.files else []
        return {"image": z["image"], "attn": attn, "cls_attn": cls, "layer_names": [str(s) for s in z["layer_names"]],
                "meta": meta}
