"""`attnprobe report`: every figure and table the results store can support, plus `index.html`.

Reads the store read-only and never loads a model. Sections appear only when the store holds their data:

* tables: Table 2/5 (accuracy and robustness per model, changes against the baseline, paper numbers beside ours),
  Table 3 (CE per corruption), attention stability and head similarity with paired bootstrap intervals,
  differences against the baseline with intervals, per-layer diagnostics, ImageNet-C errors per cell (CSV);
* figures: Fig. 1 left/right, Fig. 3, Fig. 4, Fig. 5, supplementary Fig. I (maps and curves), Fig. 7 for every
  hyper-parameter that varies across runs, and the corruption x severity error heat map.

Usage:

    from attnprobe.report import build_report
    result = build_report("results/", "reports/run1", baseline="fan_b", ce_reference="alexnet")
    print(result.index)
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from attnprobe.errors import UserError
from attnprobe.outdir import check_output_folder
from attnprobe.report import bootstrap as B
from attnprobe.report import figures as F
from attnprobe.report import tables as T
from attnprobe.report.html import FigureEntry, TableEntry, render_index
from attnprobe.report.segmentation import SEG_TASKS, segmentation_section
from attnprobe.report.loaders import (
    MapRef,
    attention_map_refs,
    cells_frame,
    chunks_frame,
    diagnostic_values,
    diagnostics_frame,
    load_attention_pair,
    models_frame,
    open_store,
    paper_numbers,
)
from attnprobe.report.style import ModelStyles, method_kind, save_figure
from attnprobe.report.sources import one_corruption_source, parse_source
from attnprobe.report.summary import (
    CountingSummary,
    DiagnosticSummary,
    choose_condition,
    counting_summary,
    diagnostic_summary,
    per_layer_means,
)
from attnprobe.store import ResultsStore

__all__ = ["DIAGNOSTIC_METRICS", "ReportData", "ReportResult", "build_report", "load_report_data",
           "FIGURE_FORMATS"]

DIAGNOSTIC_METRICS = ("attention_cosine", "head_similarity", "row_similarity", "topk_column_mass", "row_entropy",
                      "column_gini")
FIGURE_FORMATS = ("png", "pdf", "svg")


@dataclass
class ReportData:
    """Everything the report draws, loaded once from the store."""

    store_root: Path
    runs: pd.DataFrame
    cells: pd.DataFrame
    chunks: pd.DataFrame
    diagnostics: dict[str, pd.DataFrame]
    maps: list[MapRef]
    keys: list[str]
    cards: dict[str, dict[str, Any]]
    shas: dict[str, str]
    styles: ModelStyles
    baseline: str | None
    notes: list[str] = field(default_factory=list)  # what loading chose (e.g. one corruption source per series)

    def checkpoints(self, keys: Sequence[str] | None = None) -> str:
        """'Checkpoints (sha256): FAN-B 823a2f9fbfbc, ...' for the caption."""
        keys = [k for k in (keys if keys is not None else self.keys) if k in self.shas]
        return "Checkpoints (sha256): " + ", ".join(f"{self.styles.label(k)} {self.shas[k][:12]}" for k in keys) + "."


@dataclass
class ReportResult:
    """What `build_report` wrote."""

    out_dir: Path
    index: Path
    figures: list[FigureEntry] = field(default_factory=list)
    tables: list[TableEntry] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"out_dir": str(self.out_dir), "index": str(self.index),
                "figures": [{"name": f.name, "title": f.title, "files": [str(p) for p in f.files]}
                            for f in self.figures],
                "tables": [{"name": t.name, "title": t.title, "files": [str(p) for p in t.files]} for t in self.tables],
                "notes": self.notes}


def _check_formats(formats: Sequence[str]) -> list[str]:
    out = [f.strip().lower().lstrip(".") for f in formats if f.strip()]
    bad = [f for f in out if f not in FIGURE_FORMATS]
    if bad or not out:
        raise UserError(f"unknown figure format(s) {', '.join(bad) or '(none)'}; use --format png,pdf (any of "
                        f"{', '.join(FIGURE_FORMATS)})")
    return out


def default_baseline(keys: Sequence[str], cards: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The first run whose card or name says it is a plain model (no TAP/ADL), if any."""
    plain = [k for k in keys if method_kind(k.split("@")[0], cards.get(k)) == "baseline"]
    return sorted(plain)[0] if plain else None


def load_report_data(store: ResultsStore, baseline: str | None = None,
                     models: Sequence[str] | None = None) -> ReportData:
    """Load runs, cells, chunks, diagnostics and attention maps; fix one style per run.

    Args:
        baseline: run key to compare with (default: the first plain model); a key not in the store raises.
        models: restrict to these run keys (model names); unknown names raise.
    """
    runs = models_frame(store)
    cells = cells_frame(store)
    cells = cells[~cells["task"].isin(SEG_TASKS)] if not cells.empty else cells  # NOTE: drawn by report/segmentation
    chunks = chunks_frame(store)
    diags, notes = {}, []
    for m in DIAGNOSTIC_METRICS:  # NOTE: one corruption backend/recipe per series, never a mix (report.sources)
        diags[m], more = one_corruption_source(diagnostics_frame(store, m), m)
        notes += more
    maps = attention_map_refs(store)
    keys = sorted(set(runs["key"]) | set(cells["key"] if not cells.empty else [])
                  | {k for d in diags.values() for k in d["key"].unique()} | {m.key for m in maps})
    if not keys:
        raise UserError(f"the results store at {store.root} holds no results; run an evaluation or diagnostics "
                        f"command with --out {store.root} first")
    if models:
        unknown = [m for m in models if m not in keys]
        if unknown:
            raise UserError(f"model(s) {', '.join(unknown)} not in the results store; choose from: "
                            f"{', '.join(keys)}")
        keys = [k for k in keys if k in set(models)]
        cells = cells[cells["key"].isin(keys)] if not cells.empty else cells
        chunks = chunks[chunks["key"].isin(keys)] if not chunks.empty else chunks
        diags = {m: d[d["key"].isin(keys)] for m, d in diags.items()}
        maps = [m for m in maps if m.key in keys]
    cards = {r.key: (r.card or {}) for r in runs.itertuples(index=False)}
    maps = [m for m in maps if cards.get(m.key, {}).get("task") != "segmentation"]  # NOTE: supp. Fig. IV draws them
    shas: dict[str, str] = {r.key: r.checkpoint_sha256 for r in runs.itertuples(index=False)}
    for df in (cells, *diags.values()):
        if not df.empty:
            for k, s in zip(df["key"], df["checkpoint_sha256"]):
                shas.setdefault(k, s)
    if baseline is not None and baseline not in keys:
        raise UserError(f"--baseline '{baseline}' is not in the results store; choose one of: {', '.join(keys)}")
    if baseline is None:
        baseline = default_baseline(keys, cards)
    styles = ModelStyles(keys, cards, baseline)
    return ReportData(store_root=store.root, runs=runs, cells=cells, chunks=chunks, diagnostics=diags, maps=maps,
                      keys=styles.sort(keys), cards=cards, shas=shas, styles=styles, baseline=baseline, notes=notes)


def _short(fps: Sequence[str], n: int = 3) -> str:
    fps = list(dict.fromkeys(fps))
    shown = ", ".join(f if len(f) <= 24 else f[:16] + "…" for f in fps[:n])
    return shown + (f" and {len(fps) - n} more" if len(fps) > n else "")


# -- figures ---------------------------------------------------------------------------------------------------------
def _pick_map_condition(maps: Sequence[MapRef], condition: str | None,
                        severity: int | None) -> tuple[str, int] | None:
    corr = [m for m in maps if m.corrupted_path is not None]
    if condition is not None:
        sel = [m for m in maps if m.condition == condition and (severity is None or m.severity == severity)]
        if not sel:
            return None
        return condition, sel[0].severity
    pool = corr or list(maps)
    if not pool:
        return None
    df = pd.DataFrame({"condition": [m.condition for m in pool], "severity": [m.severity for m in pool],
                       "image": [m.image for m in pool]})
    return choose_condition(df)


def _map_subset(data: ReportData, condition: str | None, severity: int | None,
                image: str | None = None) -> tuple[list[MapRef], list[str]]:
    """Maps of the chosen corruption and the images ordered by how many runs have them."""
    picked = _pick_map_condition(data.maps, condition, severity)
    if picked is None:
        return [], []
    cond, sev = picked
    sel = [m for m in data.maps if m.condition == cond and m.severity == sev]
    counts: dict[str, int] = {}
    for m in sel:
        counts[m.image] = counts.get(m.image, 0) + 1
    images = sorted(counts, key=lambda i: (-counts[i], i))
    if image is not None:
        if image not in counts:
            raise UserError(f"no saved attention maps for image '{image}'; choose one of: "
                            f"{', '.join(images[:10])}")
        images = [image] + [i for i in images if i != image]
    return sel, images


def select_map_runs(keys: Sequence[str], styles: ModelStyles, max_models: int = 5) -> list[str]:
    """At most `max_models` runs for the map figures: the baseline, then the first run of each method (TAP, ADL,
    TAP & ADL, other), then the rest in drawing order."""
    ordered = styles.sort(keys)
    if len(ordered) <= max_models:
        return ordered
    chosen: list[str] = []
    for kind in ("baseline", "tap", "adl", "tapadl", "other"):
        first = next((k for k in ordered if styles[k].kind == kind), None)
        if first is not None:
            chosen.append(first)
    chosen += [k for k in ordered if k not in chosen]
    return styles.sort(chosen[:max_models])


def draw_attention_figures(data: ReportData, out: Path, formats: Sequence[str], condition: str | None = None,
                           severity: int | None = None, image: str | None = None, layer: int = -1,
                           max_images: int = 3, which: Sequence[str] = ("fig1", "fig3", "fig4", "figI_maps"),
                           head_similarity: Mapping[str, B.Interval] | None = None,
                           max_models: int = 5) -> list[FigureEntry]:
    """Fig. 1 (left), Fig. 3, Fig. 4 and supplementary Fig. I maps from the saved attention maps (at most
    `max_models` runs, see `select_map_runs`)."""
    sel, images = _map_subset(data, condition, severity, image)
    if not sel:
        return []
    runs = select_map_runs(sorted({m.key for m in sel}), data.styles, max_models)
    wanted = set(images[:max(max_images, 1)])
    loaded = [load_attention_pair(r) for r in sel if r.key in runs and r.image in wanted]
    sel = [m for m in loaded if m is not None]
    if not sel:
        return []
    check_layer([m.num_layers for m in sel], layer)  # the files themselves, when the store did not record it
    images = [i for i in images if i in {m.image for m in sel}]
    first = [m for m in sel if m.image == images[0]]
    cond, sev = first[0].condition, first[0].severity
    n, L, H = first[0].num_tokens, first[0].num_layers, first[0].num_heads
    prefix = (f" Class tokens removed ({first[0].prefix_tokens}), patch tokens only." if first[0].prefix_tokens
              else "")
    corr_text = f", corrupted with {F.pretty_condition(cond, sev)}" if cond != "clean" else ""
    data_text = f"Data: image {images[0]} of dataset {_short([m.dataset for m in first])}{corr_text}.{prefix}"
    entries = []
    keys = [m.key for m in first]
    if "fig1" in which:
        fig = F.fig1_attention_maps(first, data.styles, layer=layer)
        entries.append(FigureEntry(
            "fig1_attention_maps", "Fig. 1 (left): attention maps, clean and corrupted",
            f"Input image (clean, then corrupted) and each model's token attention of layer "
            f"{(layer % L) + 1} of {L}, averaged over the {H} heads ({n}×{n}; row = output token, column = input "
            f"token; darker = more attention; colour scale shared by a model's clean and corrupted map, topped at "
            f"the 99.9th percentile but at least 4/N, so near-uniform attention looks pale). {data_text} "
            f"{data.checkpoints(keys)}",
            save_figure(fig, out / "fig1_attention_maps", formats)))
    if "fig3" in which:
        fig = F.fig3_attention_grid(sel, data.styles, layer=layer, images=images[:max_images])
        entries.append(FigureEntry(
            "fig3_attention_grid", "Fig. 3: attention maps of the models side by side",
            f"Rows: images {', '.join(images[:max_images])}; for each model its last-layer head-averaged map on the "
            f"clean and on the corrupted ({F.pretty_condition(cond, sev)}) input. Dataset "
            f"{_short([m.dataset for m in sel])}. {data.checkpoints(sorted({m.key for m in sel}))}",
            save_figure(fig, out / "fig3_attention_grid", formats)))
    if "fig4" in which:
        fig = F.fig4_heads(first, data.styles, layer=layer, head_similarity=head_similarity)
        entries.append(FigureEntry(
            "fig4_heads", "Fig. 4: every head of the last layer",
            f"Each head's attention map of layer {(layer % L) + 1} on the clean image {images[0]}; the title gives "
            f"the model's head similarity (mean cosine between the maps of all head pairs; lower = more diverse "
            f"heads), averaged over the stored images of layer {(layer % L) + 1} when the store has it. "
            f"{data_text} {data.checkpoints(keys)}",
            save_figure(fig, out / "fig4_heads", formats)))
    if "figI_maps" in which and L > 1:
        fig = F.figI_layer_maps(first, data.styles)
        entries.append(FigureEntry(
            "figI_layer_maps", "Supplementary Fig. I: attention of intermediate layers",
            f"Head-averaged maps of several layers (columns) for each model, clean and corrupted rows. "
            f"{data_text} {data.checkpoints(keys)}",
            save_figure(fig, out / "figI_layer_maps", formats)))
    return entries


def draw_stability_figures(data: ReportData, out: Path, formats: Sequence[str], condition: str | None = None,
                           severity: int | None = None, n_resamples: int = B.DEFAULT_RESAMPLES,
                           seed: int = 0) -> list[FigureEntry]:
    """Fig. 1 (right) / Fig. 5 and the per-layer curves of supplementary Fig. I."""
    entries = []
    cos = data.diagnostics.get("attention_cosine", pd.DataFrame())
    if not cos.empty:
        if condition is None:
            condition, severity = choose_condition(cos)  # type: ignore[misc]
        sub = cos[(cos["condition"] == condition) & ((cos["severity"] == severity) if severity is not None else True)]
        if sub.empty:
            have = ", ".join(sorted({f"{c}/{s}" for c, s in zip(cos["condition"], cos["severity"])}))
            raise UserError(f"no attention-stability values for {condition} severity {severity}; stored: {have}")
        severity = int(sub["severity"].iloc[0]) if severity is None else severity
        with open_store(data.store_root) as store:
            raw = diagnostic_values(store, "attention_cosine", condition, severity)
        fig = F.fig_stability_distribution(cos, data.styles, condition, severity, n_resamples=n_resamples, seed=seed,
                                           values=raw)
        keys = data.styles.sort(sub["key"].unique())
        entries.append(FigureEntry(
            "fig5_stability", "Fig. 1 (right) / Fig. 5: attention stability under corruption",
            f"Cosine similarity between each head's attention map on the clean and on the corrupted image "
            f"({F.pretty_condition(condition, severity)}), one value per image, layer and head; violin = "
            f"distribution, box = quartiles, marker with error bar = mean and its 95% interval from a paired "
            f"bootstrap over the {sub['image'].nunique()} images ({n_resamples} resamples). Dataset "
            f"{_short(sub['dataset'].unique())}. {data.checkpoints(keys)}",
            save_figure(fig, out / "fig5_stability", formats)))
    frames = {m: d for m, d in data.diagnostics.items() if not d.empty}
    if any(m in frames for m in ("attention_cosine", *F.OVERFOCUS_METRICS)):
        try:
            fig = F.figI_layer_curves(frames, data.styles, condition=condition, severity=severity,
                                      n_resamples=n_resamples, seed=seed)
        except ValueError:
            return entries
        over = next((m for m in F.OVERFOCUS_METRICS if m in frames), None)
        keys = sorted({k for d in frames.values() for k in d["key"].unique()})
        entries.append(FigureEntry(
            "figI_layer_curves", "Supplementary Fig. I: overfocusing and stability against depth",
            (f"Left: {F.OVERFOCUS_METRICS[over].lower()} of the head-averaged map per layer on clean images "
             f"(higher = attention piled on fewer input tokens). " if over else "")
            + (f"Right: mean clean-vs-corrupted attention cosine per layer "
               f"({F.pretty_condition(condition, severity)}). " if condition else "")
            + f"Bands: 95% bootstrap intervals over images. Dataset "
              f"{_short([d for f in frames.values() for d in f['dataset'].unique()])}. "
            + data.checkpoints(data.styles.sort(keys)),
            save_figure(fig, out / "figI_layer_curves", formats)))
    return entries


def _hparam_points(data: ReportData, summary: CountingSummary | None, hparam: str,
                   stability: Mapping[str, B.Interval] | None) -> tuple[pd.DataFrame, str, bool]:
    """Runs carrying `hparam` with their mCE (or mean stability when no mCE is stored)."""
    rows = []
    use_mce = summary is not None and "mce" in summary.table.columns
    for k in data.keys:
        v = F.hparam_value(data.cards.get(k, {}), hparam)
        if v is None:
            continue
        if use_mce:
            m = summary.table.loc[k, "mce"] if k in summary.table.index else math.nan  # type: ignore[union-attr]
            iv = summary.intervals.get((k, "mce"))  # type: ignore[union-attr]
        else:
            iv = (stability or {}).get(k)
            m = iv.estimate if iv else math.nan
        if m is None or math.isnan(float(m)):
            continue
        src = summary.sources.get((k, "mce")) if use_mce else None  # type: ignore[union-attr]
        rows.append({"key": k, "value": v, "metric": float(m), "low": iv.low if iv else math.nan,
                     "high": iv.high if iv else math.nan, "group": data.styles[k].kind,
                     "source": src.source.signature if src is not None else None})
    pts = pd.DataFrame(rows)
    if use_mce and not pts.empty:
        # NOTE: one curve is one data source: runs measured on another source than most of them are left out
        common = pts["source"].value_counts().index[0]
        pts = pts[pts["source"].map(lambda sig: sig == common)]
    label = "mCE (%)" if use_mce else "Attention cosine"
    return pts.drop(columns="source") if not pts.empty else pts, label, use_mce


def draw_hparam_figures(data: ReportData, out: Path, formats: Sequence[str], summary: CountingSummary | None,
                        stability: Mapping[str, B.Interval] | None) -> list[FigureEntry]:
    """Fig. 7 for every hyper-parameter that takes at least three values among runs of one method."""
    entries = []
    for hp in F.HPARAMS:
        pts, label, use_mce = _hparam_points(data, summary, hp, stability)
        if pts.empty:
            continue
        # one line per method whose runs differ in this value (e.g. TAP runs for K, ADL runs for lambda)
        pts = pts.groupby("group").filter(lambda g: g["value"].nunique() >= 3)
        if pts.empty:
            continue
        base = None
        if data.baseline is not None and summary is not None and use_mce and data.baseline in summary.table.index:
            base = summary.table.loc[data.baseline, "mce"]
        pts = pts.assign(group=[{"tap": "TAP", "adl": "ADL", "tapadl": "TAP & ADL"}.get(g, g) for g in pts["group"]])
        fig = F.fig7_hyperparameter(pts, hp, label, data.styles, baseline=base,
                                    baseline_label=data.styles.label(data.baseline) if data.baseline else "baseline",
                                    percent=use_mce, lower_is_better=use_mce)
        what = "mCE on ImageNet-C (lower is better)" if use_mce else "mean attention cosine (higher is more stable)"
        entries.append(FigureEntry(
            f"fig7_{hp.lower()}", f"Fig. 7: {what} against {F.HPARAMS[hp][1]}",
            f"One point per run whose model card carries {hp} ({len(pts)} runs); error bars: 95% intervals "
            f"({'normal approximation or chunk bootstrap, see Table 2 notes' if use_mce else 'bootstrap over images'})"
            f"; dashed line: the baseline. "
            + (" ".join(_source_lines(summary, "mce", {k: data.styles.label(k) for k in pts["key"]}, pts["key"]))
               + " " if use_mce and summary is not None else "")
            + data.checkpoints(list(pts["key"])),
            save_figure(fig, out / f"fig7_{hp.lower()}", formats)))
    return entries


# -- the report ------------------------------------------------------------------------------------------------------
def build_report(results_dir: str | Path, out_dir: str | Path, baseline: str | None = None,
                 ce_reference: str = "alexnet", formats: Sequence[str] = ("png", "pdf"),
                 n_resamples: int = B.DEFAULT_RESAMPLES, seed: int = 0, condition: str | None = None,
                 severity: int | None = None, layer: int = -1, max_images: int = 3,
                 models: Sequence[str] | None = None, title: str = "attnprobe report",
                 source: str | None = None) -> ReportResult:
    """Draw every figure and table the store supports into `out_dir` and write `out_dir/index.html`.

    Args:
        results_dir: directory of the results store (opened read-only).
        out_dir: where figures/, tables/ and index.html go (created; existing files of the same name are redrawn).
        baseline: run key for the changes in parentheses and the paired differences (default: the first plain
            model, i.e. one without TAP/ADL).
        ce_reference: 'alexnet' (the standard) or a run key whose errors normalise the CEs (demo stores); the
            report says which.
        formats: figure formats among png, pdf, svg (PNG at 300 dpi).
        n_resamples, seed: bootstrap settings.
        condition, severity: corruption for the stability figures and maps (default: the most common, Gaussian
            noise preferred).
        layer: layer of the attention maps in Fig. 1, 3 and 4 (default: the last).
        models: restrict the report to these runs.
        source: the data source Table 2 shows where a store holds several: 'released' or 'regenerated'
            (= 'on-the-fly'); default: the full set first, then released data (every source is listed apart).
    """
    formats = _check_formats(formats)
    family = parse_source(source)
    out = Path(out_dir).expanduser().resolve()
    with open_store(results_dir) as store:
        data = load_report_data(store, baseline=baseline, models=models)
    _check_request(data, out, condition, layer)
    # NOTE: folders are made by the first file written into them, so a refused request leaves nothing behind
    fig_dir, tab_dir = out / "figures", out / "tables"
    page = _Page(data, tab_dir)
    page.notes += data.notes
    summary = _counting_section(page, fig_dir, formats, ce_reference, n_resamples, seed, family)
    stab = _diagnostics_section(page, condition, severity, n_resamples, seed)
    figures = page.figures
    figures += draw_stability_figures(data, fig_dir, formats, stab.condition if stab else condition,
                                      stab.severity if stab else severity, n_resamples, seed)
    figures += draw_attention_figures(data, fig_dir, formats, condition, severity, layer=layer,
                                      max_images=max_images,
                                      head_similarity=_last_layer_head_similarity(data, n_resamples, seed)
                                      if layer == -1 else None)
    figures += draw_hparam_figures(data, fig_dir, formats, summary, stab.means if stab else None)
    # segmentation: Table 4, supplementary Tables IV / V, Figs. 6, V, VI (attnprobe.report.segmentation)
    with open_store(results_dir) as store:
        seg = segmentation_section(store, fig_dir, tab_dir, formats, data.styles, data.keys, data.baseline, data.cards)
    page.tables += seg.tables
    figures += seg.figures
    page.notes += seg.notes
    if not figures and not page.tables:
        page.notes.append("The store holds no results this report can draw yet.")
    labels = page.labels
    intro = [f"Results store: {data.store_root}", f"Generated {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} "
             f"UTC from the store alone (no model loaded).",
             f"Baseline for changes: {labels.get(data.baseline or '', 'none')}. CE reference: "
             f"{'AlexNet' if ce_reference.lower() == 'alexnet' else labels.get(ce_reference, ce_reference)}."
             + (f" Data source asked for: {source}." if family else "")]
    index = out / "index.html"
    out.mkdir(parents=True, exist_ok=True)
    index.write_text(render_index(out, title, intro, _runs_table(data), page.tables, figures, page.notes),
                     encoding="utf-8")
    return ReportResult(out_dir=out, index=index, figures=figures, tables=page.tables, notes=page.notes)


def check_layer(depths: Iterable[int | None], layer: int) -> None:
    """Refuse a `--layer` that attention maps of these depths (layer counts; None = unknown) do not have."""
    depths = [d for d in depths if d]
    if not depths:
        return
    n = min(depths)
    if not -n <= layer < n:
        raise UserError(f"--layer {layer} is out of range: the stored attention maps have {n} layers; use 0 to "
                        f"{n - 1}, or -1 to -{n} counting from the last")


def _check_request(data: ReportData, out: Path, condition: str | None, layer: int) -> None:
    """Refuse what cannot be drawn before writing anything."""
    if out == data.store_root:
        raise UserError("--out must not be the results directory itself; choose e.g. "
                        f"{data.store_root / 'report'}")
    check_output_folder(out)
    if condition is not None:
        stored = set(data.diagnostics["attention_cosine"]["condition"]) | {m.condition for m in data.maps}
        if condition not in stored:
            raise UserError(f"no attention-stability values or maps for corruption '{condition}'; stored: "
                            f"{', '.join(sorted(stored - {'clean'})) or '(none)'}; drop --corruption or run "
                            f"`attnprobe stability --corruption {condition}` first")
    check_layer([m.num_layers for m in data.maps], layer)


class _Page:
    """What the report page collects while the sections are drawn: tables (written at once), figures, notes."""

    def __init__(self, data: ReportData, tab_dir: Path) -> None:
        self.data, self.tab_dir = data, tab_dir
        self.tables: list[TableEntry] = []
        self.figures: list[FigureEntry] = []
        self.notes: list[str] = []
        self.labels = {k: data.styles.label(k) for k in data.keys}
        paper = {k: paper_numbers(data.cards.get(k, {})) for k in data.keys}
        self.paper = {k: v for k, v in paper.items() if v}

    def add_table(self, t: T.Table, caption: str) -> None:
        files = T.write_table(t, self.tab_dir)
        self.tables.append(TableEntry(t.name, t.title, caption, T.to_html(t), files))


def _counting_section(page: _Page, fig_dir: Path, formats: Sequence[str], ce_reference: str, n_resamples: int,
                      seed: int, source: str | None) -> CountingSummary | None:
    """Table 2 and its data sources, Table 3, the differences against the baseline and the ImageNet-C heat map."""
    data, labels = page.data, page.labels
    if data.cells.empty:
        return None
    cell_keys = [k for k in data.keys if k in set(data.cells["key"])]
    summary = counting_summary(data.cells, data.chunks, ce_reference=ce_reference,
                               baseline=data.baseline if data.baseline in cell_keys else None,
                               n_resamples=n_resamples, seed=seed, keys=cell_keys, source=source)
    if any(c in summary.table.columns for c, _, _ in T.SUMMARY_COLUMNS):
        t = T.summary_table(summary.table, labels, data.baseline, summary.intervals, page.paper,
                            notes=summary.notes, sources=summary.sources)
        page.add_table(t, "Top-1 accuracy (clean, ImageNet-A/-R, PGD), mCE and mFR in %; the notes name the data "
                          "source and image count of every column. "
                          f"{data.checkpoints(list(summary.table.index))}")
    others = sorted({f"{T.column_header(col)} of {labels.get(key, key)}" for key, col, _, used in summary.alternatives
                     if not used})
    if others:  # several sources for some number: list them apart, and say so on the console too
        page.notes.append(f"The store holds several data sources for {', '.join(others[:4])}"
                          f"{' and more' if len(others) > 4 else ''}; Table 2 shows one source per number, "
                          f"table2_sources lists them all (choose with --source).")
        page.add_table(T.sources_table(summary.alternatives, labels),
                       "Each data source the store holds for each model and benchmark, with its own number; "
                       "'In Table 2' marks the one Table 2 shows.")
    if summary.ce is not None:
        ref_name = "AlexNet" if ce_reference.lower() == "alexnet" else labels.get(ce_reference, ce_reference)
        t = T.ce_table(summary.ce, labels, page.paper, reference=ref_name, notes=_source_lines(summary, "mce", labels))
        page.add_table(t, f"CE per corruption = mean error over severities 1-5 / {ref_name}'s, in %. "
                          f"{data.checkpoints(list(summary.ce.index))}")
        if ce_reference.lower() != "alexnet":
            page.notes.append(f"CEs and mCE are normalised by {ref_name}, not by AlexNet: they are not comparable "
                              f"with published mCE values.")
    if summary.differences:
        cols = [(c, h) for c, h, _ in T.SUMMARY_COLUMNS if any(c in d for d in summary.differences.values())]
        t = T.interval_table(summary.differences, cols, "differences_vs_baseline",
                             f"Change against {labels.get(data.baseline or '', data.baseline)} with 95% "
                             f"intervals (percentage points).", labels, digits=1, scale=100.0, plusminus=False,
                             notes=[n for n in summary.notes if "interval" in n])
        page.add_table(t, "Run minus baseline, only where both were measured on the same data source; brackets: 95% "
                          "interval: a paired bootstrap over images when the store has per-image records, else over "
                          "chunks when there are enough, else a normal approximation that treats the two models as "
                          "independent (conservative).")
    if summary.errors:
        page.figures.append(_heatmap_entry(page, summary, fig_dir, formats))
    return summary


def _source_lines(summary: CountingSummary, col: str, labels: Mapping[str, str],
                  keys: Iterable[str] | None = None) -> list[str]:
    """'Data: FAN-B released ImageNet-C, 50000 images per cell (75 cells); ...' for one column (of `keys`)."""
    by: dict[str, list[str]] = {}
    wanted = set(keys) if keys is not None else None
    for (key, c), g in summary.sources.items():
        if c == col and (wanted is None or key in wanted):
            by.setdefault(f"{g.source.words()}, {g.count_words()}", []).append(labels.get(key, key))
    if len(by) == 1:
        return [f"Data: {next(iter(by))}."]
    return ["Data: " + "; ".join(f"{', '.join(ks)}: {text}" for text, ks in by.items()) + "."]


def _heatmap_entry(page: _Page, summary: CountingSummary, fig_dir: Path, formats: Sequence[str]) -> FigureEntry:
    data, labels = page.data, page.labels
    grid = pd.DataFrame([{"model": labels.get(k, k), "corruption": c, "severity": s, "top1_error": e * 100,
                          "source": summary.sources[(k, "mce")].source.tag() if (k, "mce") in summary.sources
                          else ""}
                         for k, cs in summary.errors.items() for c, ss in cs.items() for s, e in ss.items()])
    p = page.tab_dir / "imagenet_c_errors.csv"
    p.parent.mkdir(parents=True, exist_ok=True)
    grid.to_csv(p, index=False, float_format="%.4g")
    fig = F.fig_corruption_heatmap(summary.errors, data.styles)
    return FigureEntry(
        "imagenet_c_heatmap", "Top-1 error per corruption and severity",
        f"ImageNet-C top-1 error (%) of each model per corruption (rows) and severity (columns); grey = not "
        f"evaluated. {' '.join(_source_lines(summary, 'mce', labels))} "
        f"{data.checkpoints(data.styles.sort(summary.errors))} Values: {p.name}.",
        save_figure(fig, fig_dir / "imagenet_c_heatmap", formats) + [p])


def _diagnostics_section(page: _Page, condition: str | None, severity: int | None, n_resamples: int,
                         seed: int) -> DiagnosticSummary | None:
    """The stability / head-similarity table with intervals and the per-layer table; returns the stability."""
    data = page.data
    cos, hs = data.diagnostics["attention_cosine"], data.diagnostics["head_similarity"]
    stab = diagnostic_summary(cos, "attention_cosine", condition, severity, data.baseline, data.keys,
                              n_resamples, seed) if not cos.empty else None
    hsum = diagnostic_summary(hs, "head_similarity", "clean", None, data.baseline, data.keys, n_resamples,
                              seed) if not hs.empty else None
    if stab is None and condition is not None and not cos.empty:
        raise UserError(f"no attention-stability values for corruption '{condition}'; stored: "
                        f"{', '.join(sorted(cos['condition'].unique()))}")
    if stab is not None or hsum is not None:
        _stability_table(page, stab, hsum, n_resamples, seed)
    frames = {m: d for m, d in data.diagnostics.items() if not d.empty}
    pl = per_layer_means(frames, stab.condition if stab else None, stab.severity if stab else None) \
        if frames else pd.DataFrame()
    if not pl.empty:
        pl = pl.loc[[k for k in data.keys if k in pl.index.get_level_values(0)]]
        t = T.layer_table(pl, page.labels, notes=["Stability at " + F.pretty_condition(stab.condition, stab.severity)
                                                  if stab else "", "Other metrics on clean images, heads averaged "
                                                  "(head similarity: mean over head pairs)."])
        t.notes = [n for n in t.notes if n]
        page.add_table(t, f"Means over images per layer (layer 1 = first block). {data.checkpoints(data.keys)}")
    return stab


def _stability_table(page: _Page, stab: DiagnosticSummary | None, hsum: DiagnosticSummary | None,
                     n_resamples: int, seed: int) -> None:
    data, labels = page.data, page.labels
    cols = []
    if stab is not None:
        cols += [("stability", f"Stability ({F.pretty_condition(stab.condition, stab.severity)})")]
        cols += [("stability_delta", "Δ stability")] if stab.differences else []
    if hsum is not None:
        cols += [("head_similarity", "Head similarity (clean)")]
        cols += [("head_similarity_delta", "Δ head sim.")] if hsum.differences else []
    rows: dict[str, dict[str, B.Interval | None]] = {}
    for k in data.keys:
        r: dict[str, B.Interval | None] = {}
        for name, s in (("stability", stab), ("head_similarity", hsum)):
            if s is not None:
                r[name], r[f"{name}_delta"] = s.means.get(k), s.differences.get(k)
        if any(v is not None for v in r.values()):
            rows[k] = r
    n_note = ([f"stability over the {stab.n_images} images every model has"] if stab is not None else []) + \
        ([f"head similarity over {hsum.n_images} images"] if hsum is not None else [])
    t = T.interval_table(rows, cols, "attention_stability",
                         "Attention stability and head similarity (mean ± half of the 95% interval).", labels,
                         digits=2, scale=1.0,
                         notes=["Stability: cosine between clean and corrupted attention maps, averaged over "
                                "layers and heads per image, then over images. Head similarity: mean cosine "
                                "between the maps of all head pairs (lower = more diverse heads).",
                                "Intervals: percentile bootstrap over images, the same resampled images for "
                                f"every model ({n_resamples} resamples, seed {seed}); Δ = model minus "
                                f"{labels.get(data.baseline or '', data.baseline)}, paired over images; "
                                + "; ".join(n_note) + "."])
    paper_hs = {k: v["head_similarity"] for k, v in page.paper.items() if "head_similarity" in v}
    extra = (" Paper head similarity: " + ", ".join(f"{labels.get(k, k)} {v:.2f}" for k, v in paper_hs.items())
             + ".") if paper_hs else ""
    ds = sorted(set(stab.datasets if stab else []) | set(hsum.datasets if hsum else []))
    page.add_table(t, f"Dataset {_short(ds)}. {data.checkpoints(list(rows))}{extra}")


def _last_layer_head_similarity(data: ReportData, n_resamples: int, seed: int) -> dict[str, B.Interval] | None:
    """Per run: mean head similarity of its last layer on clean images (the number Fig. 4's titles give)."""
    hs = data.diagnostics.get("head_similarity", pd.DataFrame())
    if hs.empty or not (hs["condition"] == "clean").any():
        return None
    hs = hs[hs["condition"] == "clean"]
    last = hs.groupby("key")["layer"].transform("max")
    return {k: B.bootstrap_mean(g.groupby("image")["value"].mean().to_numpy(), n_resamples, seed)
            for k, g in hs[hs["layer"] == last].groupby("key")}


def _runs_table(data: ReportData) -> str:
    import html

    rows = []
    for k in data.keys:
        card = data.cards.get(k, {})
        path = data.runs.loc[data.runs["key"] == k, "checkpoint_path"]
        path = str(path.iloc[0]) if len(path) and path.iloc[0] else "–"
        hp = card.get("hparams") or {}
        hp_text = ", ".join(f"{a}={b}" for a, b in hp.items()) if isinstance(hp, Mapping) else ""
        color = data.styles.color(k)
        rows.append(f'<tr><td><span style="color:{color}">■</span> {html.escape(data.styles.label(k))}</td>'
                    f"<td><code>{html.escape(k)}</code></td><td><code>{html.escape(data.shas.get(k, '')[:16])}"
                    f"</code></td><td>{html.escape(path)}</td><td>{html.escape(hp_text)}</td></tr>")
    return ('<div class="scroll"><table class="results runs"><thead><tr><th>Model</th><th>Run</th>'
            "<th>Checkpoint sha256</th><th>Checkpoint</th><th>Hyper-parameters</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table></div>")


# -- single figures (the plot-* commands) ----------------------------------------------------------------------------
#: What each plot command draws and which stored data it needs.
PLOTS: dict[str, tuple[tuple[str, ...], str]] = {
    "heads": (("fig4",), "maps"),
    "maps": (("fig1", "fig3", "figI_maps"), "maps"),
    "stability": (("fig5", "figI_curves"), "attention_cosine"),
}


def missing_for_plot(results_dir: str | Path, plot: str, models: Sequence[str] | None = None,
                     condition: str | None = None, severity: int | None = None) -> list[str]:
    """Runs among `models` (all runs when None) that lack what `plot` draws; `['*']` when the store has nothing.

    A missing store counts as lacking everything."""
    root = Path(results_dir).expanduser()
    from attnprobe.store import STORE_FILENAME

    if not (root / STORE_FILENAME).exists():
        return list(models) if models else ["*"]
    need = PLOTS[plot][1]
    with open_store(root) as store:
        if need == "maps":
            refs = attention_map_refs(store)
            if plot == "maps":
                refs = [r for r in refs if r.corrupted_path is not None
                        and (condition is None or r.condition == condition)
                        and (severity is None or r.severity == severity)]
            have = {r.key for r in refs}
        else:
            df = one_corruption_source(diagnostics_frame(store, need))[0]
            if condition is not None:
                df = df[df["condition"] == condition]
            if severity is not None:
                df = df[df["severity"] == severity]
            have = set(df["key"].unique())
    if models:
        return [m for m in models if m not in have]
    return [] if have else ["*"]


def plot_figures(results_dir: str | Path, out_dir: str | Path, plot: str, models: Sequence[str] | None = None,
                 image: str | None = None, condition: str | None = None, severity: int | None = None,
                 layer: int = -1, formats: Sequence[str] = ("png", "pdf"), n_resamples: int = B.DEFAULT_RESAMPLES,
                 seed: int = 0, max_images: int = 3) -> list[FigureEntry]:
    """Draw one group of figures from the store: 'heads' (Fig. 4), 'maps' (Fig. 1 left, Fig. 3, suppl. Fig. I maps)
    or 'stability' (Fig. 1 right / Fig. 5 and the per-layer curves of suppl. Fig. I)."""
    if plot not in PLOTS:
        raise ValueError(f"unknown plot {plot!r}")
    formats = _check_formats(formats)
    out = Path(out_dir).expanduser().resolve()
    with open_store(results_dir) as store:
        data = load_report_data(store, models=models)
    if plot == "stability":
        check_output_folder(out)
        entries = draw_stability_figures(data, out, formats, condition, severity, n_resamples, seed)
        if not entries:
            raise UserError("the store has no attention-stability values; run `attnprobe stability --model ... "
                            f"--out {data.store_root}` first")
        return entries
    check_layer([m.num_layers for m in data.maps], layer)
    check_output_folder(out)
    hs_layer = _last_layer_head_similarity(data, n_resamples, seed) if layer == -1 else None
    entries = draw_attention_figures(data, out, formats, condition, severity, image=image, layer=layer,
                                     max_images=max_images, which=PLOTS[plot][0], head_similarity=hs_layer,
                                     max_models=len(models) if models else 5)
    if not entries:
        raise UserError("the store has no saved attention maps to draw; run `attnprobe attention --model ... "
                        f"--corruption gaussian_noise --out {data.store_root}` first")
    return entries
