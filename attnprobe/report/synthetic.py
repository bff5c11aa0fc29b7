"""A small synthetic results store, for tests and for trying `attnprobe report` without a model or a dataset.

`make_synthetic_store(root)` writes plausible-looking results for a baseline and its TAP / ADL / TAP & ADL
variants: counting cells (clean, ImageNet-C 15 x 5, ImageNet-P, ImageNet-A/-R, PGD), per-image diagnostics computed
from synthetic attention maps (an overfocused baseline whose important tokens move under corruption, diagonal maps
for ADL, local bands for TAP & ADL), and attention-map artifacts for a few images. The numbers mean nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from attnprobe.report.style import method_kind
from attnprobe.store import CellKey, ChunkCounts, DiagKey, ResultsStore

__all__ = ["SYNTHETIC_MODELS", "make_synthetic_store", "synthetic_maps"]

SYNTHETIC_MODELS: tuple[str, ...] = ("fan_b", "fan_b_tap", "fan_b_adl", "fan_b_tapadl")
_BASE_ERROR = {"baseline": 0.17, "tap": 0.16, "adl": 0.165, "tapadl": 0.155}
_ROBUST = {"baseline": 1.0, "tap": 0.95, "adl": 0.93, "tapadl": 0.9}
_PAPER = {
    "fan_b": {"clean_acc": 83.9, "mce": 46.1, "mfr": 31.3, "imagenet_a": 39.6, "imagenet_r": 52.7, "pgd": 30.5},
    "fan_b_tapadl": {"clean_acc": 84.3, "mce": 43.7, "mfr": 29.2, "imagenet_a": 42.3, "imagenet_r": 54.6,
                     "pgd": 32.2},
}


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def synthetic_maps(kind: str, layers: int, heads: int, grid: int, rng: np.random.Generator,
                   corrupted: bool = False, important: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Row-stochastic maps (L, H, N, N) with N = grid**2 that look like the paper's patterns for `kind`.

    Returns the maps and the important tokens used (pass them back with `corrupted=True` for the same image).
    """
    n = grid * grid
    if important is None:
        important = rng.choice(n, size=3, replace=False)
    imp = important.copy()
    if corrupted:  # the baseline's important tokens move entirely, TAP's partly, ADL keeps its pattern
        moves = {"baseline": 3, "tap": 2, "adl": 1, "tapadl": 0}.get(kind, 2)
        imp[:moves] = rng.choice(n, size=moves, replace=False)
    yy, xx = np.divmod(np.arange(n), grid)
    dist = np.hypot(yy[:, None] - yy[None, :], xx[:, None] - xx[None, :])  # (N, N) token distances
    out = np.empty((layers, heads, n, n))
    noise_scale = 0.8 if corrupted else 0.5
    for li in range(layers):
        depth = (li + 1) / layers
        for h in range(heads):
            logits = rng.normal(0.0, noise_scale, size=(n, n))
            if kind in ("baseline", "other"):
                logits[:, imp] += 2.0 + 5.0 * depth
            elif kind == "tap":
                near = (dist[imp].min(axis=0) <= 1.0)
                logits[:, near] += 1.5 + 3.5 * depth
            elif kind == "adl":
                logits += np.eye(n) * (3.0 + 1.0 * depth)
                logits[:, imp[(h % 3):(h % 3) + 1]] += 1.5 * depth
            else:  # tapadl: a local band, different heads look at different ranges
                width = 0.5 + (h % 3)
                logits += np.where(dist <= width, 2.5 + depth, 0.0)
                if h % 2:
                    logits[:, rng.choice(n, 2, replace=False)] += 1.0
            out[li, h] = _softmax(logits)
    return out, important


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine over the flattened last two axes."""
    a2 = a.reshape(*a.shape[:-2], -1)
    b2 = b.reshape(*b.shape[:-2], -1)
    return (a2 * b2).sum(-1) / np.maximum(np.linalg.norm(a2, axis=-1) * np.linalg.norm(b2, axis=-1), 1e-12)


def _image(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth colourful uint8 image (H, W, 3)."""
    y, x = np.mgrid[0:size, 0:size] / size
    img = np.zeros((size, size, 3))
    for c in range(3):
        for _ in range(3):
            cx, cy, s = rng.uniform(0, 1, 3)
            img[..., c] += np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (0.02 + 0.1 * s))
    img = img / img.max()
    return (img * 255).astype(np.uint8)


def make_synthetic_store(root: str | Path, models: Sequence[str] = SYNTHETIC_MODELS, n_images: int = 24,
                         n_samples: int = 2000, chunk_size: int = 100, layers: int = 4, heads: int = 4,
                         grid: int = 7, map_images: int = 2, corruptions: Sequence[str] | None = None,
                         severities: Sequence[int] = (1, 2, 3, 4, 5), hparam_sweep: bool = False,
                         seed: int = 0) -> ResultsStore:
    """Fill (or create) a results store at `root` with synthetic results and return it (open for writing).

    Args:
        models: run names; 'tap', 'adl', 'tapadl' in a name choose the pattern of its maps and numbers.
        n_images: images with per-image diagnostics.
        n_samples: samples per counting cell; `chunk_size` samples per chunk.
        layers, heads, grid: shape of the attention maps (N = grid**2 tokens).
        map_images: images whose maps are saved as artifacts.
        corruptions: ImageNet-C corruptions evaluated (default: all 15 benchmark corruptions).
        hparam_sweep: add TAP runs with K = 2, 3, 5 and ADL runs with lambda = 0.1, 10 (their cards carry the value).
    """
    from attnprobe.protocol import alexnet_errors, benchmark_corruptions, test_perturbations

    rng = np.random.default_rng(seed)
    store = ResultsStore(root)
    root = store.root
    corruptions = list(corruptions) if corruptions is not None else benchmark_corruptions()
    runs: list[tuple[str, dict]] = []
    for m in models:
        kind = method_kind(m)
        card = {"family": "fan", "method": kind,
                "hparams": {"num_scales": 4 if "tap" in kind else 1, "adl_weight": 1.0 if "adl" in kind else 0.0,
                            "adl_tau": 2.0}}
        if m in _PAPER:
            card["paper"] = dict(_PAPER[m])
        runs.append((m, card))
    if hparam_sweep:
        for k in (2, 3, 5):
            runs.append((f"fan_b_tap_k{k}", {"family": "fan", "method": "tap", "hparams": {"num_scales": k}}))
        for lam in (0.1, 10.0):
            runs.append((f"fan_b_adl_lam{lam:g}", {"family": "fan", "method": "adl", "hparams": {"adl_weight": lam}}))
    dataset = "synthetic-val-0001"
    pre = "size=224;synthetic"
    for name, card in runs:
        kind = card["method"]
        sha = hashlib.sha256(name.encode()).hexdigest()  # a stand-in checkpoint hash, stable across runs
        store.register_model(name, sha, checkpoint_path=f"/checkpoints/{name}.pth.tar", card=card)
        hp = card.get("hparams", {})
        shift = 0.0  # sweep runs are worse the further their value is from the paper's choice (K=4, lambda=1)
        if re.search(r"_k\d$", name):
            shift = 0.01 * abs(hp.get("num_scales", 4) - 4)
        if "_lam" in name:
            shift = 0.008 * abs(np.log10(hp.get("adl_weight", 1.0)))
        base_err = _BASE_ERROR.get(kind, 0.17) + shift / 2
        robust = _ROBUST.get(kind, 1.0) + shift

        def add_cell(task: str, condition: str, severity: int, err: float, extra=None, ds: str = "",
                     info: dict | None = None) -> None:
            key = CellKey(name, sha, task, ds, pre, condition, severity)
            k = 0
            for start in range(0, n_samples, chunk_size):
                n = min(chunk_size, n_samples - start)
                correct = int(rng.binomial(n, 1.0 - min(max(err, 0.0), 1.0)))
                store.add_chunk(key, k, ChunkCounts(n=n, correct=correct, extra=extra(n) if extra else None))
                k += 1
            store.finish_cell(key, k, {**(info or {}), "limit": None, "n_samples": n_samples})

        # the fingerprints and info of the real drivers, so the report names the (made-up) sources
        val = {"source": "clean", "root": "/data/imagenet/val"}
        add_cell("clean", "clean", 0, base_err, ds="imagenet_val:5e1ec7ed00000001", info=val)
        alex = alexnet_errors()
        for c in corruptions:
            for s in severities:
                e = min(0.95, (base_err + (alex.get(c, 0.8) - 0.43) * 0.45 * (s / 3.0)) * robust)
                add_cell("imagenet_c", c, s, e, ds="imagenet_c:5e1ec7ed00000002",
                         info={"source": "released", "root": "/data/imagenet-c"})
        for i, p in enumerate(test_perturbations()):
            fp = 0.04 * robust * (1.0 + 0.5 * rng.random())
            add_cell("imagenet_p", p, 1, base_err, extra=lambda n, fp=fp: {"fp_sum": fp * n, "flips": fp * n * 30,
                                                                             "pairs": n * 30},
                     ds=f"imagenet_p:5e1ec7ed{i:08x}", info={"source": "released", "regenerated": False,
                                                              "root": "/data/imagenet-p"})
        add_cell("imagenet_a", "imagenet_a", 0, 0.62 - (1.0 - robust) * 0.3, ds="imagenet_a:5e1ec7ed00000003",
                 info={"classes": 200})
        add_cell("imagenet_r", "imagenet_r", 0, 0.48 - (1.0 - robust) * 0.2, ds="imagenet_r:5e1ec7ed00000004",
                 info={"classes": 200})
        add_cell("pgd", "pgd5", 0, 0.70 - (1.0 - robust) * 0.2, ds="imagenet_val:5e1ec7ed00000001", info=val)

        # diagnostics from synthetic maps
        image_rng = np.random.default_rng(seed + 1)  # same images (and important tokens) for every model
        cos_rows, hs_rows = [], []
        over_rows: dict[str, list] = {"topk_column_mass": [], "row_entropy": [], "column_gini": [],
                                      "row_similarity": []}
        n_cos_rows: list = []
        for i in range(n_images):
            img_id = f"img_{i:05d}"
            imp = image_rng.choice(grid * grid, size=3, replace=False)
            clean, _ = synthetic_maps(kind, layers, heads, grid, rng, important=imp)
            corrupt, _ = synthetic_maps(kind, layers, heads, grid, rng, corrupted=True, important=imp)
            cos = _cos(clean, corrupt)  # (L, H)
            cos_rows += [(img_id, li, h, float(cos[li, h])) for li in range(layers) for h in range(heads)]
            corrupt2, _ = synthetic_maps(kind, layers, heads, grid, rng, corrupted=True, important=imp)
            cos2 = _cos(clean, corrupt2)
            n_cos_rows += [(img_id, li, h, float(cos2[li, h])) for li in range(layers) for h in range(heads)]
            for li in range(layers):
                hm = clean[li]
                flat = hm.reshape(heads, -1)
                flat = flat / np.linalg.norm(flat, axis=1, keepdims=True)
                sim = flat @ flat.T
                hs_rows.append((img_id, li, -1, float(sim[np.triu_indices(heads, 1)].mean())))
                avg = hm.mean(0)  # (N, N)
                col = avg.sum(0) / avg.shape[0]
                over_rows["topk_column_mass"].append((img_id, li, -1, float(np.sort(col)[-5:].sum())))
                over_rows["row_entropy"].append((img_id, li, -1, float(-(avg * np.log(avg + 1e-12)).sum(1).mean())))
                srt = np.sort(col)
                nn = srt.size
                gini = float((2 * np.arange(1, nn + 1) - nn - 1).dot(srt) / (nn * srt.sum()))
                over_rows["column_gini"].append((img_id, li, -1, gini))
                mean_row = avg.mean(0)
                rs = (avg @ mean_row) / (np.linalg.norm(avg, axis=1) * np.linalg.norm(mean_row))
                over_rows["row_similarity"].append((img_id, li, -1, float(rs.mean())))
            if i < map_images:  # the file layout of `attnprobe.diagnostics`: one file per image and condition
                img = _image(np.random.default_rng(seed + 100 + i), 64)
                noisy = np.clip(img + np.random.default_rng(seed + 200 + i).normal(0, 40, img.shape), 0, 255)
                for cond, sev, im, maps in (("clean", 0, img, clean), ("gaussian_noise", 3, noisy.astype(np.uint8),
                                                                        corrupt)):
                    sub = "clean" if sev == 0 else f"{cond}-s{sev}"
                    path = root / "maps" / name / sha[:12] / sub / f"{img_id}.npz"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    meta = {"format_version": 1, "model": name, "checkpoint_sha256": sha, "dataset": dataset,
                            "image": img_id, "condition": cond, "severity": sev, "num_prefix_tokens": 0,
                            "grid": [grid, grid], "num_layers": layers, "windows": [1] * layers}
                    np.savez_compressed(path, image=im, attn=maps.astype(np.float16),
                                        layer_names=np.array([f"blocks.{li}.attn" for li in range(layers)]),
                                        meta=np.array(json.dumps(meta)))
                    store.add_artifact(name, sha, "attention_maps", dataset, cond, sev, img_id, path, meta=meta)
        store.add_diagnostics(DiagKey(name, sha, "attention_cosine", dataset, "gaussian_noise", 3), cos_rows)
        store.add_diagnostics(DiagKey(name, sha, "attention_cosine", dataset, "motion_blur", 3), n_cos_rows)
        store.add_diagnostics(DiagKey(name, sha, "head_similarity", dataset, "clean", 0), hs_rows)
        for metric, rows in over_rows.items():
            store.add_diagnostics(DiagKey(name, sha, metric, dataset, "clean", 0), rows)
    return store
