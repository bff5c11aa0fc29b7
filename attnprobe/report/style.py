"""One look for every figure: colours, labels and order per model, font sizes, figure widths, saving.

Every figure function asks `ModelStyles` for a model's colour and label, so one model keeps one colour and one
label across all figures of a report. Baselines are grey; TAP, ADL and TAP & ADL get the colour-blind-safe
Okabe-Ito colours the reader meets in every figure (blue, orange, vermillion); anything else takes the next free
colour in a fixed order.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

# NOTE: headless everywhere (CI, SSH, `attnprobe report` on a cluster), unless the user chose a backend or already
# uses pyplot (a notebook with inline figures keeps its backend).
if os.environ.get("MPLBACKEND") is None and "matplotlib.pyplot" not in sys.modules:
    matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

__all__ = [
    "COLUMN_WIDTH",
    "DPI",
    "FULL_WIDTH",
    "KIND_COLORS",
    "ModelStyle",
    "ModelStyles",
    "figure",
    "method_kind",
    "rc_params",
    "save_figure",
]

#: Single-column width of a two-column paper (inches) and the full text width.
COLUMN_WIDTH = 3.3
FULL_WIDTH = 6.9
DPI = 300

#: Colours by method kind (Okabe-Ito, colour-blind safe); baselines are grey.
KIND_COLORS: dict[str, str] = {
    "baseline": "#7a7a7a",
    "tap": "#0072B2",
    "adl": "#E69F00",
    "tapadl": "#D55E00",
}
#: Colours for models that are none of the above, or for a second model of the same kind.
EXTRA_COLORS: tuple[str, ...] = ("#009E73", "#CC79A7", "#56B4E9", "#000000", "#8C564B", "#BCBD22", "#17BECF",
                                 "#393B79", "#AD494A", "#637939")
_KIND_ORDER = {"baseline": 0, "tap": 1, "adl": 2, "tapadl": 3, "other": 4}
_KIND_MARKERS = {"baseline": "o", "tap": "s", "adl": "^", "tapadl": "D", "other": "v"}


def rc_params() -> dict[str, Any]:
    """Matplotlib settings readable at single-column width (7-8 pt text at 3.3 in)."""
    return {
        "font.size": 7.0,
        "axes.titlesize": 7.5,
        "axes.labelsize": 7.0,
        "xtick.labelsize": 6.5,
        "ytick.labelsize": 6.5,
        "legend.fontsize": 6.5,
        "figure.titlesize": 8.0,
        "axes.linewidth": 0.6,
        "xtick.major.width": 0.6,
        "ytick.major.width": 0.6,
        "xtick.major.size": 2.5,
        "ytick.major.size": 2.5,
        "lines.linewidth": 1.2,
        "lines.markersize": 3.5,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": False,
        "legend.frameon": False,
        "savefig.dpi": DPI,
        "savefig.bbox": "tight",
        "savefig.pad_inches": 0.02,
        "pdf.fonttype": 42,  # embed TrueType so the PDF text stays editable
        "ps.fonttype": 42,
        "svg.fonttype": "none",
        "image.interpolation": "nearest",
    }


def figure(width: float = COLUMN_WIDTH, height: float | None = None, **subplots_kw: Any) -> tuple[Any, Any]:
    """`plt.subplots` with the report's look; `height` defaults to 0.75 x width."""
    with plt.rc_context(rc_params()):
        fig, axes = plt.subplots(figsize=(width, height if height is not None else 0.75 * width), **subplots_kw)
    return fig, axes


def save_figure(fig: Any, stem: str | Path, formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Write `fig` as `<stem>.<fmt>` for each format (png at 300 dpi; pdf/svg vector), close it, return the paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    with plt.rc_context(rc_params()):
        for fmt in formats:
            p = stem.with_suffix(f".{fmt.lower().lstrip('.')}")
            fig.savefig(p, dpi=DPI, metadata=_metadata(fmt))
            paths.append(p)
    plt.close(fig)
    return paths


def _metadata(fmt: str) -> dict[str, Any] | None:
    # NOTE: no creation date in PDF/SVG, so a redrawn report is byte-identical when the data are.
    fmt = fmt.lower()
    if fmt == "pdf":
        return {"CreationDate": None, "Creator": "attnprobe"}
    if fmt == "svg":
        return {"Date": None, "Creator": "attnprobe"}
    return None


def method_kind(model: str, card: Mapping[str, Any] | None = None) -> str:
    """'baseline', 'tap', 'adl', 'tapadl' or 'other', from the card (`method`/`kind`) or else the model name."""
    card = card or {}
    declared = str(card.get("method") or card.get("kind") or "").lower().replace("&", "").replace("+", "")
    text = declared.replace(" ", "").replace("_", "").replace("-", "")
    if not text:
        text = re.sub(r"[^a-z]", "", model.lower())
        has_tap = bool(re.search(r"(^|[^a-z])tap", model.lower())) or "tapadl" in text
        has_adl = "adl" in text
        if has_tap and has_adl:
            return "tapadl"
        if has_tap:
            return "tap"
        if has_adl:
            return "adl"
        return "baseline" if card.get("baseline", True) else "other"
    if "tap" in text and "adl" in text:
        return "tapadl"
    for kind in ("tap", "adl", "baseline"):
        if kind in text:
            return kind
    return "other"


def _family(model: str, card: Mapping[str, Any]) -> str:
    fam = card.get("family") or card.get("arch") or card.get("architecture")
    if fam:
        return str(fam).lower()
    return re.split(r"[_\-]", model.lower())[0]


@dataclass(frozen=True)
class ModelStyle:
    """How one model is drawn everywhere."""

    model: str
    label: str
    color: str
    marker: str
    kind: str
    order: int


class ModelStyles:
    """Colours, labels, markers and order for a set of models, fixed for a whole report.

    Args:
        models: model names (duplicates are ignored).
        cards: optional model -> model card; a card's `label`, `display_name` or `title` becomes the label, `method`
            (baseline/tap/adl/tapadl) and `family` decide colour and order.
        baseline: the model every other is compared with; drawn first and grey.
    """

    def __init__(self, models: Iterable[str], cards: Mapping[str, Mapping[str, Any]] | None = None,
                 baseline: str | None = None) -> None:
        cards = cards or {}
        names = list(dict.fromkeys(models))
        kinds = {m: ("baseline" if m == baseline else method_kind(m, cards.get(m))) for m in names}
        if baseline is not None and baseline in names:
            for m in names:  # NOTE: only the chosen baseline is grey when the user names one
                if m != baseline and kinds[m] == "baseline":
                    kinds[m] = "other"
        families: dict[str, int] = {}
        for m in names:
            families.setdefault(_family(m, cards.get(m, {})), len(families))
        ordered = sorted(names, key=lambda m: (m != baseline, families[_family(m, cards.get(m, {}))],
                                               _KIND_ORDER[kinds[m]], m))
        used: set[str] = set()
        extra = iter(EXTRA_COLORS * 10)
        self._styles: dict[str, ModelStyle] = {}
        for i, m in enumerate(ordered):
            color = KIND_COLORS.get(kinds[m])
            if color is None or color in used:
                color = next(c for c in extra if c not in used)
            used.add(color)
            card = cards.get(m, {})
            label = str(card.get("label") or card.get("display_name") or card.get("title") or m.split("@")[0])
            if "@" in m:  # several checkpoints of one model: the short hash tells them apart
                label += f" @{m.split('@', 1)[1]}"
            self._styles[m] = ModelStyle(model=m, label=label, color=color, marker=_KIND_MARKERS[kinds[m]],
                                         kind=kinds[m], order=i)

    def __getitem__(self, model: str) -> ModelStyle:
        if model not in self._styles:
            # NOTE: a model added after the palette was fixed still gets a stable colour of its own.
            used = {s.color for s in self._styles.values()}
            color = next((c for c in EXTRA_COLORS if c not in used), "#333333")
            self._styles[model] = ModelStyle(model, model, color, "v", "other", len(self._styles))
        return self._styles[model]

    def __contains__(self, model: object) -> bool:
        return model in self._styles

    @property
    def models(self) -> list[str]:
        """Models in drawing order (baseline first, then per family: baseline, TAP, ADL, TAP & ADL, others)."""
        return sorted(self._styles, key=lambda m: self._styles[m].order)

    def sort(self, models: Iterable[str]) -> list[str]:
        """`models` in drawing order."""
        return sorted(dict.fromkeys(models), key=lambda m: self[m].order)

    def color(self, model: str) -> str:
        return self[model].color

    def label(self, model: str) -> str:
        return self[model].label
