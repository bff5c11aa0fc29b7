"""Segmentation mask figures from the kept predictions of `attnprobe seg` (store artifacts `seg_prediction`).

* Fig. 6: a corrupted Cityscapes-C image and an ACDC image; supplementary Fig. V: one ACDC image per condition;
  supplementary Fig. VI: Cityscapes-C images of several corruptions.

Each row: the image the models saw, the ground truth, the baseline's and the TAP & ADL model's predictions in the
Cityscapes palette (ignored pixels black), with red boxes around the largest regions where the two predictions
differ. Rows are chosen automatically among the images both models kept: per condition, the image where the two
models' pixel accuracies differ most (the caption says so).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import patheffects
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from attnprobe.report.html import FigureEntry
from attnprobe.report.style import FULL_WIDTH, ModelStyles, method_kind, rc_params, save_figure

__all__ = ["ExampleRow", "KeptPrediction", "colorize", "difference_boxes", "fig_segmentation_examples",
           "kept_predictions", "mask_figures", "pair_examples"]

_TASK_NAMES = {"cityscapes": "Cityscapes", "cityscapes_c": "Cityscapes-C", "acdc": "ACDC", "acdc_test": "ACDC test"}


@dataclass(frozen=True)
class KeptPrediction:
    """One kept prediction file of a run."""

    key: str
    task: str
    dataset: str
    condition: str
    severity: int
    image: str
    path: str


@dataclass
class ExampleRow:
    """One figure row: the same image predicted by two runs, with the arrays."""

    task: str
    condition: str
    severity: int
    image: str
    rgb: np.ndarray
    label: np.ndarray
    pred_a: np.ndarray
    pred_b: np.ndarray
    score: float  # |pixel accuracy of b - a| (disagreement when there are no labels)

    @property
    def title(self) -> str:
        if self.task == "cityscapes":
            return "clean"
        name = self.condition.replace("_", " ")
        return f"{name}, s{self.severity}" if self.severity else f"ACDC {name}"


def colorize(mask: np.ndarray) -> np.ndarray:
    """trainIds (H, W) -> RGB uint8 (H, W, 3) in the Cityscapes palette; 255 and unknown ids black."""
    from attnprobe.protocol import cityscapes_palette

    lut = np.zeros((256, 3), dtype=np.uint8)
    for i, c in enumerate(cityscapes_palette()):
        lut[i] = c
    return lut[mask]


def difference_boxes(pred_a: np.ndarray, pred_b: np.ndarray, max_boxes: int = 3,
                     min_fraction: float = 0.002) -> list[tuple[int, int, int, int]]:
    """Bounding boxes (y0, y1, x0, x1) of the largest regions where two predictions differ.

    The disagreement map is pooled into cells of about 1/128 of the long side; cells where more than a fifth of the
    pixels differ, grown by one cell, form regions; the `max_boxes` regions with the most differing pixels (at least
    `min_fraction` of the image) are returned, largest first.
    """
    from scipy import ndimage

    diff = pred_a != pred_b
    h, w = diff.shape
    f = max(1, max(h, w) // 128)
    hh, ww = max(1, h // f), max(1, w // f)
    frac = diff[: hh * f, : ww * f].reshape(hh, f, ww, f).mean(axis=(1, 3))  # (hh, ww) share of differing pixels
    regions, n = ndimage.label(ndimage.binary_dilation(frac > 0.2, iterations=1))
    if n == 0:
        return []
    mass = ndimage.sum(frac, regions, index=np.arange(1, n + 1)) * f * f
    boxes = []
    for idx in np.argsort(-mass)[:max_boxes]:
        if mass[idx] < min_fraction * h * w:
            break
        sy, sx = ndimage.find_objects(regions)[idx]
        boxes.append((sy.start * f, min(h, sy.stop * f), sx.start * f, min(w, sx.stop * f)))
    return boxes


def kept_predictions(store: Any, keys: Sequence[str] | None = None) -> list[KeptPrediction]:
    """Every kept prediction of the store, with the report's run key of its model."""
    from attnprobe.report.loaders import cells_frame

    cells = cells_frame(store)
    key_of = {(m, s): k for m, s, k in zip(cells["model"], cells["checkpoint_sha256"], cells["key"])} \
        if not cells.empty else {}
    out = []
    for a in store.artifacts(kind="seg_prediction"):
        key = key_of.get((a["model"], a["checkpoint_sha256"]), a["model"])
        if (keys is None or key in keys) and Path(a["abspath"]).exists():
            out.append(KeptPrediction(key, str(a["meta"].get("task", "")), a["dataset"], a["condition"],
                                      int(a["severity"]), a["image"], a["abspath"]))
    return out


def pair_examples(kept: Sequence[KeptPrediction], key_a: str, key_b: str) -> list[ExampleRow]:
    """Rows for the images both runs kept (same task, dataset, condition, severity and image)."""
    from attnprobe.benchmarks.seg_outputs import read_seg_prediction

    def ident(k: KeptPrediction) -> tuple:
        return k.task, k.dataset, k.condition, k.severity, k.image

    b_by = {ident(k): k for k in kept if k.key == key_b}
    rows = []
    for ka in (k for k in kept if k.key == key_a):
        kb = b_by.get(ident(ka))
        if kb is None:
            continue
        a, b = read_seg_prediction(ka.path), read_seg_prediction(kb.path)
        valid = a["label"] != 255
        if valid.any():
            score = abs(float((b["pred"] == a["label"])[valid].mean()) - float((a["pred"] == a["label"])[valid].mean()))
        else:
            score = float((a["pred"] != b["pred"]).mean())
        rows.append(ExampleRow(ka.task, ka.condition, ka.severity, ka.image, a["image"], a["label"], a["pred"],
                               b["pred"], score))
    return rows


def _best_per_condition(rows: Sequence[ExampleRow], tasks: Sequence[str], max_rows: int,
                        prefer: Sequence[str] = ()) -> list[ExampleRow]:
    """Per condition, the row with the highest score; conditions in `prefer` first, then by score."""
    best: dict[tuple[str, str], ExampleRow] = {}
    for r in rows:
        if r.task in tasks:
            k = (r.task, r.condition)
            if k not in best or r.score > best[k].score:
                best[k] = r
    ordered = sorted(best.values(), key=lambda r: (r.condition not in prefer, -r.score))
    return ordered[:max_rows]


def fig_segmentation_examples(rows: Sequence[ExampleRow], labels: tuple[str, str], colors: tuple[str, str],
                              width: float = FULL_WIDTH) -> Figure:
    """Rows of (image, ground truth, model A, model B) with red boxes where A and B differ, and a class legend."""
    from attnprobe.protocol import cityscapes_class_names, cityscapes_palette

    if not rows:
        raise ValueError("no example rows to draw")
    gap, left = 0.04, 0.22
    panel_w = (width - left) / (4 + 3 * gap)
    heights = [panel_w * r.label.shape[0] / r.label.shape[1] for r in rows]  # each row keeps its images' aspect
    top, legend_h = 0.2, 0.32
    height = top + sum(h + gap * panel_w for h in heights) + legend_h
    present: set[int] = set()
    outline = [patheffects.withStroke(linewidth=2.0, foreground="white")]  # NOTE: red boxes stay visible on red
    with plt.rc_context(rc_params()):
        fig = plt.figure(figsize=(width, height))
        y_top = height - top
        for i, (r, panel_h) in enumerate(zip(rows, heights)):
            y0 = y_top - panel_h
            y_top = y0 - gap * panel_w
            step = max(1, max(r.label.shape) // 1024)  # NOTE: draw masks at <= 1024 px; nothing finer is visible
            boxes = difference_boxes(r.pred_a, r.pred_b)
            panels = [(r.rgb, None), (r.label, None), (r.pred_a, boxes), (r.pred_b, boxes)]
            for j, (arr, bx) in enumerate(panels):
                ax = fig.add_axes(((left + j * panel_w * (1 + gap)) / width, y0 / height, panel_w / width,
                                   panel_h / height))
                if j == 0:
                    ax.imshow(arr, interpolation="lanczos" if arr.shape[0] > 64 else "nearest", aspect="auto")
                    ax.set_ylabel(r.title, fontsize=6)
                else:
                    small = arr[::step, ::step]
                    present.update(int(v) for v in np.unique(small) if v < 19)
                    ax.imshow(colorize(small), interpolation="nearest", aspect="auto")
                    for by0, by1, bx0, bx1 in bx or []:
                        ax.add_patch(Rectangle((bx0 / step - 0.5, by0 / step - 0.5), (bx1 - bx0) / step,
                                               (by1 - by0) / step, fill=False, edgecolor="red", linewidth=0.9,
                                               path_effects=outline))
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0:
                    heads = ["image", "ground truth", labels[0], labels[1]]
                    ax.set_title(heads[j], fontsize=7, fontweight="bold",
                                 color=("black", "black", colors[0], colors[1])[j])
        names, palette = cityscapes_class_names(), cityscapes_palette()
        handles = [Patch(facecolor=np.array(palette[c]) / 255, edgecolor="none", label=names[c])
                   for c in sorted(present)]
        if handles:
            fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 10), fontsize=5.5, frameon=False,
                       handlelength=1.0, columnspacing=0.8, bbox_to_anchor=(0.5, 0.0))
    return fig


def _pick_pair(keys: Sequence[str], cards: Mapping[str, Mapping[str, Any]], baseline: str | None
               ) -> tuple[str, str] | None:
    if len(keys) < 2:
        return None
    a = baseline if baseline in keys else keys[0]
    others = [k for k in keys if k != a]
    tapadl = [k for k in others if method_kind(k.split("@")[0], cards.get(k)) == "tapadl"]
    return a, (tapadl or others)[0]


def mask_figures(store: Any, fig_dir: Path, formats: Sequence[str], styles: ModelStyles,
                 keys: Sequence[str] | None, baseline: str | None,
                 cards: Mapping[str, Mapping[str, Any]]) -> list[FigureEntry]:
    """Fig. 6, supplementary Figs. V and VI from the kept predictions of two runs (the baseline and TAP & ADL)."""
    kept = kept_predictions(store, keys)
    pair = _pick_pair(styles.sort({k.key for k in kept}), cards, baseline)
    if pair is None:
        return []
    a, b = pair
    rows = pair_examples(kept, a, b)
    if not rows:
        return []
    labels, colors = (styles.label(a), styles.label(b)), (styles.color(a), styles.color(b))
    specs = [
        ("fig6_segmentation", "Fig. 6: segmentation under corruptions and adverse conditions",
         _best_per_condition(rows, ("cityscapes_c",), 1, ("snow",)) + _best_per_condition(rows, ("acdc",), 1)
         or _best_per_condition(rows, ("cityscapes", "acdc_test"), 2)),
        ("figV_acdc_masks", "Supplementary Fig. V: segmentation on ACDC",
         sorted(_best_per_condition(rows, ("acdc",), 4), key=lambda r: r.condition)),
        ("figVI_cityscapes_c_masks", "Supplementary Fig. VI: segmentation on Cityscapes-C",
         _best_per_condition(rows, ("cityscapes_c",), 4)),
    ]
    out = []
    for name, title, chosen in specs:
        if not chosen:
            continue
        fig = fig_segmentation_examples(chosen, labels, colors)
        files = save_figure(fig, fig_dir / name, formats)
        plt.close(fig)
        sets = sorted({_TASK_NAMES.get(r.task, r.task) for r in chosen})
        caption = (f"{', '.join(sets)}: the image the models saw, the ground truth (black = ignored), {labels[0]} and "
                   f"{labels[1]} predictions in the Cityscapes palette; red boxes: the largest regions where the two "
                   f"predictions differ. Rows chosen automatically among the images both runs kept "
                   f"(attnprobe seg --keep-predictions): per condition, the image where their pixel accuracies differ "
                   f"most. Images: {', '.join(r.image.rsplit('/', 1)[-1] for r in chosen)}.")
        out.append(FigureEntry(name, title, caption, files))
    return out
