"""The attention-map files a figure needs (format in `attnprobe.diagnostics`): where they go, writing, reading."""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from attnprobe.data import corruptions as C
from attnprobe.diagnostics.inputs import Condition, ModelEntry
from attnprobe.store import write_atomically

__all__ = ["ARTIFACT_KIND", "ARTIFACT_VERSION", "artifact_path", "load_maps", "save_maps"]

ARTIFACT_KIND = "attention_maps"
ARTIFACT_VERSION = 1


def slug(text: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[-80:] or "image"
    return f"{safe}-{hashlib.sha1(text.encode('utf-8')).hexdigest()[:8]}"


def artifact_path(root: Path, entry: ModelEntry, image_id: str, cond: Condition,
                  corruption_id: str | None = None) -> Path:
    """Where the map file of one model, image and condition goes (`corruption_id`: what corrupted the image)."""
    sub = cond.name if cond.corruption is None else f"{cond.name}-s{cond.severity}"
    if corruption_id is not None and corruption_id != C.corruption_id():  # NOTE: the default engine keeps short paths
        sub = f"{sub}-{re.sub(r'[^A-Za-z0-9.-]+', '_', corruption_id)}"
    if entry.precision != "fp32":  # NOTE: reduced-precision maps never overwrite fp32 ones
        sub = f"{sub}-{entry.precision}"
    return root / "maps" / slug(entry.name) / entry.checkpoint_sha256.replace(":", "_")[:12] / sub / \
        f"{slug(image_id)}.npz"


def _num_prefix_tokens(model: nn.Module, n_tokens: int) -> int:
    prefix = getattr(model, "num_prefix_tokens", None)
    if isinstance(prefix, int):
        return prefix
    # NOTE: without the attribute, a few extra tokens in front of a square grid are taken as class/register tokens
    extra = n_tokens - math.isqrt(n_tokens) ** 2
    return extra if extra <= 8 else 0


def save_maps(path: Path, e: ModelEntry, dataset: str, image_id: str, cond: Condition, seed: int | None,
              image: np.ndarray, layers: list[np.ndarray], cls_layers: list[np.ndarray],
              info: list[dict[str, Any]]) -> dict[str, Any]:
    """Write one map file atomically (format in `attnprobe.diagnostics`); returns its metadata."""
    windows = [lay["windows"] for lay in info]
    arrays: dict[str, np.ndarray] = {"image": np.asarray(image, dtype=np.uint8)}
    # NOTE: one (L, H, N, N) stack only for global square maps of one shape; anything else (windows, spatial
    # reduction, per-stage shapes) is stored layer by layer, which figure code reads as "no single N x N map"
    square = all(a.shape[-1] == a.shape[-2] for a in layers)
    if len({a.shape for a in layers}) == 1 and all(w == 1 for w in windows) and square:
        arrays["attn"] = np.stack(layers)
    else:
        arrays.update({f"attn_{i:03d}": a for i, a in enumerate(layers)})
    if len({a.shape for a in cls_layers}) == 1:
        arrays["cls_attn"] = np.stack(cls_layers)
    else:
        arrays.update({f"cls_attn_{i:03d}": a for i, a in enumerate(cls_layers)})
    names = [lay["name"] for lay in info]
    arrays["layer_names"] = np.array(names if len(names) == len(layers) else [f"layer{i}" for i in
                                                                              range(len(layers))])
    first = next((lay for lay in info if lay["kind"] == "token"), None)  # the image's own token grid
    n_tokens = first["keys"] if first is not None else 0
    pool = math.isqrt(n_tokens // layers[0].shape[-1]) if first is not None and layers and \
        layers[0].shape[-1] < n_tokens else 1
    n_tokens //= pool * pool  # NOTE: large grids are stored pooled (`reducer.pool_map`)
    prefix = _num_prefix_tokens(e.model, n_tokens) if first is not None else 0
    side = math.isqrt(max(n_tokens - prefix, 0))
    meta = {"format_version": ARTIFACT_VERSION, "model": e.name, "checkpoint_sha256": e.checkpoint_sha256,
            "dataset": dataset, "image": image_id, "condition": cond.name, "severity": cond.severity,
            "seed": seed, "seed_scheme": C.SEED_SCHEME if seed is not None else None,
            "preprocessing": e.preprocessing.key(), "windows": list(windows), "num_prefix_tokens": prefix,
            "grid": [side, side] if side and side * side == n_tokens - prefix else None,
            "num_layers": len(layers), "kinds": [lay["kind"] for lay in info], "token_pool": pool}
    arrays["meta"] = np.array(json.dumps(meta))
    # NOTE: uncompressed: float16 attention barely compresses (~10%), and zlib took seconds per FAN-B image,
    # more than the forward pass itself; only the few images a figure needs are saved. A temporary name per
    # process: two runs on one store may write the same file at once; a full disk is one line, not a traceback.
    write_atomically(path, lambda tmp: np.savez(tmp, **arrays), "an attention-map file")
    return meta


def load_maps(path: str | Path) -> dict[str, Any]:
    """Read an `attention_maps` artifact: `image`, `attn` (list of per-layer float32 arrays), `cls_attn` (list),
    `layer_names`, `meta`."""
    with np.load(Path(path), allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        if "attn" in z.files:
            attn = [a.astype(np.float32) for a in z["attn"]]
        else:
            attn = [z[k].astype(np.float32) for k in sorted(f for f in z.files if f.startswith("attn_"))]
        if "cls_attn" in z.files:
            cls = [a.astype(np.float32) for a in z["cls_attn"]]
        else:
            cls = [z[k].astype(np.float32) for k in sorted(f for f in z.files if f.startswith("cls_attn_"))]
        return {"image": z["image"], "attn": attn, "cls_attn": cls, "layer_names": [str(s) for s in z["layer_names"]],
                "meta": meta}
