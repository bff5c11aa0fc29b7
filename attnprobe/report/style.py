"""One look for every figure: colours, labels and order per model, font sizes, figure widths, saving.

Every figure function asks `ModelStyles` for a model's colour and label, so one model keeps one colour and one
label across all figures of a report. The baseline is grey. Every other model's colour is a function of its own
name and method, not of which other models the report holds, so a model keeps its colour from one report to the
next. A TAP, ADL or TAP & ADL model at the paper's setting (its card says K = 4, lambda = 1) gets its method's
Okabe-Ito colour (blue, orange, vermillion: colour-blind safe); other models, e.g. the runs of a K or lambda sweep,
hash their name into the other hues of their method (TAP blues, ADL oranges, TAP & ADL reds; greens and darks for
anything else). Only when two models of one report land on the same colour does the later one (in name order) move
to the next free colour. A model card may pin a colour (`color = "#0072B2"`).
"""

from __future__ import annotations

import hashlib
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
    "BASELINE_COLOR",
    "KIND_COLORS",
    "PALETTE",
    "ModelStyle",
    "model_color",
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

#: The baseline's colour.
BASELINE_COLOR = "#7a7a7a"
#: Colours by method kind (Okabe-Ito, colour-blind safe), for what stands for a method rather than a model (Fig. 7
#: lines).
KIND_COLORS: dict[str, str] = {
    "baseline": BASELINE_COLOR,
    "tap": "#0072B2",
    "adl": "#E69F00",
    "tapadl": "#D55E00",
}
#: The hues each method's models are hashed into (the first of each is its Okabe-Ito colour).
KIND_PALETTES: dict[str, tuple[str, ...]] = {
    "tap": ("#0072B2", "#56B4E9", "#393B79", "#17BECF"),
    "adl": ("#E69F00", "#8C564B", "#BCBD22"),
    "tapadl": ("#D55E00", "#CC79A7", "#AD494A"),
    "other": ("#009E73", "#000000", "#637939", "#9467BD"),
}
#: Every colour a model can get, in the order a collision moves through them.
PALETTE: tuple[str, ...] = tuple(c for kind in ("tap", "adl", "tapadl", "other") for c in KIND_PALETTES[kind])
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


#: Hyper-parameters of the paper's setting (Guo et al.: K = 4 TAP branches, ADL weight 1).
_PAPER_SETTING = {"tap": {"num_scales": 4}, "adl": {"adl_weight": 1.0}, "tapadl": {"num_scales": 4, "adl_weight": 1.0}}


def model_color(model: str, kind: str = "other", card: Mapping[str, Any] | None = None) -> str:
    """A model's own colour, from its name, method and card alone (stable across reports, processes, machines):
    the method's colour at the paper's setting, else the name hashed into the method's other hues."""
    hues = KIND_PALETTES.get(kind, KIND_PALETTES["other"])
    hp = (card or {}).get("hparams")
    paper = _PAPER_SETTING.get(kind)
    if paper and isinstance(hp, Mapping) and all(_close(hp.get(k), v) for k, v in paper.items()):
        return hues[0]
    pool = hues[1:] if paper else hues
    digest = hashlib.sha1(model.encode("utf-8")).digest()
    return pool[int.from_bytes(digest[:4], "big") % len(pool)]


def _close(a: Any, b: float) -> bool:
    return isinstance(a, (int, float)) and not isinstance(a, bool) and abs(float(a) - b) < 1e-9


def _free_color(first: str, used: set[str], kind: str = "other") -> str:
    """`first` if free, else the next free hue of the method, else the next free palette colour (dark grey when
    everything is taken)."""
    hues = KIND_PALETTES.get(kind, KIND_PALETTES["other"])
    start = hues.index(first) if first in hues else 0
    order = [hues[(start + i) % len(hues)] for i in range(len(hues))]
    p0 = PALETTE.index(first) if first in PALETTE else 0
    order += [PALETTE[(p0 + i) % len(PALETTE)] for i in range(len(PALETTE))]
    return next((c for c in order if c not in used), "#333333")


def _assign_colors(names: Sequence[str], cards: Mapping[str, Mapping[str, Any]], baseline: str | None,
                   kinds: Mapping[str, str]) -> dict[str, str]:
    """Baseline grey; pinned card colours; every other model its hashed colour, collisions resolved in name order."""
    out: dict[str, str] = {}
    if baseline in names:
        out[baseline] = BASELINE_COLOR  # type: ignore[index]
    for m in sorted(names):
        pinned = cards.get(m, {}).get("color")
        if m not in out and isinstance(pinned, str) and pinned not in out.values():
            out[m] = pinned
    for m in sorted(names):
        if m not in out:
            kind = kinds.get(m, "other")
            out[m] = _free_color(model_color(m, kind, cards.get(m)), set(out.values()) | {BASELINE_COLOR}, kind)
    return out


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
        colors = _assign_colors(names, cards, baseline, kinds)
        self._styles: dict[str, ModelStyle] = {}
        for i, m in enumerate(ordered):
            card = cards.get(m, {})
            label = str(card.get("label") or card.get("display_name") or card.get("title") or m.split("@")[0])
            if "@" in m:  # several checkpoints of one model: the short hash tells them apart
                label += f" @{m.split('@', 1)[1]}"
            self._styles[m] = ModelStyle(model=m, label=label, color=colors[m], marker=_KIND_MARKERS[kinds[m]],
                                         kind=kinds[m], order=i)

    def __getitem__(self, model: str) -> ModelStyle:
        if model not in self._styles:
            # NOTE: a model added after the palette was fixed still gets a stable colour of its own.
            used = {s.color for s in self._styles.values()}
            color = _free_color(model_color(model), used)  # "other": nothing is known of its method
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
