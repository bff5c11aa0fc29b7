"""Where a stored number comes from, and choosing one data source per table cell.

A counting-benchmark cell of the store knows its dataset fingerprint (`imagenet_p:…`, `imagenet_p_regenerated:…`,
`imagenet_c_otf:…`) and the `info` its driver recorded (source, root, `--limit`, backend). From them this module
derives the cell's `Source`: released files or images generated from a clean folder (and by which backend), the full
set or a `--limit` subset, and the data root. Cells of one run and benchmark that share a source form a
`SourceGroup`; a table number (an mFR, an mCE, an accuracy) is always computed from the cells of ONE group, so a
store that holds released and regenerated ImageNet-P, or a full run and a `--limit` check, never mixes them.

    groups = group_cells(cells_frame(store))                 # {(run key, task): [SourceGroup, ...]}
    best = choose_group(groups[("fan_b", "imagenet_p")])      # full set first, released first, most complete
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from attnprobe.errors import UserError

__all__ = [
    "SOURCE_CHOICES",
    "SMALL_N",
    "Source",
    "SourceGroup",
    "cell_source",
    "choose_group",
    "corruption_rank",
    "group_cells",
    "one_corruption_source",
    "parse_source",
]

#: What `report --source` accepts, and the source family each name selects.
SOURCE_CHOICES: dict[str, str] = {"released": "released", "generated": "generated", "regenerated": "generated",
                                  "on-the-fly": "generated", "on_the_fly": "generated"}
#: Below this many images (videos) per cell a table marks the number as measured on few images.
SMALL_N = 500

#: Benchmark names for captions.
TASK_NAMES: dict[str, str] = {"clean": "clean images", "imagenet_c": "ImageNet-C", "imagenet_p": "ImageNet-P",
                              "imagenet_a": "ImageNet-A", "imagenet_r": "ImageNet-R", "pgd": "PGD"}
#: What one sample of a task is.
UNITS: dict[str, str] = {"imagenet_p": "videos"}

# dataset fingerprint prefix (`kind:` of `data.folders.dataset_fingerprint`) -> source kind
_PREFIX_KINDS = {"imagenet_c": "released", "imagenet_p": "released", "imagenet_c_otf": "on_the_fly",
                 "imagenet_p_regenerated": "regenerated", "imagenet_val": "folder", "imagenet_a": "folder",
                 "imagenet_r": "folder", "folder": "folder"}
_KIND_WORDS = {"released": "released", "on_the_fly": "generated on the fly", "regenerated": "regenerated",
               "folder": "image folder", "synthetic": "synthetic images", "unlabelled": "source not recorded"}
_KIND_RANK = {"released": 0, "regenerated": 1, "on_the_fly": 1, "folder": 2, "synthetic": 2, "unlabelled": 3}
# NOTE: `corruption_id` first: it names backend, recipe and engine version (`torch-v2/imagenet-c`), so two recipes of
# one backend are two sources
_BACKEND_KEYS = ("corruption_id", "backend", "engine", "corruption_backend", "corruption_engine")


@dataclass(frozen=True)
class Source:
    """The data a cell was measured on, as far as a reader must know to compare two numbers.

    Attributes:
        task: the benchmark (`imagenet_p`, ...).
        kind: released, regenerated (ImageNet-P), on_the_fly (ImageNet-C), folder, synthetic or unlabelled.
        backend: what generated the images (corruption engine), when recorded.
        limit: the `--limit` of a subset run (None: the full set).
        root: the data folder, when recorded.
        setting: a benchmark setting that changes the number (the PGD attack), when not the standard one.
        origin: what the images are when not ImageNet's (the demo's synthetic shapes).
    """

    task: str
    kind: str
    backend: str | None = None
    limit: int | None = None
    root: str | None = None
    setting: str | None = None
    origin: str | None = None

    @property
    def subset(self) -> bool:
        return self.limit is not None

    @property
    def family(self) -> str:
        """'released', 'generated' (regenerated / on the fly) or 'other' (plain folders, synthetic, unknown)."""
        if self.kind == "released" and self.task in ("imagenet_c", "imagenet_p"):
            return "released"
        return "generated" if self.kind in ("regenerated", "on_the_fly") else "other"

    @property
    def signature(self) -> tuple[str, str | None, int | None, str | None, str | None]:
        """What two runs must share for their numbers to be compared (the root may differ between machines)."""
        return self.kind, self.backend, self.limit, self.setting, self.origin

    def words(self) -> str:
        """'released ImageNet-P', 'ImageNet-C generated on the fly (backend torch)', 'clean images in /data/val',
        '--limit 2 subset of ...'."""
        name = TASK_NAMES.get(self.task, self.task)
        if self.task == "pgd":
            name = f"PGD ({self.setting})" if self.setting else "PGD-5"
        if self.family == "released":
            text = f"released {name}"
        elif self.kind in ("regenerated", "on_the_fly"):
            text = f"{name} {_KIND_WORDS[self.kind]}"
            if self.backend:
                text += f" (backend {self.backend})"
        elif self.kind == "folder":
            text = (f"{name} on clean images" if self.task == "pgd" else name) + (f" in {self.root}" if self.root
                                                                                   else "")
        elif self.kind == "synthetic":
            text = f"{name} of the {self.origin or 'synthetic'} set"
        else:
            text = f"{name}, {_KIND_WORDS.get(self.kind, self.kind)}"
        if self.origin and self.kind != "synthetic":
            text += f" from {self.origin}"
        if self.setting and self.task != "pgd":
            text += f", {self.setting}"
        if self.limit is not None:
            text = f"--limit {self.limit} subset of {text}"
        return text

    def tag(self) -> str:
        """A short tag for a table cell: 'released', 'regen.', 'on the fly', 'folder', plus ', limit N'."""
        short = {"released": "released", "regenerated": "regen.", "on_the_fly": "on the fly", "folder": "folder",
                 "synthetic": "synthetic", "unlabelled": "unlabelled"}.get(self.kind, self.kind)
        if self.backend:
            short += f" {self.backend}"
        if self.setting:
            short += f" {self.setting}"
        return short + (f", limit {self.limit}" if self.limit is not None else "")


def _kind(dataset: str, info: Mapping[str, Any]) -> str:
    recorded = str(info.get("source") or "")
    if recorded in ("released", "on_the_fly", "regenerated", "synthetic"):
        return recorded
    prefix = dataset.split(":", 1)[0] if ":" in dataset else ""
    if prefix.startswith("synthetic"):
        return "synthetic"
    if prefix in _PREFIX_KINDS:
        return _PREFIX_KINDS[prefix]
    if info.get("regenerated") is True:
        return "regenerated"
    if recorded == "clean" or info.get("root"):
        return "folder"
    return "unlabelled"


def _limit(info: Mapping[str, Any]) -> int | None:
    v = info.get("limit")
    try:
        return int(v) if v is not None and not (isinstance(v, float) and math.isnan(v)) else None
    except (TypeError, ValueError):
        return None


def cell_source(task: str, dataset: str, info: Mapping[str, Any] | None, condition: str = "",
                severity: int = 0) -> Source:
    """The `Source` of one stored cell from its task, dataset fingerprint, recorded `info`, condition and severity
    (a PGD attack other than PGD-5 and an ImageNet-P difficulty above 1 are settings of their own)."""
    info = info if isinstance(info, Mapping) else {}
    backend = next((str(info[k]) for k in _BACKEND_KEYS if info.get(k)), None)
    setting = None
    if task == "pgd" and condition != "pgd5":
        setting = condition
    elif task == "imagenet_p" and int(severity) > 1:
        setting = f"difficulty {int(severity)}"
    root = info.get("root")
    prefix = dataset.split(":", 1)[0]
    origin = "synthetic shapes" if prefix.startswith("synthetic-shapes") else (
        "synthetic images" if prefix.startswith("synthetic") else None)
    return Source(task=task, kind=_kind(dataset, info), backend=backend, limit=_limit(info),
                  root=str(root) if root else None, setting=setting, origin=origin)


def parse_source(value: str | None) -> str | None:
    """`report --source` -> the source family it selects ('released' or 'generated'); None for no preference."""
    if value is None or value.strip().lower() in ("", "any", "auto"):
        return None
    family = SOURCE_CHOICES.get(value.strip().lower())
    if family is None:
        raise UserError(f"unknown --source {value!r}; choose released, regenerated (= on-the-fly) or any")
    return family


@dataclass
class SourceGroup:
    """The cells of one run and benchmark measured on one source, one cell per (condition, severity).

    Attributes:
        key, task, source: whose cells, which benchmark, which data.
        cells: rows of `loaders.cells_frame` (one per condition and severity).
        notes: what was dropped when one slot had several cells (several datasets of one source).
    """

    key: str
    task: str
    source: Source
    cells: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    @property
    def n_min(self) -> int:
        return int(self.cells["n"].min()) if len(self.cells) else 0

    @property
    def n_max(self) -> int:
        return int(self.cells["n"].max()) if len(self.cells) else 0

    @property
    def n_total(self) -> int:
        return int(self.cells["n"].sum()) if len(self.cells) else 0

    @property
    def small(self) -> bool:
        """A `--limit` subset, or cells of fewer than `SMALL_N` samples."""
        return self.source.subset or self.n_min < SMALL_N

    def count_words(self) -> str:
        """'3 videos per perturbation (10)', 'n = 8 images', '300-320 images per cell (75 cells)'."""
        unit = UNITS.get(self.task, "images")
        n = f"{self.n_min}" if self.n_min == self.n_max else f"{self.n_min}-{self.n_max}"
        if len(self.cells) <= 1:
            return f"n = {n} {unit}"
        what = "perturbation" if self.task == "imagenet_p" else "cell"
        return f"{n} {unit} per {what} ({len(self.cells)} {what}s)"


def _dedupe(g: pd.DataFrame, key: str, src: Source) -> tuple[pd.DataFrame, list[str]]:
    """One cell per (condition, severity): the one with most samples (then the newest)."""
    order = ["n"] + (["finished_at"] if "finished_at" in g.columns else [])
    g = g.sort_values(order, ascending=False)
    dup = g.duplicated(["condition", "severity"], keep="first")
    notes = []
    if dup.any():
        notes.append(f"{key}: {int(dup.sum())} {TASK_NAMES.get(src.task, src.task)} cell(s) of {src.words()} were "
                     f"measured on another dataset of the same source; the one with most samples is used.")
    return g[~dup].sort_values(["condition", "severity"]), notes


def group_cells(cells: pd.DataFrame) -> dict[tuple[str, str], list[SourceGroup]]:
    """Group finished cells by run key, task and source (see the module docstring)."""
    out: dict[tuple[str, str], list[SourceGroup]] = {}
    if cells.empty:
        return out
    srcs = [cell_source(*row) for row in zip(cells["task"], cells["dataset"], cells["info"], cells["condition"],
                                             cells["severity"])]
    frame = cells.assign(_source=srcs)
    for (key, task), sub in frame.groupby(["key", "task"], sort=True):
        groups = []
        for src in dict.fromkeys(sub["_source"]):
            g, notes = _dedupe(sub[sub["_source"] == src].drop(columns="_source"), key, src)
            groups.append(SourceGroup(key=key, task=task, source=src, cells=g, notes=notes))
        out[(key, task)] = groups
    return out


def choose_group(groups: Sequence[SourceGroup] | None, prefer: str | None = None) -> SourceGroup | None:
    """The group a table shows: the full set before any `--limit` subset, `prefer`'s family (or released data)
    before generated data, the standard PGD attack, then the most complete and largest.

    With `prefer` ('released' or 'generated'), groups of the other of those two families are never chosen."""
    pool = [g for g in groups or () if prefer is None or g.source.family in (prefer, "other")]
    if not pool:
        return None

    def rank(g: SourceGroup) -> tuple:
        return (g.source.subset, g.source.setting is not None, _KIND_RANK.get(g.source.kind, 3), -len(g.cells),
                -g.n_total, g.source.root or "")

    return min(pool, key=rank)


def corruption_rank(corruption_id: str | None) -> tuple[int, str]:
    """Sort key of corruption sources: the default engine and recipe first, then older untagged results, then the
    rest by name (so a choice between two sources is the same on every run)."""
    from attnprobe.data.corruptions import corruption_id as default_id

    if corruption_id == default_id():
        return 0, ""
    return (1, "") if not corruption_id else (2, corruption_id)


def one_corruption_source(df: pd.DataFrame, what: str = "values") -> tuple[pd.DataFrame, list[str]]:
    """Diagnostic rows (`loaders.diagnostics_frame`) with ONE corruption source per run key, condition and severity.

    A corrupted series is stored under its dataset id tagged with what corrupted the images
    (`attnprobe.data.corruptions.tag_corruption`); when a run holds the same condition from two backends or recipes,
    the source with most images is kept (then the default engine), never an average of both, and a note says so.
    """
    from attnprobe.data.corruptions import tagged_corruption

    if df.empty or "dataset" not in df.columns:
        return df, []
    ids = df["dataset"].map({d: tagged_corruption(d) or "" for d in df["dataset"].unique()})
    corrupted = df["condition"] != "clean"
    frame = df.assign(cid=ids)
    counts = (frame[corrupted].groupby(["key", "condition", "severity", "cid"])["image"].nunique()
              .reset_index(name="n"))
    drop: list[tuple[str, str, int, str]] = []
    notes = []
    for (key, cond, sev), g in counts.groupby(["key", "condition", "severity"], sort=True):
        if len(g) < 2:
            continue
        ranked = sorted(g.itertuples(index=False), key=lambda r: (-r.n, corruption_rank(r.cid or None)))
        keep = ranked[0]
        drop += [(key, cond, int(sev), r.cid) for r in ranked[1:]]
        others = ", ".join(f"{r.cid or 'an unrecorded backend'} ({r.n} images)" for r in ranked[1:])
        notes.append(f"{key}: {what} at {cond} severity {int(sev)} exist for images corrupted by "
                     f"{keep.cid or 'an unrecorded backend'} ({keep.n} images) and by {others}; the report uses the "
                     f"first, never a mix.")
    if not drop:
        return df, notes
    gone = pd.MultiIndex.from_tuples(drop, names=["key", "condition", "severity", "cid"])
    index = pd.MultiIndex.from_frame(frame[["key", "condition", "severity", "cid"]].astype(
        {"severity": int}))
    return df[~index.isin(gone)].reset_index(drop=True), notes
