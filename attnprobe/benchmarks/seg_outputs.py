"""What a segmentation run writes besides the counts: a few kept predictions (for the report's figures) and the
ACDC test predictions (for the evaluation server).

Kept predictions (`kind="seg_prediction"`, registered with `ResultsStore.add_artifact`, path relative to the store):

    <out>/seg_predictions/<model>/<checkpoint sha256[:12]>/<task>/<condition>[-s<severity>]/<image slug>.npz

    image_jpeg  uint8 (bytes,)   the image the model saw (corrupted for a corrupted cell), at the label size, shrunk so
                                 that its long side is at most 1024 px, JPEG quality 90: for display only
    label       uint8 (H, W)     ground-truth trainIds at the label size (255 = ignore; all 255 on a test split)
    pred        uint8 (H, W)     the prediction, made as the scorer makes it (argmax of the logits resized to the
                                 label size), one image per forward pass
    meta        str              JSON: format_version, model, checkpoint_sha256, task, dataset, condition, severity,
                                 image, preprocessing, source

The same evenly spaced images of a cell are kept for every model, so the report can put models side by side.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from attnprobe.benchmarks.seg_protocol import SegProtocol
from attnprobe.engine import Scorer

__all__ = ["ARTIFACT_KIND", "DISPLAY_LONG_SIDE", "IndexTargets", "keep_predictions", "kept_indices",
           "prediction_sink", "read_seg_prediction"]

ARTIFACT_KIND = "seg_prediction"
FORMAT_VERSION = 1
#: Kept images are shrunk to this long side: enough for a figure, ~0.3 MB instead of 6 MB per 2048 x 1024 image.
DISPLAY_LONG_SIDE = 1024


def _slug(text: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[-60:] or "image"
    return f"{safe}-{hashlib.sha1(text.encode('utf-8')).hexdigest()[:8]}"


def kept_indices(n: int, k: int) -> list[int]:
    """`k` evenly spaced sample indices of a cell of `n` (the same for every model)."""
    k = max(0, min(int(k), n))
    return [(i * n) // k for i in range(k)]


def _display_jpeg(bgr: np.ndarray) -> np.ndarray:
    import cv2

    h, w = bgr.shape[:2]
    f = min(1.0, DISPLAY_LONG_SIDE / max(h, w))
    if f < 1.0:
        bgr = cv2.resize(bgr, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:  # pragma: no cover
        raise OSError("cannot encode a kept image as JPEG")
    return np.frombuffer(buf.tobytes(), dtype=np.uint8)


def _artifact_path(root: Path, loaded: Any, task: str, condition: str, severity: int, image: str) -> Path:
    sub = condition if not severity else f"{condition}-s{severity}"
    return (root / "seg_predictions" / _slug(loaded.name) / loaded.checkpoint_sha256.replace(":", "_")[:12] / task
            / sub / f"{_slug(image)}.npz")


def keep_predictions(loaded: Any, protocol: SegProtocol, store: Any, task: str, cells: Sequence[Any], k: int,
                     device: torch.device, source: str) -> list[dict[str, Any]]:
    """Predict and save `k` evenly spaced images of every cell (rank 0 only; images already kept are skipped).

    Args:
        loaded: the `LoadedModel`.
        protocol: the evaluation protocol (the scorer's).
        store: the results store; without one nothing is kept.
        task: the store task of the cells.
        cells: `CellSpec`s whose datasets are segmentation datasets.
        k: images per cell.
        device: where the model runs.
        source: the data source, recorded in the metadata.

    Returns:
        One entry per kept image: model, task, condition, severity, image, path.
    """
    if store is None or k <= 0:
        return []
    out: list[dict[str, Any]] = []
    model = loaded.model
    for spec in cells:
        ds, key = spec.dataset, spec.key
        have = {a["image"] for a in store.artifacts(model=key.model, checkpoint_sha256=key.checkpoint_sha256,
                                                   kind=ARTIFACT_KIND, dataset=key.dataset, condition=key.condition,
                                                   severity=key.severity) if Path(a["abspath"]).exists()}
        for i in kept_indices(len(ds), k):
            image_id = ds.image_id(i)
            path = _artifact_path(store.root, loaded, task, key.condition, key.severity, image_id)
            entry = {"model": key.model, "task": task, "condition": key.condition, "severity": key.severity,
                     "image": image_id, "path": str(path)}
            if image_id not in have:
                meta = _save_one(model, protocol, ds, i, path, device,
                                 {"format_version": FORMAT_VERSION, "model": key.model,
                                  "checkpoint_sha256": key.checkpoint_sha256, "task": task, "dataset": key.dataset,
                                  "condition": key.condition, "severity": key.severity, "image": image_id,
                                  "preprocessing": key.preprocessing, "source": source})
                if meta is None:
                    continue  # unreadable sample: nothing to show
                store.add_artifact(key.model, key.checkpoint_sha256, ARTIFACT_KIND, key.dataset, key.condition,
                                   key.severity, image_id, path, meta=meta)
            out.append(entry)
    return out


def _save_one(model: nn.Module, protocol: SegProtocol, ds: Any, i: int, path: Path, device: torch.device,
              meta: dict[str, Any]) -> dict[str, Any] | None:
    try:
        bgr = ds.prepare(ds.load_image(i), i)
        label = ds.load_label(i, size=bgr.shape[:2])
    except (OSError, ValueError, SyntaxError):
        return None
    x = ds.pipeline.to_uint8_rgb(bgr)[None].to(device)  # (1, 3, H', W') uint8
    with torch.inference_mode():
        pred = protocol.predict(model, x, tuple(label.shape))[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez_compressed(tmp, image_jpeg=_display_jpeg(bgr), label=np.ascontiguousarray(label, dtype=np.uint8),
                        pred=pred.to(torch.uint8).cpu().numpy(), meta=np.array(json.dumps(meta)))
    tmp.replace(path)
    return meta


def read_seg_prediction(path: str | Path) -> dict[str, Any]:
    """Read a kept prediction: `image` (RGB uint8, display size), `label`, `pred` (uint8 (H, W)), `meta`."""
    import cv2

    with np.load(path, allow_pickle=False) as z:
        bgr = cv2.imdecode(z["image_jpeg"], cv2.IMREAD_COLOR)
        return {"image": np.ascontiguousarray(bgr[..., ::-1]), "label": z["label"], "pred": z["pred"],
                "meta": json.loads(str(z["meta"]))}


# ---------------------------------------------------------------------------------------------------------------
# the hidden-label test split: predictions for the server
# ---------------------------------------------------------------------------------------------------------------
class IndexTargets(torch.utils.data.Dataset):
    """A dataset whose target is `(cell, index)` instead of a label map, so a scorer knows which image it predicts.

    Used for test splits, whose labels are hidden: the engine then runs, shards and resumes the prediction writing
    like any benchmark.
    """

    def __init__(self, dataset: Any, cell: int) -> None:
        self.dataset, self.cell = dataset, int(cell)
        self.fingerprint = dataset.fingerprint

    def __len__(self) -> int:
        return len(self.dataset)

    def sample_name(self, i: int) -> str:
        return self.dataset.sample_name(i)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
        x, _, ok = self.dataset[i]
        return x, torch.tensor([self.cell, i], dtype=torch.int64), ok


def prediction_sink(protocol: SegProtocol, datasets: Sequence[Any], writer: Any) -> Scorer:
    """Engine scorer for `IndexTargets` cells: predict each image at its native size and write it with `writer`
    (`attnprobe.data.acdc.PredictionWriter`); the chunk sum is the number of files written."""

    def fn(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> dict[str, int]:
        ids = target.tolist()
        sizes = {tuple(datasets[c].native_size(i)) for c, i in ids}
        if len(sizes) != 1:  # pragma: no cover - the driver batches one size at a time
            raise RuntimeError("a batch of test images of different sizes; use --batch-size 1")
        pred = protocol.predict(model, x, sizes.pop()).to(torch.uint8).cpu()
        for (c, i), p in zip(ids, pred):
            ds = datasets[c]
            writer.write(ds.prediction_name(i), p, expected_size=ds.native_size(i))
        return {"predictions": len(ids)}

    return Scorer(fn, ("predictions",))
