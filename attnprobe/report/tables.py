"""Tables: numbers → DataFrames of display strings → Markdown, LaTeX (booktabs), CSV and HTML.

A `Table` keeps two frames: `numeric` (machine-readable, percentages as floats, written to CSV) and `display`
(strings with the paper's rounding: one decimal for percentages, two for per-corruption CEs and similarities,
`± x` for 95% intervals and the change against the baseline in parentheses, e.g. `84.3 (+0.4)`).
"""

from __future__ import annotations

import html as _html
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from attnprobe.report.bootstrap import Interval
from attnprobe.report.sources import SMALL_N, SourceGroup

__all__ = [
    "Table",
    "fmt_delta",
    "fmt_num",
    "to_html",
    "to_latex",
    "to_markdown",
    "write_table",
]


@dataclass
class Table:
    """A table ready to write.

    Attributes:
        name: file stem (`table2_summary`).
        title: one-line title (also the LaTeX caption's first sentence).
        display: strings as shown; the index is the first column.
        numeric: numbers for the CSV (same rows, possibly more columns).
        notes: footnotes (what was measured, partial tables, how intervals were made).
        groups: optional column groups for LaTeX / HTML headers, `[(group title, number of columns), ...]` covering
            every column of `display` in order (an empty title leaves the cells blank).
    """

    name: str
    title: str
    display: pd.DataFrame
    numeric: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    groups: list[tuple[str, int]] | None = None


def fmt_num(x: float | None, digits: int = 1, scale: float = 100.0) -> str:
    """`0.8432 -> '84.3'`; NaN/None -> '–'."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x * scale:.{digits}f}"


def fmt_delta(x: float | None, digits: int = 1, scale: float = 100.0) -> str:
    """`0.004 -> '(+0.4)'`, `-0.024 -> '(-2.4)'`; zero shows as `(+0.0)` like the paper."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    v = round(x * scale, digits)
    if v == 0:
        v = 0.0  # avoids '-0.0'
    return f"({v:+.{digits}f})"


def fmt_interval(iv: Interval | None, digits: int = 1, scale: float = 100.0, plusminus: bool = True) -> str:
    """`'43.7 ± 0.2'` or, with `plusminus=False`, `'+0.4 [-0.1, +0.9]'` (for differences)."""
    if iv is None or math.isnan(iv.estimate):
        return "–"
    if plusminus:
        return iv.format(scale, digits)
    return (f"{iv.estimate * scale:+.{digits}f} [{iv.low * scale:+.{digits}f}, "
            f"{iv.high * scale:+.{digits}f}]")


# -- writers ---------------------------------------------------------------------------------------------------------
def _md_cell(s: object) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def to_markdown(table: Table) -> str:
    """GitHub-flavoured Markdown: title line, pipe table (numbers right-aligned), footnotes."""
    df = table.display
    header = [df.index.name or ""] + [str(c) for c in df.columns]
    lines = [f"**{table.title}**", "", "| " + " | ".join(_md_cell(h) for h in header) + " |",
             "|" + "|".join([":---"] + ["---:"] * len(df.columns)) + "|"]
    for idx, row in df.iterrows():
        lines.append("| " + " | ".join(_md_cell(v) for v in [idx, *row.tolist()]) + " |")
    if table.notes:
        lines.append("")
        lines += [f"{n}" if n.startswith(("*", "†", "‡")) else f"- {n}" for n in table.notes]
    return "\n".join(lines) + "\n"


_LATEX_SUBS = [
    ("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#"), ("_", r"\_"),
    ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"), ("^", r"\textasciicircum{}"),
]
_LATEX_UNICODE = {"±": r"$\pm$", "↓": r"$\downarrow$", "↑": r"$\uparrow$", "–": "--", "−": "-",
                  "Δ": r"$\Delta$",
                  "λ": r"$\lambda$", "τ": r"$\tau$", "†": r"$^\dagger$", "*": r"$^*$", "×": r"$\times$",
                  "…": r"\ldots{}", "‡": r"$^\ddagger$",
                  **{ch: rf"$^{lt}$" for ch, lt in zip("ᵃᵇᶜᵈᵉᶠᵍʰ", "abcdefgh")}}


def latex_escape(s: object) -> str:
    """Escape LaTeX specials and map the few Unicode signs the tables use to math."""
    text = str(s)
    out = []
    for ch in text:
        sub = next((r for c, r in _LATEX_SUBS if c == ch), None)
        out.append(sub if sub is not None else _LATEX_UNICODE.get(ch, ch))
    return "".join(out)


def to_latex(table: Table, label: str | None = None) -> str:
    """A booktabs `table` environment (needs `\\usepackage{booktabs}`), caption with the notes, group headers."""
    df = table.display
    ncol = len(df.columns) + 1
    lines = [r"\begin{table}[t]", r"\centering", r"\small",
             r"\begin{tabular}{l" + "r" * (ncol - 1) + "}", r"\toprule"]
    if table.groups:
        cells, rules, start = [""], [], 2
        for title, width in table.groups:
            if title:
                cells.append(rf"\multicolumn{{{width}}}{{c}}{{{latex_escape(title)}}}")
                rules.append(rf"\cmidrule(lr){{{start}-{start + width - 1}}}")
            else:
                cells += [""] * width
            start += width
        lines.append(" & ".join(cells) + r" \\")
        if rules:
            lines.append(" ".join(rules))
    header = [latex_escape(df.index.name or "")] + [latex_escape(c) for c in df.columns]
    lines += [" & ".join(header) + r" \\", r"\midrule"]
    for idx, row in df.iterrows():
        lines.append(" & ".join(latex_escape(v) for v in [idx, *row.tolist()]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    caption = latex_escape(table.title) + ("" if not table.notes else " " + " ".join(latex_escape(n)
                                                                                     for n in table.notes))
    lines.append(rf"\caption{{{caption}}}")
    lines.append(rf"\label{{{label or 'tab:' + re.sub(r'[^a-z0-9]+', '-', table.name.lower())}}}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def to_html(table: Table) -> str:
    """An HTML `<table>` with the group header row, for the report page."""
    df = table.display
    out = ['<table class="results">', "<thead>"]
    if table.groups:
        out.append("<tr><th></th>" + "".join(
            f'<th colspan="{w}" class="group">{_html.escape(t)}</th>' for t, w in table.groups) + "</tr>")
    out.append("<tr>" + "".join(f"<th>{_html.escape(str(h))}</th>"
                                for h in [df.index.name or "", *df.columns]) + "</tr>")
    out.append("</thead><tbody>")
    for idx, row in df.iterrows():
        cls = ' class="paper"' if str(idx).endswith("(paper)") else ""
        out.append(f"<tr{cls}><th>{_html.escape(str(idx))}</th>" + "".join(
            f"<td>{_html.escape(str(v))}</td>" for v in row.tolist()) + "</tr>")
    out.append("</tbody></table>")
    if table.notes:
        out.append('<ul class="notes">' + "".join(f"<li>{_html.escape(n)}</li>" for n in table.notes) + "</ul>")
    return "\n".join(out)


def write_table(table: Table, out_dir: str | Path, formats: Sequence[str] = ("md", "tex", "csv")) -> list[Path]:
    """Write `<out_dir>/<name>.<fmt>` for each of md, tex, csv; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        p = out / f"{table.name}.{fmt}"
        if fmt == "md":
            p.write_text(to_markdown(table), encoding="utf-8")
        elif fmt == "tex":
            p.write_text(to_latex(table), encoding="utf-8")
        elif fmt == "csv":
            table.numeric.to_csv(p, float_format="%.6g")
        else:
            raise ValueError(f"unknown table format '{fmt}'; use md, tex or csv")
        paths.append(p)
    return paths


# -- builders --------------------------------------------------------------------------------------------------------
#: Table 2 columns: (summary column, header, higher is better).
SUMMARY_COLUMNS: tuple[tuple[str, str, bool], ...] = (
    ("clean", "Clean acc. ↑", True),  # ImageNet val in the paper; any clean set here
    ("mce", "IN-C mCE ↓", False),
    ("mfr", "IN-P mFR ↓", False),
    ("imagenet_a", "IN-A ↑", True),
    ("imagenet_r", "IN-R ↑", True),
    ("pgd", "PGD ↑", True),
)


def summary_table(summary: pd.DataFrame, labels: Mapping[str, str] | None = None, baseline: str | None = None,
                  intervals: Mapping[tuple[str, str], Interval] | None = None,
                  paper: Mapping[str, Mapping[str, float]] | None = None, notes: Sequence[str] = (),
                  name: str = "table2_summary",
                  title: str = "Accuracy and robustness per model (Table 2/5 layout, %).",
                  sources: Mapping[tuple[str, str], SourceGroup] | None = None) -> Table:
    """Table 2/5 layout: one row per run, clean accuracy, mCE, mFR, ImageNet-A/-R and PGD accuracy in percent,
    with the change against `baseline` in parentheses and, where a model card has them, the paper's numbers in a
    row below (`<label> (paper)`, its change against the baseline's paper number).

    Args:
        summary: index = run keys; columns among `clean, mce, mfr, imagenet_a, imagenet_r, pgd` (fractions) and
            optional boolean `mce_partial`, `mfr_partial` (the value is then a mean over fewer corruptions /
            perturbations, marked `*` and never called mCE/mFR).
        labels: run key -> row label.
        baseline: run key the changes are computed against.
        intervals: (run key, column) -> 95% interval, shown as `± x`.
        paper: run key -> paper numbers (fractions, same column names).
        sources: (run key, column) -> the data each number comes from. A note per column names the source and the
            image count; when the runs of a column differ in source, each number carries a letter (ᵃ, ᵇ, ...) and
            no change against the baseline is given across sources; numbers from a `--limit` subset or from few
            images carry `†`.
    """
    labels = labels or {}
    intervals = intervals or {}
    paper = paper or {}
    sources = sources or {}
    cols = [(c, h, hb) for c, h, hb in SUMMARY_COLUMNS if c in summary.columns and summary[c].notna().any()]
    partial_flags = {c: summary.get(f"{c}_partial", pd.Series(False, index=summary.index)).fillna(False)
                     for c, _, _ in cols}
    marks, source_notes = _source_marks(list(summary.index), [(c, h) for c, h, _ in cols], sources)
    base = summary.loc[baseline] if baseline is not None and baseline in summary.index else None
    base_paper = paper.get(baseline or "", {})
    disp_rows, num_rows, index = [], [], []
    any_partial = {c: False for c, _, _ in cols}
    for key in summary.index:
        row, num = [], {}
        for c, _, _ in cols:
            v = summary.at[key, c]
            iv = intervals.get((key, c))
            text = fmt_interval(iv) if iv is not None and not _isnan(v) else fmt_num(v)
            partial = bool(partial_flags[c].get(key, False))
            if partial and not _isnan(v):
                text += "*"
                any_partial[c] = True
            if not _isnan(v):
                text += marks.get((key, c), "")
            same_data = _same_source(sources, key, baseline, c) and partial == bool(
                partial_flags[c].get(baseline, False))
            if base is not None and key != baseline and not _isnan(v) and not _isnan(base.get(c, math.nan)) \
                    and same_data:
                text += " " + fmt_delta(v - base[c])
            row.append(text)
            num[c] = v * 100.0 if not _isnan(v) else math.nan
            if iv is not None:
                num[f"{c}_ci_low"], num[f"{c}_ci_high"] = iv.low * 100.0, iv.high * 100.0
            if base is not None and key != baseline:
                num[f"{c}_delta"] = (v - base.get(c, math.nan)) * 100.0 if same_data else math.nan
            g = sources.get((key, c))
            if g is not None:
                num[f"{c}_source"], num[f"{c}_n"], num[f"{c}_subset"] = g.source.tag(), g.n_min, g.source.subset
        index.append(labels.get(key, key))
        disp_rows.append(row)
        num_rows.append(num)
        prow = _paper_row(paper.get(key, {}), base_paper, [c for c, _, _ in cols], key != baseline and
                          baseline is not None)
        if prow is not None:
            index.append(f"{labels.get(key, key)} (paper)")
            disp_rows.append(prow[0])
            num_rows.append(prow[1])
    display = pd.DataFrame(disp_rows, index=pd.Index(index, name="Model"), columns=[h for _, h, _ in cols])
    numeric = pd.DataFrame(num_rows, index=pd.Index(index, name="model"))
    all_notes = list(notes)
    if base is not None:
        all_notes.insert(0, f"Changes in parentheses are against {labels.get(baseline, baseline)} in percentage "
                            f"points, given only between numbers measured on the same data source.")
    if any_partial.get("mce"):
        all_notes.append("* partial ImageNet-C: mean CE over the corruptions evaluated, not an mCE.")
    if any_partial.get("mfr"):
        all_notes.append("* partial ImageNet-P: mean FR over the perturbations evaluated, not an mFR.")
    return Table(name=name, title=title, display=display, numeric=numeric, notes=source_notes + all_notes)


def _paper_row(p: Mapping[str, float], base_paper: Mapping[str, float], cols: Sequence[str],
               with_delta: bool) -> tuple[list[str], dict[str, float]] | None:
    """The display strings and numbers of a `(paper)` row, or None when the card has none of `cols`."""
    if not any(c in p for c in cols):
        return None
    prow = []
    for c in cols:
        pv = p.get(c, math.nan)
        t = fmt_num(pv)
        if with_delta and c in base_paper and not _isnan(pv):
            t += " " + fmt_delta(pv - base_paper[c])
        prow.append(t)
    return prow, {c: p.get(c, math.nan) * 100.0 for c in cols}


#: Letters that tell the data sources of one column apart.
SOURCE_LETTERS = "ᵃᵇᶜᵈᵉᶠᵍʰ"


def _same_source(sources: Mapping[tuple[str, str], SourceGroup], key: str, baseline: str | None, col: str) -> bool:
    a, b = sources.get((key, col)), sources.get((baseline or "", col))
    return a is None or b is None or a.source.signature == b.source.signature


def _source_marks(keys: Sequence[str], cols: Sequence[tuple[str, str]],
                  sources: Mapping[tuple[str, str], SourceGroup]) -> tuple[dict[tuple[str, str], str], list[str]]:
    """Cell marks and one note per column that say which data each number comes from and on how many images."""
    marks: dict[tuple[str, str], str] = {}
    notes: list[str] = []
    any_small = False
    for c, header in cols:
        described: dict[str, list[str]] = {}
        for key in keys:
            g = sources.get((key, c))
            if g is not None:
                described.setdefault(f"{g.source.words()}, {g.count_words()}", []).append(key)
                if g.small:
                    marks[(key, c)] = "†"
                    any_small = True
        if not described:
            continue
        head = header.rstrip(" ↑↓")
        if len({sources[(k, c)].source.signature for ks in described.values() for k in ks}) == 1 \
                and len(described) == 1:
            notes.append(f"{head}: {next(iter(described))}.")
            continue
        parts = []
        for letter, (text, ks) in zip(SOURCE_LETTERS, described.items()):
            parts.append(f"{letter} {text}")
            for k in ks:
                marks[(k, c)] = letter + marks.get((k, c), "")
        notes.append(f"{head}: " + "; ".join(parts) + ".")
    if any_small:
        notes.append(f"† measured on a --limit subset or on fewer than {SMALL_N} images per cell: not a "
                     f"full-benchmark number.")
    return marks, notes


def sources_table(rows: Sequence[tuple[str, str, Any, bool]], labels: Mapping[str, str] | None = None,
                  name: str = "table2_sources") -> Table:
    """Every Table 2 number of every data source the store holds, one row per (run, column, source).

    Args:
        rows: `(run key, column, ColumnResult, shown in Table 2)` as in `CountingSummary.alternatives`.
        labels: run key -> row label.
    """
    labels = labels or {}
    order = {c: i for i, (c, _, _) in enumerate(SUMMARY_COLUMNS)}
    disp, num, index = [], [], []
    for key, col, res, used in sorted(rows, key=lambda r: (r[0], order.get(r[1], 99), not r[3])):
        g = res.group
        value = fmt_num(res.value) + ("*" if res.partial else "")
        disp.append([column_header(col), g.source.words(), g.count_words(), value, "yes" if used else "no"])
        num.append({"column": col, "source": g.source.tag(), "kind": g.source.kind, "backend": g.source.backend,
                    "limit": g.source.limit, "root": g.source.root, "n_min": g.n_min, "n_max": g.n_max,
                    "cells": len(g.cells), "value": res.value * 100.0, "partial": res.partial, "in_table2": used})
        index.append(labels.get(key, key))
    display = pd.DataFrame(disp, index=pd.Index(index, name="Model"),
                           columns=["Column", "Data", "Images", "Value", "In Table 2"])
    numeric = pd.DataFrame(num, index=pd.Index(index, name="model"))
    return Table(name=name, title="Where every Table 2 number comes from: each data source of each model, apart.",
                 display=display, numeric=numeric,
                 notes=["One row per model, column and data source; a number is never computed from cells of two "
                        "sources. * partial (fewer corruptions / perturbations than the benchmark).",
                        "Table 2 shows one source per number: the full set before a --limit subset, then released "
                        "before regenerated / on-the-fly data (`attnprobe report --source` chooses)."])


def column_header(col: str) -> str:
    """'IN-P mFR' for 'mfr': a Table 2 column's header without its arrow."""
    return next((h.rstrip(" ↑↓") for c, h, _ in SUMMARY_COLUMNS if c == col), col)


def _isnan(v: object) -> bool:
    try:
        return v is None or math.isnan(float(v))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return True


def ce_table(ce: pd.DataFrame, labels: Mapping[str, str] | None = None,
             paper: Mapping[str, Mapping[str, float]] | None = None, reference: str = "AlexNet",
             notes: Sequence[str] = (), name: str = "table3_corruption_errors") -> Table:
    """Table 3 layout from `attnprobe.robustness.ce_table(..., percent=True)`: mCE (one decimal) then the CE of each
    corruption (two decimals) grouped Noise / Blur / Weather / Digital.

    Args:
        ce: the robustness `ce_table` frame (two-level columns, percent) with `attrs["partial_rows"]`.
        labels: run key -> row label.
        paper: run key -> paper numbers with `mce` and `ce:<corruption>` entries (fractions).
        reference: name of the model the CEs are normalised by, for the title.
    """
    from attnprobe.robustness import CORRUPTION_GROUPS, DISPLAY_NAMES

    labels = labels or {}
    paper = paper or {}
    partial = set(ce.attrs.get("partial_rows", []))
    corr = [c for names in CORRUPTION_GROUPS.values() for c in names]
    disp, num, index = [], [], []
    for key in ce.index:
        m = ce.loc[key, ("", "mCE")]
        if key in partial:
            present = [c for c in corr if not _isnan(ce.loc[key, _col(c)])]
            mtext = f"partial ({len(present)}/15)"
        else:
            mtext = fmt_num(m, 1, 1.0)
        disp.append([mtext] + [fmt_num(ce.loc[key, _col(c)], 2, 1.0) for c in corr])
        num.append({"mce": m, **{c: ce.loc[key, _col(c)] for c in corr}})
        index.append(labels.get(key, key))
        p = paper.get(key, {})
        if "mce" in p or any(f"ce:{c}" in p for c in corr):
            disp.append([fmt_num(p.get("mce"), 1)] + [fmt_num(p.get(f"ce:{c}"), 2) for c in corr])
            num.append({"mce": p.get("mce", math.nan) * 100, **{c: p.get(f"ce:{c}", math.nan) * 100 for c in corr}})
            index.append(f"{labels.get(key, key)} (paper)")
    display = pd.DataFrame(disp, index=pd.Index(index, name="Model"), columns=["mCE"] + [DISPLAY_NAMES[c]
                                                                                       for c in corr])
    numeric = pd.DataFrame(num, index=pd.Index(index, name="model"))
    groups = [("", 1)] + [(g, len(n)) for g, n in CORRUPTION_GROUPS.items()]
    all_notes = [f"Corruption error in % of {reference}'s error on the same corruption (lower is better)."]
    all_notes += list(notes)
    if partial:
        all_notes.append("partial: not every corruption was evaluated at all five severities, so no mCE is given.")
    return Table(name=name, title=f"Corruption error per ImageNet-C corruption (Table 3 layout, normalised by "
                                  f"{reference}).", display=display, numeric=numeric, notes=all_notes, groups=groups)


def _col(corruption: str) -> tuple[str, str]:
    from attnprobe.robustness import CORRUPTION_GROUPS, DISPLAY_NAMES

    group = next(g for g, names in CORRUPTION_GROUPS.items() if corruption in names)
    return (group, DISPLAY_NAMES[corruption])


def interval_table(rows: Mapping[str, Mapping[str, Interval | None]], columns: Sequence[tuple[str, str]],
                   name: str, title: str, labels: Mapping[str, str] | None = None, digits: int = 2,
                   scale: float = 1.0, plusminus: bool = True, notes: Sequence[str] = ()) -> Table:
    """A table of intervals: rows = run keys (or any labels), columns = `(column id, header)`.

    Cells show `estimate ± half-width` (or `+d [lo, hi]` for differences with `plusminus=False`); the CSV holds
    estimate, low and high per column.
    """
    labels = labels or {}
    disp, num, index = [], [], []
    for key, cells in rows.items():
        disp.append([_signed(fmt_interval(cells.get(c), digits, scale, plusminus)) if c.endswith("_delta")
                     else fmt_interval(cells.get(c), digits, scale, plusminus) for c, _ in columns])
        rec: dict[str, float] = {}
        for c, _ in columns:
            iv = cells.get(c)
            rec[c] = iv.estimate * scale if iv else math.nan
            rec[f"{c}_ci_low"] = iv.low * scale if iv else math.nan
            rec[f"{c}_ci_high"] = iv.high * scale if iv else math.nan
            rec[f"{c}_n"] = iv.n if iv else 0
        num.append(rec)
        index.append(labels.get(key, key))
    display = pd.DataFrame(disp, index=pd.Index(index, name="Model"), columns=[h for _, h in columns])
    numeric = pd.DataFrame(num, index=pd.Index(index, name="model"))
    return Table(name=name, title=title, display=display, numeric=numeric, notes=list(notes))


def _signed(text: str) -> str:
    """'0.30 ± 0.04' -> '+0.30 ± 0.04' for differences."""
    return text if text.startswith(("-", "+", "–")) else "+" + text


def layer_table(per_layer: pd.DataFrame, labels: Mapping[str, str] | None = None,
                name: str = "layer_diagnostics", notes: Sequence[str] = ()) -> Table:
    """Per-layer diagnostics: rows = (model, layer), columns = metrics (means over images, two decimals).

    Args:
        per_layer: index (key, layer), one column per metric (fractions / similarities / entropies).
    """
    labels = labels or {}
    disp = per_layer.map(lambda v: "–" if _isnan(v) else f"{v:.2f}")
    disp.index = pd.Index([f"{labels.get(k, k)} · L{int(li) + 1}" for k, li in per_layer.index],
                          name="Model · layer")
    disp.columns = [METRIC_HEADERS.get(c, c) for c in per_layer.columns]
    numeric = per_layer.copy()
    numeric.index = pd.MultiIndex.from_tuples([(labels.get(k, k), int(li) + 1) for k, li in per_layer.index],
                                              names=["model", "layer"])  # layer 1 = first block, as in the figures
    return Table(name=name, title="Attention diagnostics per layer (means over images).", display=disp,
                 numeric=numeric, notes=list(notes))


#: Headers of the diagnostic metrics.
METRIC_HEADERS: dict[str, str] = {
    "attention_cosine": "Stability (cos)",
    "head_similarity": "Head sim.",
    "row_similarity": "Row sim.",
    "topk_column_mass": "Top-k col. mass",
    "row_entropy": "Row entropy",
    "column_gini": "Column Gini",
}
