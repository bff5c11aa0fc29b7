"""The report page: one self-contained `index.html` (inline CSS, relative links) showing every figure and table
with a caption that says what was measured, on which data and with which checkpoint."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["FigureEntry", "TableEntry", "render_index"]

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; }
.meta { color: #555; font-size: 0.92em; } figure { margin: 1.5em 0; } figure img { max-width: 100%; height: auto;
  border: 1px solid #eee; } figcaption { font-size: 0.92em; color: #333; margin-top: 0.4em; }
figcaption .files, .files { font-size: 0.85em; color: #666; } table.results { border-collapse: collapse;
  font-size: 0.85em; margin: 0.6em 0; } table.results th, table.results td { padding: 0.2em 0.55em;
  border-bottom: 1px solid #e4e4e4; text-align: right; white-space: nowrap; } table.results th:first-child,
  table.results tbody th { text-align: left; } table.results th.group { text-align: center;
  border-bottom: 1px solid #999; } table.results tr.paper { color: #777; font-style: italic; }
.notes { font-size: 0.85em; color: #555; } .runs td, .runs th { text-align: left; } code { font-size: 0.9em; }
.scroll { overflow-x: auto; } .warn { color: #8a4b00; }
"""


@dataclass
class FigureEntry:
    """One figure of the report: file stem, title, caption and the files written (relative to the report)."""

    name: str
    title: str
    caption: str
    files: list[Path] = field(default_factory=list)


@dataclass
class TableEntry:
    """One table of the report with its HTML rendering and files."""

    name: str
    title: str
    caption: str
    html: str
    files: list[Path] = field(default_factory=list)


def _rel(p: Path, root: Path) -> str:
    try:
        return p.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return p.as_posix()


def render_index(out_dir: Path, title: str, intro: Sequence[str], runs_html: str, tables: Sequence[TableEntry],
                 figures: Sequence[FigureEntry], notes: Sequence[str]) -> str:
    """The full HTML page (a string); every link is relative to `out_dir`."""
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{e(title)}</title><style>{_CSS}</style></head><body>", f"<h1>{e(title)}</h1>"]
    parts += [f'<p class="meta">{e(line)}</p>' for line in intro]
    parts.append("<h2>Runs</h2>" + runs_html)
    if notes:
        parts.append('<ul class="notes warn">' + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ul>")
    if tables:
        parts.append("<h2>Tables</h2>")
        for t in tables:
            links = " · ".join(f'<a href="{e(_rel(f, out_dir))}">{e(f.suffix.lstrip("."))}</a>' for f in t.files)
            parts.append(f'<section id="{e(t.name)}"><h3>{e(t.title)}</h3><div class="scroll">{t.html}</div>'
                         f'<p class="notes">{e(t.caption)}</p><p class="files">Files: {links}</p></section>')
    if figures:
        parts.append("<h2>Figures</h2>")
        for f in figures:
            png = next((p for p in f.files if p.suffix == ".png"), None)
            svg = next((p for p in f.files if p.suffix == ".svg"), None)
            shown = png or svg
            img = (f'<img src="{e(_rel(shown, out_dir))}" alt="{e(f.title)}" loading="lazy">' if shown is not None
                   else "")
            links = " · ".join(f'<a href="{e(_rel(p, out_dir))}">{e(p.suffix.lstrip("."))}</a>' for p in f.files)
            parts.append(f'<figure id="{e(f.name)}">{img}<figcaption><b>{e(f.title)}.</b> {e(f.caption)} '
                         f'<span class="files">Files: {links}</span></figcaption></figure>')
    parts.append('<p class="meta">Made by <code>attnprobe report</code> from the results store alone; '
                 "rerun it to redraw everything.</p></body></html>")
    return "\n".join(parts) + "\n"
