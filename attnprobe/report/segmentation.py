"""Segmentation part of the report: Table 4 (clean / Cityscapes-C / ACDC mIoU), supplementary Table IV (Cityscapes-C
per corruption, grouped) and Table V (ACDC per condition), with the paper's numbers beside ours, and the mask figures
(Fig. 6, supplementary Figs. V and VI; `attnprobe.report.seg_figures`). Everything is read from the store.

Every number comes from one source per run and set: when a run was evaluated on several datasets (a released tree
and on the fly, a `--limit` subset and the full set) or with several protocols, the tables use the one with the most
cells (then images) and a note says so; every table names its data and image counts.

    section = segmentation_section(store, fig_dir, tab_dir, ("png", "pdf"), styles)
    section.tables, section.figures, section.notes      # TableEntry / FigureEntry lists for the HTML page
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from attnprobe.report import tables as T
from attnprobe.report.html import FigureEntry, TableEntry
from attnprobe.report.style import ModelStyles, method_kind
from attnprobe.store import ResultsStore

__all__ = ["SEG_TASKS", "SegRun", "SegSection", "SegSource", "load_segmentation", "seg_paper_numbers",
           "segmentation_section", "table4_segmentation", "table_iv_cityscapes_c", "table_v_acdc"]

SEG_TASKS = ("cityscapes", "cityscapes_c", "acdc")
_AREAS = ("area_intersect", "area_union", "area_pred", "area_label")


@dataclass
class SegSource:
    """The one dataset and protocol a run's numbers of one set come from."""

    task: str
    dataset: str
    preprocessing: str
    text: str
    images: int
    cells: int
    limit: int | None = None

    def describe(self) -> str:
        unit = "condition" if self.task == "acdc" else "cell"
        per = f" per {unit}" if self.cells > 1 else ""
        subset = f" (--limit {self.limit} subset)" if self.limit is not None else ""
        cells = f", {self.cells} {unit}s" if self.cells > 1 else ""
        return f"{self.text}: {self.images} images{per}{cells}{subset}"


@dataclass
class SegRun:
    """One run's segmentation results (fractions)."""

    key: str
    sources: dict[str, SegSource] = field(default_factory=dict)
    clean: dict[str, Any] | None = None  # `iou_from_areas` of the clean Cityscapes val cell
    corrupt: dict[tuple[str, int], float] = field(default_factory=dict)  # Cityscapes-C mIoU per cell
    acdc: dict[str, float] = field(default_factory=dict)  # ACDC val mIoU per condition
    acdc_areas: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def c_summary(self) -> dict[str, Any] | None:
        from attnprobe.segmentation import cityscapes_c_summary

        return cityscapes_c_summary(self.corrupt) if self.corrupt else None

    @property
    def acdc_summary(self) -> dict[str, Any] | None:
        from attnprobe.segmentation import acdc_summary

        return acdc_summary(self.acdc, self.acdc_areas) if self.acdc else None


def _limit(info: Mapping[str, Any]) -> int | None:
    v = info.get("limit")
    return int(v) if v is not None else None


def load_segmentation(store: ResultsStore, keys: Sequence[str] | None = None) -> tuple[dict[str, SegRun], list[str]]:
    """Every run's segmentation results from the store, one source per run and set (see the module docstring).

    Returns:
        ({run key: SegRun}, notes about results left out).
    """
    from attnprobe.report.loaders import cells_frame
    from attnprobe.segmentation import IoUAccumulator

    cells = cells_frame(store)
    if cells.empty:
        return {}, []
    cells = cells[cells["task"].isin(SEG_TASKS)]
    if keys is not None:
        cells = cells[cells["key"].isin(list(keys))]
    runs: dict[str, SegRun] = {}
    notes: list[str] = []
    for (key, task), g in cells.groupby(["key", "task"], sort=False):
        # NOTE: every ACDC condition is its own dataset; its source is the root, split and subset
        g = g.assign(source=[f"{(i or {}).get('source_text')}|{(i or {}).get('limit')}" if task == "acdc" else d
                             for i, d in zip(g["info"], g["dataset"])])
        groups = sorted(g.groupby(["source", "preprocessing"], sort=False),
                        key=lambda kv: (-len(kv[1]), -int(kv[1]["n"].max())))
        (_, pre), sub = groups[0]
        info = sub.iloc[0]["info"] or {}
        dataset = str(sub.iloc[0]["dataset"])
        if len(groups) > 1:
            notes.append(f"{key} {task}: results on {len(groups)} datasets or protocols; the tables use "
                         f"{info.get('source_text') or dataset[:24]} ({len(sub)} cells), never a mix")
        run = runs.setdefault(key, SegRun(key))
        run.sources[task] = SegSource(task, dataset, pre, str(info.get("source_text") or dataset),
                                      int((sub["n"] + sub["skipped"]).max()), len(sub), _limit(info))
        for r in sub.itertuples(index=False):
            if "area_label_00" not in (r.extra or {}):
                continue
            m = IoUAccumulator.from_fields(r.extra).compute()
            if task == "cityscapes":
                run.clean = m
            elif task == "cityscapes_c" and not math.isnan(m["miou"]):
                run.corrupt[(r.condition, int(r.severity))] = float(m["miou"])
            elif task == "acdc" and not math.isnan(m["miou"]):
                run.acdc[r.condition] = float(m["miou"])
                run.acdc_areas[r.condition] = np.stack([m[k] for k in _AREAS])
    return runs, notes


def seg_paper_numbers(card: Mapping[str, Any]) -> dict[str, float]:
    """The paper's segmentation numbers of a model card (`[paper]`: `cityscapes_miou`, `cityscapes_c_miou`,
    `acdc_miou`, `[paper.cityscapes_c]`, `[paper.acdc]`; percentages) as fractions under the tables' column names."""
    p = card.get("paper") or {}
    if not isinstance(p, Mapping):
        return {}
    out: dict[str, float] = {}
    for col, name in (("cityscapes", "cityscapes_miou"), ("cityscapes_c", "cityscapes_c_miou"),
                      ("acdc", "acdc_miou")):
        if isinstance(p.get(name), (int, float)):
            out[col] = float(p[name]) / 100.0
    for prefix, table in (("c:", "cityscapes_c"), ("acdc:", "acdc")):
        for k, v in (p.get(table) or {}).items() if isinstance(p.get(table), Mapping) else ():
            if isinstance(v, (int, float)):
                out[prefix + k] = float(v) / 100.0
    return out


# ---------------------------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------------------------
def _nan(v: float | None) -> float:
    return math.nan if v is None else float(v)


def _rows_table(name: str, title: str, columns: Sequence[tuple[str, str]], values: Mapping[str, Mapping[str, float]],
                labels: Mapping[str, str], baseline: str | None, paper: Mapping[str, Mapping[str, float]],
                notes: Sequence[str], groups: list[tuple[str, int]] | None = None) -> T.Table:
    """One row per run (mIoU in %, one decimal, the change against `baseline` in parentheses) and, where a card has
    them, a `<label> (paper)` row below."""
    base = values.get(baseline or "")
    disp, num, index = [], [], []
    for key, vals in values.items():
        row = []
        for col, _ in columns:
            v = _nan(vals.get(col))
            text = T.fmt_num(v)
            if base is not None and key != baseline and not math.isnan(v) and not math.isnan(_nan(base.get(col))):
                text += " " + T.fmt_delta(v - base[col])
            row.append(text)
        index.append(labels.get(key, key))
        disp.append(row)
        num.append({col: _nan(vals.get(col)) * 100 for col, _ in columns})
        p = paper.get(key, {})
        if any(col in p for col, _ in columns):
            index.append(f"{labels.get(key, key)} (paper)")
            disp.append([T.fmt_num(p.get(col)) for col, _ in columns])
            num.append({col: _nan(p.get(col)) * 100 for col, _ in columns})
    display = pd.DataFrame(disp, index=pd.Index(index, name="Model"), columns=[h for _, h in columns])
    numeric = pd.DataFrame(num, index=pd.Index(index, name="model"))
    all_notes = list(notes)
    if base is not None and len(values) > 1:
        all_notes.insert(0, f"Changes in parentheses are against {labels.get(baseline, baseline)} in mIoU points.")
    return T.Table(name=name, title=title, display=display, numeric=numeric, notes=all_notes, groups=groups)


def _source_notes(runs: Mapping[str, SegRun], tasks: Sequence[str], labels: Mapping[str, str]) -> list[str]:
    """'Cityscapes-C: <source>, 500 images per cell, 72 cells.' per set (per run when the runs' sources differ)."""
    names = {"cityscapes": "Cityscapes", "cityscapes_c": "Cityscapes-C", "acdc": "ACDC"}
    out = []
    for task in tasks:
        srcs = {k: r.sources[task] for k, r in runs.items() if task in r.sources}
        texts = {s.describe() for s in srcs.values()}
        if len(texts) == 1:
            out.append(f"{names[task]}: {texts.pop()}.")
        else:
            out += [f"{names[task]} of {labels.get(k, k)}: {s.describe()}." for k, s in srcs.items()]
    return out


def table4_segmentation(runs: Mapping[str, SegRun], labels: Mapping[str, str], baseline: str | None,
                        paper: Mapping[str, Mapping[str, float]]) -> T.Table:
    """Table 4: Cityscapes val mIoU, Cityscapes-C average mIoU, ACDC mIoU per run."""
    values: dict[str, dict[str, float]] = {}
    partial = []
    for key, r in runs.items():
        c, a = r.c_summary, r.acdc_summary
        values[key] = {"cityscapes": r.clean["miou"] if r.clean else math.nan,
                       "cityscapes_c": c["average"] if c and c["average"] is not None else math.nan,
                       "acdc": a["average"] if a and a["average"] is not None else math.nan}
        if c and not c["complete"]:
            partial.append(f"{labels.get(key, key)}: Cityscapes-C partial ({72 - len(c['missing'])} of 72 cells), "
                           f"no average (per-cell values in Table IV and segmentation_cells.csv)")
        if a and a["average"] is None:
            partial.append(f"{labels.get(key, key)}: ACDC partial ({', '.join(sorted(r.acdc))}), no average")
    cols = [("cityscapes", "Cityscapes ↑"), ("cityscapes_c", "Cityscapes-C ↑"), ("acdc", "ACDC ↑")]
    notes = [("mIoU (%). Cityscapes: val. Cityscapes-C: mean of the 16 corruption scores (noise at severities 1-3, "
              "the others 1-5; each cell rounded to 0.01 as the official script). ACDC: our rows are the val split "
              "(mean of fog, night, rain, snow); the paper's ACDC column is the test-server mIoU, not directly "
              "comparable."),
             *_source_notes(runs, SEG_TASKS, labels), *partial]
    return _rows_table("table4_segmentation", "Semantic segmentation mIoU: clean, Cityscapes-C, ACDC (Table 4 layout, "
                       "%).", cols, values, labels, baseline, paper, notes)


def table_iv_cityscapes_c(runs: Mapping[str, SegRun], labels: Mapping[str, str], baseline: str | None,
                          paper: Mapping[str, Mapping[str, float]]) -> T.Table | None:
    """Supplementary Table IV: Cityscapes val, the Cityscapes-C average and every corruption's score, grouped."""
    from attnprobe.protocol import cityscapes_c_groups

    with_c = {k: r for k, r in runs.items() if r.corrupt}
    if not with_c:
        return None
    groups = cityscapes_c_groups()
    cols = [("cityscapes", "Clean"), ("cityscapes_c", "Avg.")]
    cols += [(f"c:{c}", c.replace("_", " ")) for names in groups.values() for c in names]
    values = {}
    for key, r in with_c.items():
        s = r.c_summary or {}
        values[key] = {"cityscapes": r.clean["miou"] if r.clean else math.nan,
                       "cityscapes_c": _nan(s.get("average")),
                       **{f"c:{c}": _nan(v) for c, v in s.get("corruptions", {}).items()}}
    notes = [("mIoU (%) per corruption: mean over its severities (1-3 for the noises, 1-5 otherwise) of the "
              "per-cell mIoU rounded to 0.01, as the official test_cityscapes_c.py; '–' = not all its severities "
              "evaluated."),
             *_source_notes(with_c, ("cityscapes", "cityscapes_c"), labels)]
    grp = [("", 2)] + [(g.capitalize(), len(n)) for g, n in groups.items()]
    return _rows_table("tableIV_cityscapes_c", "Cityscapes-C mIoU per corruption (supplementary Table IV layout, %).",
                       cols, values, labels, baseline, paper, notes, grp)


def table_v_acdc(runs: Mapping[str, SegRun], labels: Mapping[str, str], baseline: str | None,
                 paper: Mapping[str, Mapping[str, float]]) -> T.Table | None:
    """Supplementary Table V: Cityscapes val and the ACDC mIoU of every condition, and their average."""
    from attnprobe.protocol import acdc_conditions

    with_a = {k: r for k, r in runs.items() if r.acdc}
    if not with_a:
        return None
    conds = acdc_conditions()
    cols = [("cityscapes", "Cityscapes"), *((f"acdc:{c}", c) for c in conds), ("acdc", "Average")]
    values = {}
    for key, r in with_a.items():
        s = r.acdc_summary or {}
        values[key] = {"cityscapes": r.clean["miou"] if r.clean else math.nan, "acdc": _nan(s.get("average")),
                       **{f"acdc:{c}": _nan(r.acdc.get(c)) for c in conds}}
    pooled = [f"{labels.get(k, k)} {T.fmt_num(r.acdc_summary['pooled'], 2)}" for k, r in with_a.items()
              if r.acdc_summary and r.acdc_summary["pooled"] is not None]
    notes = ["mIoU (%). Ours: ACDC val; the paper's rows: the ACDC test server (not directly comparable). Average = "
             "mean of the four conditions" + (f"; mIoU pooled over all val images: {', '.join(pooled)}." if pooled
                                              else "."), *_source_notes(with_a, ("cityscapes", "acdc"), labels)]
    return _rows_table("tableV_acdc", "ACDC mIoU per condition (supplementary Table V layout, %).", cols, values,
                       labels, baseline, paper, notes)


def cells_frame_segmentation(runs: Mapping[str, SegRun], store: ResultsStore,
                             labels: Mapping[str, str]) -> pd.DataFrame:
    """Every stored segmentation cell with its mIoU, aAcc, mAcc (%) and per-class IoU, for the CSV."""
    from attnprobe.benchmarks.segmentation import segmentation_cells_from_store
    from attnprobe.protocol import cityscapes_class_names

    rows = []
    for r in segmentation_cells_from_store(store):
        m = r["metrics"]
        if m is None:
            continue
        rows.append({"model": r["model"], "checkpoint_sha256": r["checkpoint_sha256"][:12], "task": r["task"],
                     "condition": r["condition"], "severity": r["severity"], "n": r["n"], "skipped": r["skipped"],
                     "miou": m["miou"] * 100, "aacc": m["aacc"] * 100, "macc": m["macc"] * 100,
                     **{f"iou_{n}": v * 100 for n, v in zip(cityscapes_class_names(), m["iou"])},
                     "dataset": r["dataset"], "source": (r["info"] or {}).get("source_text", ""),
                     "preprocessing": r["preprocessing"]})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------------------
# the report section
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class SegSection:
    """What the segmentation part adds to the report page."""

    tables: list[TableEntry] = field(default_factory=list)
    figures: list[FigureEntry] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _seg_baseline(keys: Sequence[str], cards: Mapping[str, Mapping[str, Any]], preferred: str | None) -> str | None:
    if preferred in keys:
        return preferred
    plain = [k for k in keys if method_kind(k.split("@")[0], cards.get(k)) == "baseline"]
    return plain[0] if plain else None


def segmentation_section(store: ResultsStore, fig_dir: Path, tab_dir: Path, formats: Sequence[str],
                         styles: ModelStyles | None = None, keys: Sequence[str] | None = None,
                         baseline: str | None = None, cards: Mapping[str, Mapping[str, Any]] | None = None
                         ) -> SegSection:
    """Tables 4, IV, V, the per-cell CSV and Figs. 6, V, VI of the runs with segmentation results.

    Args:
        store: the results store (read-only is fine).
        fig_dir, tab_dir: where figures and tables go.
        formats: figure formats.
        styles: the report's model styles (labels, colours); built here when None.
        keys: restrict to these run keys.
        baseline: the report's baseline; used when it has segmentation results, else the first plain segmentation
            run is the baseline of the changes in parentheses.
        cards: run key -> model card (the paper's numbers); read from the store when None.
    """
    from attnprobe.report import seg_figures as SF

    runs, notes = load_segmentation(store, keys)
    section = SegSection(notes=notes)
    if cards is None:
        from attnprobe.report.loaders import models_frame

        cards = {r.key: (r.card or {}) for r in models_frame(store).itertuples(index=False)}
    styles = styles or ModelStyles(list(runs), cards)
    order = styles.sort(runs)
    runs = {k: runs[k] for k in order}
    labels = {k: styles.label(k) for k in runs}
    base = _seg_baseline(order, cards, baseline)
    if base is not None and base != baseline:  # NOTE: the segmentation baseline gets the grey of baselines, comes first
        styles = ModelStyles(list(runs), cards, base)
        runs = {k: runs[k] for k in styles.sort(runs)}
        labels = {k: styles.label(k) for k in runs}
    paper = {k: p for k in runs if (p := seg_paper_numbers(cards.get(k, {})))}

    def add(t: T.Table | None, caption: str) -> None:
        if t is not None:
            files = T.write_table(t, tab_dir)
            section.tables.append(TableEntry(t.name, t.title, caption, T.to_html(t), files))

    if runs:
        add(table4_segmentation(runs, labels, base, paper),
            "Semantic segmentation mIoU of each run (official test pipeline and inference of its model card).")
        add(table_iv_cityscapes_c(runs, labels, base, paper), "Cityscapes-C mIoU per corruption, grouped as the "
            "official evaluation (blur, noise, digital, weather).")
        add(table_v_acdc(runs, labels, base, paper), "ACDC mIoU per adverse condition.")
        csv = cells_frame_segmentation(runs, store, labels)
        if not csv.empty:
            path = tab_dir / "segmentation_cells.csv"
            csv.to_csv(path, index=False, float_format="%.4f")
    section.figures += SF.mask_figures(store, fig_dir, formats, styles, keys, base, cards)
    section.figures += attention_figure(store, fig_dir, formats, styles, keys, cards)
    return section


def attention_figure(store: ResultsStore, fig_dir: Path, formats: Sequence[str], styles: ModelStyles,
                     keys: Sequence[str] | None, cards: Mapping[str, Mapping[str, Any]]) -> list[FigureEntry]:
    """Supplementary Fig. IV: last-layer attention of the segmentation models, clean and corrupted, from the map
    files `attnprobe attention --model <segmentation model> --corruption ...` saved (one image every model has)."""
    from collections import Counter

    import matplotlib.pyplot as plt

    from attnprobe.report import figures as F
    from attnprobe.report.loaders import attention_map_refs, load_attention_pair
    from attnprobe.report.style import save_figure

    seg = {k for k, c in cards.items() if c.get("task") == "segmentation" and (keys is None or k in keys)}
    refs = [r for r in attention_map_refs(store) if r.key in seg and r.corrupted_path and r.clean_path]
    if not refs:
        return []
    conds = Counter((r.condition, r.severity) for r in refs)
    cond = max(conds, key=lambda c: (conds[c], c[0] == "gaussian_noise", -c[1]))
    refs = [r for r in refs if (r.condition, r.severity) == cond]
    per_image = Counter(r.image for r in refs)
    image = max(per_image, key=lambda i: (per_image[i], -sorted(per_image).index(i)))
    maps = [m for r in refs if r.image == image and (m := load_attention_pair(r)) is not None]
    if not maps:
        return []
    fig = F.fig1_attention_maps(maps, styles)
    files = save_figure(fig, fig_dir / "figIV_segmentation_attention", formats)
    plt.close(fig)
    pool = int(maps[0].meta.get("token_pool") or 1)
    pooled = (f" Maps of {pool * pool}-token blocks ({pool} x {pool} tokens; queries averaged, keys summed)."
              if pool > 1 else "")
    caption = (f"Last-layer token attention (heads averaged) of the segmentation models on one window of their "
               f"slide inference, clean and with {F.pretty_condition(*cond)}; image {image}.{pooled} "
               f"Saved by `attnprobe attention` (or a diagnostics command with --keep-maps).")
    return [FigureEntry("figIV_segmentation_attention", "Supplementary Fig. IV: segmentation attention, clean vs "
                        "corrupted", caption, files)]
