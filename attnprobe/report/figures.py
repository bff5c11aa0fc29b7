"""The paper's figures, one function each, drawn from stored results (never from live tensors).

Every function takes data loaded by `attnprobe.report.loaders` (attention-map records, diagnostics frames,
per-run numbers), an optional `ModelStyles` (one colour and label per model for the whole report) and returns a
matplotlib `Figure`; `style.save_figure(fig, stem, formats)` writes it. Sizes are for a two-column paper:
`COLUMN_WIDTH` (3.3 in) for plots, `FULL_WIDTH` (6.9 in) for grids of maps.

* `fig1_attention_maps`       Fig. 1 left: input (clean / corrupted) and the head-averaged last-layer map per model.
* `fig_stability_distribution` Fig. 1 right and Fig. 5: clean-vs-corrupted attention cosine over all layers and heads.
* `fig3_attention_grid`        Fig. 3: several images, every model's map side by side, clean and corrupted.
* `fig4_heads`                 Fig. 4: every head of the last layer per model, head similarity in the title.
* `figI_layer_maps`            Supplementary Fig. I (maps): intermediate layers per model, clean and corrupted.
* `figI_layer_curves`          Supplementary Fig. I (curves): overfocusing and stability against depth.
* `fig7_hyperparameter`        Fig. 7: a metric against K, lambda or tau over runs whose cards carry the value.
* `fig_corruption_heatmap`     Top-1 error per corruption x severity, one panel per model (not in the paper).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from attnprobe.report import bootstrap as B
from attnprobe.report.loaders import AttentionMaps
from attnprobe.report.style import COLUMN_WIDTH, FULL_WIDTH, ModelStyles, rc_params

import matplotlib.pyplot as plt  # noqa: E402  (style set the Agg backend)
from matplotlib.figure import Figure  # noqa: E402

__all__ = [
    "MAP_CMAP",
    "OVERFOCUS_METRICS",
    "fig1_attention_maps",
    "fig3_attention_grid",
    "fig4_heads",
    "fig7_hyperparameter",
    "figI_layer_curves",
    "figI_layer_maps",
    "fig_corruption_heatmap",
    "fig_stability_distribution",
]

#: Attention maps are drawn in reds like the paper (darker = more attention).
MAP_CMAP = "Reds"
#: Diagnostics that measure overfocusing, in order of preference, with their axis labels.
OVERFOCUS_METRICS: dict[str, str] = {
    "topk_column_mass": "Top-k column mass",
    "column_gini": "Column Gini",
    "row_similarity": "Row similarity",
    "row_entropy": "Row entropy (nats)",
}
_PRETTY_CONDITION = {"gaussian_noise": "Gaussian noise", "shot_noise": "shot noise", "impulse_noise": "impulse noise"}


def wrap_label(label: str, width_in: float, fontsize: float = 7.0) -> str:
    """Break a long model label into lines that fit `width_in` inches (at `_`, `-` or spaces)."""
    max_chars = max(int(width_in * 72.0 / (fontsize * 0.6)), 4)
    if len(label) <= max_chars:
        return label
    if " + " in label:  # "FAN-B-Hybrid + TAP & ADL": the method on its own line reads best
        head, tail = label.split(" + ", 1)
        if len(head) <= max_chars and len(tail) + 2 <= max_chars:
            return f"{head}\n+ {tail}"
    parts = re.split(r"(?<=[_\-\s])", label)
    lines, cur = [], ""
    for p in parts:
        if cur and len(cur) + len(p) > max_chars:
            lines.append(cur)
            cur = p
        else:
            cur += p
    lines.append(cur)
    return "\n".join(lines)


def _styles(styles: ModelStyles | None, keys: Sequence[str]) -> ModelStyles:
    return styles if styles is not None else ModelStyles(keys)


def pretty_condition(condition: str, severity: int | None = None) -> str:
    """`gaussian_noise, 3 -> 'Gaussian noise (severity 3)'`."""
    name = _PRETTY_CONDITION.get(condition, condition.replace("_", " "))
    return f"{name}, severity {severity}" if severity else name


def _layer_map(maps: np.ndarray, layer: int, head: int | None = None) -> np.ndarray:
    """(N, N) map of one layer: one head or the mean over heads."""
    m = maps[layer]
    return m.mean(axis=0) if head is None else m[head]


def _vmax(*arrays: np.ndarray | None) -> float:
    """Colour-scale top shared by a model's clean and corrupted maps: the 99.9th percentile (a single hot cell
    would otherwise wash every other entry out), but at least 4/N, so near-uniform attention (every entry about
    1/N, as in an untrained model) is drawn pale instead of saturated."""
    present = [a for a in arrays if a is not None]
    vals = np.concatenate([a.ravel() for a in present])
    n = present[0].shape[-1]
    return float(max(np.quantile(vals, 0.999), 4.0 / max(n, 1), 1e-12))


def _show_map(ax: plt.Axes, m: np.ndarray, vmax: float) -> Any:
    im = ax.imshow(m, cmap=MAP_CMAP, vmin=0.0, vmax=vmax, interpolation="nearest", aspect="equal")
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(True)
        s.set_linewidth(0.4)
        s.set_color("#888888")
    return im


def _colorbar(fig: Figure, image: Any, rect: Sequence[float], horizontal: bool = True,
              label: str | None = None) -> Any:
    """A thin colour bar for `image` in figure-fraction `rect` (x0, y0, width, height), ticks at 0 and the top of
    the scale (attention weights: the share of a row's attention one input token gets)."""
    cax = fig.add_axes(tuple(rect))
    cb = fig.colorbar(image, cax=cax, orientation="horizontal" if horizontal else "vertical")
    top = float(image.get_clim()[1])
    cb.set_ticks([0.0, top])
    cb.set_ticklabels(["0", f"{top:.2g}"])
    cb.ax.tick_params(labelsize=5, length=1.5, width=0.4, pad=1)
    cb.outline.set_linewidth(0.3)
    if label:
        cb.set_label(label, fontsize=5, labelpad=1)
    return cb


def _show_image(ax: plt.Axes, img: np.ndarray | None) -> None:
    if img is None:
        ax.text(0.5, 0.5, "no image\nstored", ha="center", va="center", transform=ax.transAxes, fontsize=6)
    else:
        ax.imshow(img, interpolation="lanczos" if img.shape[0] > 64 else "nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)


def _by_key(maps: Sequence[AttentionMaps], styles: ModelStyles) -> list[AttentionMaps]:
    seen: dict[str, AttentionMaps] = {}
    for m in maps:
        seen.setdefault(m.key, m)
    return [seen[k] for k in styles.sort(seen)]


def _layer_index(layer: int, num_layers: int) -> int:
    idx = layer if layer >= 0 else num_layers + layer
    if not 0 <= idx < num_layers:
        raise ValueError(f"layer {layer} out of range for {num_layers} layers")
    return idx


def fig1_attention_maps(maps: Sequence[AttentionMaps], styles: ModelStyles | None = None, layer: int = -1,
                        width: float = FULL_WIDTH) -> Figure:
    """Fig. 1 (left): the input image, clean (top row) and corrupted (bottom row), then for each model the
    head-averaged attention map of `layer` (default: the last) on that input.

    Args:
        maps: one record per model, all of the same image and corruption.
        styles: colours and labels; the model labels head the columns in their colour.
        layer: layer index (negative counts from the end).
    """
    if not maps:
        raise ValueError("no attention maps to draw")
    styles = _styles(styles, [m.key for m in maps])
    recs = _by_key(maps, styles)
    has_corrupt = any(r.maps_corrupted is not None for r in recs)
    nrows = 2 if has_corrupt else 1
    ncols = 1 + len(recs)
    panel = min((width - 0.3) / (ncols + 0.05 * (ncols - 1)), 1.3)
    titles = [wrap_label(styles.label(r.key), panel * 1.05) for r in recs]
    top_in = 0.12 * max(t.count("\n") + 1 for t in titles) + 0.22
    bar_in = 0.3  # below the maps: one colour bar per model and its tick labels
    height = nrows * panel + (nrows - 1) * 0.05 * panel + top_in + bar_in
    fig_w = ncols * panel + (ncols - 1) * 0.05 * panel + 0.3
    with plt.rc_context(rc_params()):
        fig, axes = plt.subplots(nrows, ncols, figsize=(fig_w, height), squeeze=False)
        fig.subplots_adjust(left=0.3 / fig_w, right=1.0, bottom=bar_in / height, top=1.0 - top_in / height,
                            wspace=0.05, hspace=0.05)
        first = recs[0]
        _show_image(axes[0, 0], first.image_clean)
        axes[0, 0].set_ylabel("clean")
        axes[0, 0].set_title("input", fontweight="bold")
        if has_corrupt:
            _show_image(axes[1, 0], first.image_corrupted)
            axes[1, 0].set_ylabel(pretty_condition(first.condition, first.severity).replace(", ", "\n"))
        for j, (r, title) in enumerate(zip(recs, titles), start=1):
            li = _layer_index(layer, r.num_layers)
            clean = _layer_map(r.maps_clean, li)
            corrupt = _layer_map(r.maps_corrupted, li) if r.maps_corrupted is not None else None
            vmax = _vmax(clean, corrupt)
            im = _show_map(axes[0, j], clean, vmax)
            axes[0, j].set_title(title, color=styles.color(r.key), fontweight="bold")
            if has_corrupt:
                if corrupt is not None:
                    _show_map(axes[1, j], corrupt, vmax)
                else:
                    axes[1, j].axis("off")
            # NOTE: each model has its own scale (shared by its clean and corrupted map), so each gets a bar
            pos = axes[-1, j].get_position()
            _colorbar(fig, im, (pos.x0 + 0.1 * pos.width, 0.2 / height, 0.8 * pos.width, 0.05 / height),
                      label="attention weight" if j == 1 else None)
        li = _layer_index(layer, first.num_layers)
        fig.text(0.5 + 0.15 / fig_w, 1.0, f"Layer {li + 1} of {first.num_layers}, heads averaged "
                 f"({first.num_tokens}×{first.num_tokens} tokens)", ha="center", va="top", fontsize=7)
    return fig


def fig_stability_distribution(cosine: pd.DataFrame, styles: ModelStyles | None = None,
                               condition: str | None = None, severity: int | None = None,
                               n_resamples: int = B.DEFAULT_RESAMPLES, seed: int = 0, max_points: int = 1500,
                               values: Mapping[str, np.ndarray] | None = None,
                               width: float = COLUMN_WIDTH) -> Figure:
    """Fig. 1 (right) and Fig. 5: distribution of the clean-vs-corrupted attention cosine over all images, layers
    and heads, one violin per model with a box, the raw values as points (when few) and the mean with its 95%
    paired bootstrap interval over images as an error bar.

    Args:
        cosine: `attention_cosine` diagnostics frame (key, condition, severity, image, layer, head, value); per
            head, or averaged over heads (then pass the per-head `values` for the distribution).
        condition, severity: which corruption; default: the one with most images (Gaussian noise preferred).
        values: run key -> raw per-(image, layer, head) values drawn as the distribution (default: `cosine`'s).
    """
    from attnprobe.report.summary import choose_condition

    if cosine.empty:
        raise ValueError("no attention-cosine diagnostics to draw")
    if condition is None:
        condition, severity = choose_condition(cosine)  # type: ignore[misc]
    sub = cosine[cosine["condition"] == condition]
    if severity is not None:
        sub = sub[sub["severity"] == severity]
    if sub.empty:
        raise ValueError(f"no attention-cosine values for {condition} severity {severity}")
    styles = _styles(styles, list(sub["key"].unique()))
    keys = styles.sort(sub["key"].unique())
    per_img = sub.groupby(["image", "key"])["value"].mean().unstack("key")
    cis = B.paired_bootstrap_means(per_img[keys], n_resamples=n_resamples, seed=seed)
    rng = np.random.default_rng(seed)
    with plt.rc_context(rc_params()):
        fig, ax = plt.subplots(figsize=(max(width, 0.75 * len(keys) + 0.8), 0.8 * width))
        for i, k in enumerate(keys):
            v = values[k] if values is not None and k in values else \
                sub.loc[sub["key"] == k, "value"].to_numpy(dtype=float)
            color = styles.color(k)
            if v.size > 1 and np.ptp(v) > 0:
                parts = ax.violinplot([v], positions=[i], widths=0.8, showextrema=False)
                for body in parts["bodies"]:
                    body.set_facecolor(color)
                    body.set_edgecolor(color)
                    body.set_alpha(0.35)
            ax.boxplot([v], positions=[i], widths=0.16, showfliers=False, patch_artist=True,
                       medianprops={"color": "black", "linewidth": 0.8},
                       boxprops={"facecolor": "white", "edgecolor": color, "linewidth": 0.8},
                       whiskerprops={"color": color, "linewidth": 0.8}, capprops={"color": color, "linewidth": 0.8})
            if v.size <= max_points:
                x = i + rng.uniform(-0.3, 0.3, v.size)
                ax.scatter(x, v, s=1.5, color=color, alpha=0.5, linewidths=0, zorder=1)
            iv = cis.get(k)
            if iv is not None and not math.isnan(iv.estimate):
                ax.errorbar([i + 0.27], [iv.estimate], yerr=[[iv.estimate - iv.low], [iv.high - iv.estimate]],
                            fmt=styles[k].marker, color=color, markeredgecolor="black", markeredgewidth=0.4,
                            capsize=1.5, elinewidth=0.8, markersize=3.5, zorder=4)
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels([styles.label(k) for k in keys], rotation=20 if len(keys) > 3 else 0,
                           ha="right" if len(keys) > 3 else "center")
        for t, k in zip(ax.get_xticklabels(), keys):
            t.set_color(styles.color(k))
        ax.set_ylabel("Attention cosine, clean vs corrupted")
        lo = float(min([np.nanmin(sub["value"])] + [np.nanmin(v) for v in (values or {}).values() if v.size]))
        ax.set_ylim(min(0.0, lo - 0.02), 1.02)
        ax.set_xlim(-0.6, len(keys) - 0.4)
        ax.grid(axis="y", linewidth=0.3, color="#dddddd")
        ax.set_axisbelow(True)
        n_img = per_img[keys].dropna().shape[0]
        ax.set_title(f"{pretty_condition(condition, severity)}: {n_img} images, all layers and heads", fontsize=7)
    return fig


def fig3_attention_grid(maps: Sequence[AttentionMaps], styles: ModelStyles | None = None, layer: int = -1,
                        images: Sequence[str] | None = None, max_images: int = 3,
                        width: float = FULL_WIDTH) -> Figure:
    """Fig. 3: one row per image; columns: the clean and corrupted input, then for each model its head-averaged
    map of `layer` on the clean and on the corrupted input.

    Args:
        maps: records of several models and images (one corruption).
        images: image ids to show, in order; default: the first `max_images` that every model has.
    """
    if not maps:
        raise ValueError("no attention maps to draw")
    styles = _styles(styles, [m.key for m in maps])
    keys = styles.sort({m.key for m in maps})
    by = {(m.image, m.key): m for m in maps}
    if images is None:
        common = [img for img in dict.fromkeys(m.image for m in maps) if all((img, k) in by for k in keys)]
        images = (common or list(dict.fromkeys(m.image for m in maps)))[:max_images]
    has_corrupt = any(m.maps_corrupted is not None for m in maps)
    per_model = 2 if has_corrupt else 1
    ncols = per_model * (1 + len(keys))
    gap = 0.04  # between panels, as a fraction of a panel
    pair_gap = 0.12  # extra space between two models' column pairs, in inches
    left = 0.18
    panel = min((width - left - pair_gap * len(keys)) / (ncols + gap * ncols), 1.0)
    titles = [wrap_label(styles.label(k), panel * per_model * 1.05) for k in keys]
    top_in = 0.12 * max(t.count("\n") + 1 for t in titles) + 0.36
    rows = len(images)
    bar_in = 0.3  # below the grid: one colour bar per model
    height = rows * panel * (1 + gap) + top_in + bar_in
    fig_w = left + ncols * panel * (1 + gap) + pair_gap * len(keys)
    drawn = {(img, k): _pair(by[(img, k)], layer) for img in images for k in keys if (img, k) in by}
    # NOTE: one colour scale per model over all its images, so one bar per model says what the colours mean
    vmax = {k: _vmax(*[m for (_, kk), pair in drawn.items() if kk == k for m in pair]) for k in keys
            if any(kk == k for _, kk in drawn)}
    with plt.rc_context(rc_params()):
        fig = plt.figure(figsize=(fig_w, height))
        axes = np.empty((rows, ncols), dtype=object)
        for i in range(rows):
            y0 = height - top_in - (i + 1) * panel * (1 + gap)
            for c in range(ncols):
                x0 = left + c * panel * (1 + gap) + pair_gap * (c // per_model)
                axes[i, c] = fig.add_axes((x0 / fig_w, y0 / height, panel / fig_w, panel / height))
        for i, img in enumerate(images):
            ref = next((by[(img, k)] for k in keys if (img, k) in by), None)
            _show_image(axes[i, 0], ref.image_clean if ref else None)
            if has_corrupt:
                _show_image(axes[i, 1], ref.image_corrupted if ref else None)
            axes[i, 0].set_ylabel(str(img)[:16], fontsize=5.5)
            for j, k in enumerate(keys):
                c0 = per_model * (1 + j)
                if (img, k) not in drawn:
                    for c in range(per_model):
                        axes[i, c0 + c].axis("off")
                    continue
                clean, corrupt = drawn[(img, k)]
                _show_map(axes[i, c0], clean, vmax[k])
                if has_corrupt:
                    if corrupt is not None:
                        _show_map(axes[i, c0 + 1], corrupt, vmax[k])
                    else:
                        axes[i, c0 + 1].axis("off")
        for j, k in enumerate(keys):
            if k in vmax:
                x0 = left + per_model * (1 + j) * panel * (1 + gap) + pair_gap * (1 + j)
                w = per_model * panel * (1 + gap) - gap * panel
                _colorbar(fig, _scale(vmax[k]), ((x0 + 0.1 * w) / fig_w, 0.2 / height, 0.8 * w / fig_w,
                                                  0.05 / height), label="attention weight" if j == 0 else None)
        # headers: a small clean/corrupted tag over each column, the model label centred over its pair
        tags = ["clean", "corrupted"] if has_corrupt else ["clean"]
        for c in range(ncols):
            axes[0, c].set_title(tags[c % per_model], fontsize=5.5, pad=1.5)
        for j, title in enumerate(["input"] + titles):
            x = (left + (j * per_model + per_model / 2) * panel * (1 + gap) + pair_gap * j) / fig_w
            key = keys[j - 1] if j else None
            fig.text(x, (height - top_in + 0.14) / height, title, ha="center", va="bottom", fontsize=7,
                     fontweight="bold", color=styles.color(key) if key else "black")
        cond = maps[0]
        where = "last layer" if layer == -1 else f"layer {_layer_index(layer, cond.num_layers) + 1}"
        corr = f"; corrupted: {pretty_condition(cond.condition, cond.severity)}" if has_corrupt else ""
        fig.text(0.5, 1.0, f"Attention maps, {where}, heads averaged{corr}", ha="center", va="top", fontsize=7)
    return fig


def _pair(rec: AttentionMaps, layer: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The head-averaged clean and corrupted (or None) maps of `layer`."""
    li = _layer_index(layer, rec.num_layers)
    corrupt = _layer_map(rec.maps_corrupted, li) if rec.maps_corrupted is not None else None
    return _layer_map(rec.maps_clean, li), corrupt


def _scale(vmax: float) -> Any:
    """A colour mapping 0..vmax in the map colours, for a colour bar that no single image carries."""
    import matplotlib.cm as cm
    from matplotlib.colors import Normalize

    return cm.ScalarMappable(norm=Normalize(0.0, vmax), cmap=MAP_CMAP)


def fig4_heads(maps: Sequence[AttentionMaps], styles: ModelStyles | None = None, layer: int = -1,
               head_similarity: Mapping[str, float | B.Interval] | None = None, corrupted: bool = False,
               max_heads: int = 16, width: float = FULL_WIDTH) -> Figure:
    """Fig. 4: every head of `layer` (default: the last) for each model (one row each) on one image, the model's
    head similarity (mean pairwise cosine between the heads' maps; lower = more diverse) in the row title.

    Args:
        maps: one record per model (same image).
        head_similarity: run key -> stored mean head similarity of that layer (or its interval); when absent the
            similarity of the drawn maps is computed and the title says "this image".
        corrupted: draw the maps of the corrupted input instead of the clean one.
    """
    if not maps:
        raise ValueError("no attention maps to draw")
    styles = _styles(styles, [m.key for m in maps])
    recs = _by_key(maps, styles)
    heads = min(max(r.num_heads for r in recs), max_heads)
    bar_w = 0.4  # right of each row: the colour bar of its scale and the tick labels
    panel = min((width - bar_w) / (heads * 1.05), 0.9)
    fig_w = panel * heads * 1.05 + bar_w
    rows = []
    for r in recs:
        li = _layer_index(layer, r.num_layers)
        src = r.maps_corrupted if corrupted and r.maps_corrupted is not None else r.maps_clean
        layer_maps = src[li]
        hs = (head_similarity or {}).get(r.key)
        if isinstance(hs, B.Interval) and hs.n >= 2:
            sim = f"head similarity {hs.estimate:.2f} ± {hs.half_width:.2f} (mean over {hs.n} images)"
        elif isinstance(hs, B.Interval):
            sim = f"head similarity {hs.estimate:.2f} ({hs.n} image)"
        elif hs is not None and not math.isnan(float(hs)):
            sim = f"head similarity {float(hs):.2f} (mean over images)"
        else:
            sim = f"head similarity {head_cosine(layer_maps):.2f} (this image)"
        title = f"{styles.label(r.key)}: layer {li + 1}, {sim}"
        if len(title) * 7 * 0.6 / 72 > fig_w:  # too wide for the row: break before the similarity
            title = f"{styles.label(r.key)}: layer {li + 1}\n{sim}"
        rows.append((r, layer_maps, title))
    title_h = [0.13 * (t.count("\n") + 1) + 0.04 for _, _, t in rows]
    label_h, row_gap = 0.12, 0.1
    heights = [th + panel + label_h + row_gap for th in title_h]
    height = sum(heights)
    with plt.rc_context(rc_params()):
        fig = plt.figure(figsize=(fig_w, height))
        top = height
        for (r, layer_maps, title), th, rh in zip(rows, title_h, heights):
            y0 = top - th - panel
            vmax = _vmax(layer_maps)
            for h in range(heads):
                ax = fig.add_axes((h * panel * 1.05 / fig_w, y0 / height, panel / fig_w, panel / height))
                if h < r.num_heads:
                    _show_map(ax, layer_maps[h], vmax)
                    ax.set_xlabel(f"head {h + 1}", fontsize=5.5, labelpad=1)
                else:
                    ax.axis("off")
            _colorbar(fig, _scale(vmax), ((heads * panel * 1.05 + 0.04) / fig_w, y0 / height, 0.05 / fig_w,
                                          panel / height), horizontal=False)
            fig.text(0.5 * (fig_w - bar_w) / fig_w, top / height, title, ha="center", va="top",
                     color=styles.color(r.key), fontsize=7, fontweight="bold", linespacing=1.1)
            top -= rh
    return fig


def head_cosine(layer_maps: np.ndarray) -> float:
    """Mean cosine similarity between the flattened maps of every pair of heads, (H, N, N) -> scalar."""
    h = layer_maps.shape[0]
    if h < 2:
        return float("nan")
    flat = layer_maps.reshape(h, -1).astype(np.float64)
    flat = flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)
    sim = flat @ flat.T  # (H, H)
    iu = np.triu_indices(h, k=1)
    return float(sim[iu].mean())


def figI_layer_maps(maps: Sequence[AttentionMaps], styles: ModelStyles | None = None,
                    layers: Sequence[int] | None = None, max_layers: int = 6, width: float = FULL_WIDTH) -> Figure:
    """Supplementary Fig. I (maps): the head-averaged maps of several layers (columns) for each model, clean and
    corrupted in consecutive rows.

    Args:
        maps: one record per model (same image).
        layers: layer indices to show (0-based); default: `max_layers` evenly spaced, ending with the last.
    """
    if not maps:
        raise ValueError("no attention maps to draw")
    styles = _styles(styles, [m.key for m in maps])
    recs = _by_key(maps, styles)
    L = min(r.num_layers for r in recs)
    if layers is None:
        layers = sorted({int(round(x)) for x in np.linspace(0, L - 1, min(max_layers, L))})
    layers = [_layer_index(li, L) for li in layers]
    rows = [x for r in recs for x in ([(r, False), (r, True)] if r.maps_corrupted is not None else [(r, False)])]
    left, top, gap, bar_w = 0.5, 0.32, 0.05, 0.4
    panel = min((width - left - bar_w) / (len(layers) * (1 + gap)), 1.0)
    fig_w = left + len(layers) * panel * (1 + gap) + bar_w
    height = top + len(rows) * panel * (1 + gap)
    drawn = {r.key: [_pair(r, li) for li in layers] for r in recs}
    # NOTE: one colour scale per model over its layers, clean and corrupted: a pale early layer is diffuse attention
    vmax = {k: _vmax(*[m for pair in pairs for m in pair]) for k, pairs in drawn.items()}
    with plt.rc_context(rc_params()):
        fig = plt.figure(figsize=(fig_w, height))
        for i, (r, corrupt) in enumerate(rows):
            y0 = height - top - (i + 1) * panel * (1 + gap)
            for j, (li, (clean, cor)) in enumerate(zip(layers, drawn[r.key])):
                ax = fig.add_axes(((left + j * panel * (1 + gap)) / fig_w, y0 / height, panel / fig_w,
                                   panel / height))
                _show_map(ax, cor if corrupt else clean, vmax[r.key])
                if i == 0:
                    ax.set_title(f"layer {li + 1}", pad=2)
                if j == 0:
                    tag = pretty_condition(r.condition) if corrupt else "clean"
                    ax.set_ylabel(f"{wrap_label(styles.label(r.key), left * 0.9, 6)}\n{tag}",
                                  color=styles.color(r.key), fontsize=6)
            if not corrupt:  # the bar spans the model's rows
                n_rows = 2 if r.maps_corrupted is not None else 1
                span = n_rows * panel * (1 + gap) - gap * panel
                _colorbar(fig, _scale(vmax[r.key]), ((fig_w - bar_w + 0.06) / fig_w,
                                                     (y0 + panel - span + 0.08) / height, 0.05 / fig_w,
                                                     (span - 0.16) / height), horizontal=False)
        fig.text(0.5, 1.0, "Attention of intermediate layers (heads averaged)", ha="center", va="top", fontsize=7)
    return fig


def _layer_stats(df: pd.DataFrame, keys: Sequence[str], n_resamples: int, seed: int) -> dict[str, pd.DataFrame]:
    """Per run: a frame indexed by layer with mean, low, high (bootstrap over images of per-image layer means)."""
    out = {}
    for k in keys:
        sub = df[df["key"] == k]
        if sub.empty:
            continue
        rows = []
        for layer, g in sub.groupby("layer"):
            per_img = g.groupby("image")["value"].mean().to_numpy()
            iv = B.bootstrap_mean(per_img, n_resamples=n_resamples, seed=seed)
            rows.append({"layer": int(layer), "mean": iv.estimate, "low": iv.low, "high": iv.high})
        out[k] = pd.DataFrame(rows).set_index("layer").sort_index()
    return out


def figI_layer_curves(frames: Mapping[str, pd.DataFrame], styles: ModelStyles | None = None,
                      overfocus_metric: str | None = None, condition: str | None = None,
                      severity: int | None = None, n_resamples: int = B.DEFAULT_RESAMPLES, seed: int = 0,
                      width: float = COLUMN_WIDTH) -> Figure:
    """Supplementary Fig. I (curves): per-layer overfocusing (left, clean images) and attention stability (right,
    clean-vs-corrupted cosine) against depth, one line per model with a 95% bootstrap band over images.

    Args:
        frames: metric -> diagnostics frame; uses `attention_cosine` and the first available of
            `OVERFOCUS_METRICS` (or `overfocus_metric`).
    """
    from attnprobe.report.summary import choose_condition

    over = overfocus_metric or next((m for m in OVERFOCUS_METRICS if m in frames and not frames[m].empty), None)
    cos = frames.get("attention_cosine")
    panels = []
    if over is not None and over in frames and not frames[over].empty:
        df = frames[over]
        df = df[df["condition"] == "clean"] if (df["condition"] == "clean").any() else df
        panels.append((df, OVERFOCUS_METRICS.get(over, over), "Overfocusing (clean)"))
    if cos is not None and not cos.empty:
        if condition is None:
            condition, severity = choose_condition(cos)  # type: ignore[misc]
        c = cos[cos["condition"] == condition]
        if severity is not None:
            c = c[c["severity"] == severity]
        panels.append((c, "Attention cosine", f"Stability ({pretty_condition(condition, severity)})"))
    if not panels:
        raise ValueError("no per-layer diagnostics (attention_cosine or an overfocusing metric) to draw")
    keys = sorted({k for df, _, _ in panels for k in df["key"].unique()})
    styles = _styles(styles, keys)
    keys = styles.sort(keys)
    with plt.rc_context(rc_params()):
        fig, axes = plt.subplots(1, len(panels), figsize=(width * (1.0 if len(panels) == 1 else 2.0) * 0.95,
                                                          0.62 * width), squeeze=False)
        for ax, (df, ylabel, title) in zip(axes[0], panels):
            stats = _layer_stats(df, keys, n_resamples, seed)
            for k, st in stats.items():
                x = st.index.to_numpy() + 1
                ax.plot(x, st["mean"], marker=styles[k].marker, color=styles.color(k), label=styles.label(k),
                        markersize=2.8)
                ax.fill_between(x, st["low"], st["high"], color=styles.color(k), alpha=0.2, linewidth=0)
            ax.set_xlabel("Layer")
            ax.set_ylabel(ylabel)
            ax.set_title(title, fontsize=7)
            ax.grid(linewidth=0.3, color="#dddddd")
            ax.set_axisbelow(True)
            xs = sorted({int(li) + 1 for li in df["layer"].unique()})
            step = max(1, math.ceil(len(xs) / 8))
            ax.set_xticks(xs[::step])
        # NOTE: every panel's series, once each: a model may have values in one panel only
        seen: dict[str, Any] = {}
        for ax in axes[0]:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                seen.setdefault(lab, h)
        order = [styles.label(k) for k in keys if styles.label(k) in seen]
        fig.tight_layout()
        fig.legend([seen[lab] for lab in order], order, loc="lower center", ncol=min(len(order), 4),
                   bbox_to_anchor=(0.5, 1.0), handlelength=1.5, columnspacing=1.0)
    return fig


#: Hyper-parameter aliases in model cards (`hparams` section) and their axis labels.
HPARAMS: dict[str, tuple[tuple[str, ...], str, bool]] = {
    "K": (("num_scales", "K", "k", "tap_branches", "num_branches"), "TAP branches K", False),
    "lambda": (("adl_weight", "lambda", "lam", "adl_lambda"), "ADL weight λ", True),
    "tau": (("adl_tau", "tau", "threshold_tau"), "ADL threshold τ", False),
}


def hparam_value(card: Mapping[str, object], hparam: str) -> float | None:
    """The value of `hparam` ('K', 'lambda', 'tau' or any card key) in a model card's `hparams` (or top level)."""
    names = HPARAMS.get(hparam, ((hparam,), hparam, False))[0]
    for section in (card.get("hparams"), card.get("kwargs"), card):
        if isinstance(section, Mapping):
            for n in names:
                v = section.get(n)
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    return float(v)
    return None


def fig7_hyperparameter(points: pd.DataFrame, hparam: str, metric_label: str, styles: ModelStyles | None = None,
                        baseline: float | None = None, baseline_label: str = "baseline", percent: bool = True,
                        lower_is_better: bool = True, width: float = COLUMN_WIDTH) -> Figure:
    """Fig. 7: a metric against a hyper-parameter over a set of runs.

    Each run is a marker in its own colour (the colour it has in every figure of the report); the runs of one
    method are joined by a line in that method's colour. The legend, outside the axes on the right, names every
    line, every run and the baseline.

    Args:
        points: columns `key, value` (the hyper-parameter), `metric` (fraction), optional `low, high` (interval)
            and `group` (one line per group, e.g. the method; default one line).
        hparam: 'K', 'lambda', 'tau' or a card key; lambda is drawn on a log axis.
        metric_label: y axis label, e.g. 'mCE (%)'.
        baseline: the baseline's metric (fraction), drawn as a dashed grey line.
    """
    if points.empty:
        raise ValueError(f"no runs carry the hyper-parameter {hparam}")
    _, xlabel, log = HPARAMS.get(hparam, ((hparam,), hparam, False))
    scale = 100.0 if percent else 1.0
    styles = _styles(styles, list(points["key"]))
    groups = points["group"] if "group" in points.columns else pd.Series("all", index=points.index)
    with plt.rc_context(rc_params()):
        fig, ax = plt.subplots(figsize=(width, 0.62 * width))
        for g, sub in points.groupby(groups, sort=False):
            sub = sub.sort_values("value")
            y = sub["metric"].to_numpy(dtype=float) * scale
            line = _method_color(str(g), styles, sub["key"])
            ax.plot(sub["value"], y, color=line, linewidth=1.0, zorder=2, label=None if g == "all" else str(g))
            for (_, r), yi in zip(sub.iterrows(), y):
                c = styles.color(r["key"])
                err = None
                if {"low", "high"} <= set(sub.columns) and not math.isnan(float(r["low"])):
                    err = [[yi - r["low"] * scale], [r["high"] * scale - yi]]
                ax.errorbar([r["value"]], [yi], yerr=err, fmt=styles[r["key"]].marker, color=c, ecolor=c,
                            markeredgecolor="black", markeredgewidth=0.3, capsize=1.5, elinewidth=0.7, zorder=3,
                            label=styles.label(r["key"]))
            best = int(np.nanargmin(y) if lower_is_better else np.nanargmax(y))
            ax.annotate(f"{y[best]:.1f}", (sub["value"].iloc[best], y[best]), textcoords="offset points",
                        xytext=(5, -2 if lower_is_better else 2), ha="left", va="top" if lower_is_better else "bottom",
                        fontsize=6, color=line)
        if baseline is not None and not math.isnan(baseline):
            ax.axhline(baseline * scale, color="#7a7a7a", linestyle="--", linewidth=0.8, label=baseline_label)
        if log and points["value"].min() > 0:
            ax.set_xscale("log")
        vals = sorted(points["value"].unique())
        ax.set_xticks(vals)
        ax.set_xticklabels([f"{v:g}" for v in vals])
        ax.minorticks_off()
        ax.set_xlabel(xlabel)
        ax.set_ylabel(metric_label)
        ax.grid(linewidth=0.3, color="#dddddd")
        ax.set_axisbelow(True)
        fig.tight_layout()
        if ax.get_legend_handles_labels()[0]:
            # NOTE: outside the axes, so the legend never covers a point or an error bar
            ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, handlelength=1.5)
    return fig


def _method_color(group: str, styles: ModelStyles, keys: Sequence[str]) -> str:
    """The line colour of a method's runs: the method's colour (TAP blue, ADL orange, TAP & ADL vermillion)."""
    from attnprobe.report.style import KIND_COLORS

    kinds = {styles[k].kind for k in keys}
    kind = {"TAP": "tap", "ADL": "adl", "TAP & ADL": "tapadl"}.get(group) or (kinds.pop() if len(kinds) == 1
                                                                            else "other")
    return KIND_COLORS.get(kind, "#333333")


def fig_corruption_heatmap(errors: Mapping[str, Mapping[str, Mapping[int, float]]],
                           styles: ModelStyles | None = None, annotate: bool = True,
                           width: float = FULL_WIDTH) -> Figure:
    """Top-1 error (%) per corruption (rows, grouped Noise / Blur / Weather / Digital, then extra corruptions) and
    severity (columns), one panel per model, one shared colour scale. Missing cells are hatched grey.

    Args:
        errors: run key -> corruption -> severity -> top-1 error (fraction).
    """
    from attnprobe.protocol import benchmark_corruptions, extra_corruptions
    from attnprobe.robustness import DISPLAY_NAMES

    if not errors:
        raise ValueError("no ImageNet-C errors to draw")
    styles = _styles(styles, list(errors))
    keys = styles.sort(errors)
    present = {c for e in errors.values() for c in e}
    order = [c for c in benchmark_corruptions() + extra_corruptions() if c in present]
    order += sorted(present - set(order))
    sevs = sorted({int(s) for e in errors.values() for v in e.values() for s in v}) or [1, 2, 3, 4, 5]
    grid = np.full((len(keys), len(order), len(sevs)), np.nan)
    for i, k in enumerate(keys):
        for r, c in enumerate(order):
            for j, s in enumerate(sevs):
                v = errors[k].get(c, {}).get(s)
                if v is not None:
                    grid[i, r, j] = v * 100.0
    vmin, vmax = float(np.nanmin(grid)), float(np.nanmax(grid))
    ncols = min(len(keys), 4)
    nrows = math.ceil(len(keys) / ncols)
    panel_w = min(width / ncols, 1.9)
    panel_h = 0.13 * len(order) + 0.45
    with plt.rc_context(rc_params()):
        fig, axes = plt.subplots(nrows, ncols, figsize=(panel_w * ncols + 0.5, panel_h * nrows), squeeze=False,
                                 sharey=True, gridspec_kw={"wspace": 0.08, "hspace": 0.35})
        im = None
        for i, k in enumerate(keys):
            ax = axes[i // ncols, i % ncols]
            ax.set_facecolor("#eeeeee")
            im = ax.imshow(grid[i], cmap="YlOrRd", vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
            if annotate and len(order) * len(sevs) <= 120:
                for r in range(len(order)):
                    for j in range(len(sevs)):
                        v = grid[i, r, j]
                        if not math.isnan(v):
                            dark = (v - vmin) / max(vmax - vmin, 1e-9) > 0.6
                            ax.text(j, r, f"{v:.0f}", ha="center", va="center", fontsize=4.5,
                                    color="white" if dark else "black")
            ax.set_xticks(range(len(sevs)))
            ax.set_xticklabels([str(s) for s in sevs])
            ax.set_xlabel("Severity", labelpad=1)
            ax.set_yticks(range(len(order)))
            ax.set_yticklabels([DISPLAY_NAMES.get(c, c.replace("_", " ")) for c in order])
            ax.tick_params(length=0)
            for s in ax.spines.values():
                s.set_visible(False)
            ax.set_title(styles.label(k), color=styles.color(k), fontweight="bold")
        for i in range(len(keys), nrows * ncols):
            axes[i // ncols, i % ncols].axis("off")
        if im is not None:
            cb = fig.colorbar(im, ax=axes.ravel().tolist(), fraction=0.03, pad=0.02,
                              shrink=min(1.0, 0.5 + 0.25 * nrows))
            cb.set_label("Top-1 error (%)")
            cb.outline.set_linewidth(0.4)
    return fig
