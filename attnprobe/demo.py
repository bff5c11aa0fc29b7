"""The offline end-to-end demo: four tiny bundled models, real measurements, the full report, in minutes on a CPU.

`run_demo()` needs no data and no network. It loads the bundled demo models (``models/demo_vit_*.toml``: baseline,
+TAP, +ADL, +TAP & ADL, trained by `attnprobe train` on the synthetic textured-shapes set; plus +TAP with K = 2 and 3
for the Fig. 7 sweep when they are bundled), then on the synthetic validation images it runs

1. attention stability (clean vs Gaussian noise, severities 1-5), saving the maps of a few images (clean and
   severity 3) for the figures;
2. overfocusing measures and head similarity on clean images;
3. clean top-1 accuracy, and an on-the-fly corruption benchmark: the 15 ImageNet-C corruptions x 5 severities,
   applied to the 64 px images with the ImageNet-C code (each corrupted image is made once and shared by the models);

and stores everything in ``<out>/results/results.sqlite`` (the results store; maps under ``<out>/results/maps``).
Then it draws the report (``<out>/index.html``, ``figures/``, ``tables/``) with `attnprobe.report.build_report`,
and writes ``<out>/summary.md`` / ``summary.json`` with the key numbers in plain words.

CE normalisation: AlexNet's ImageNet-C errors mean nothing for 64 px synthetic shapes, so every CE is divided by the
demo baseline's error on the same corruption (the baseline's mCE is 100 % by construction). The report says so.

A rerun reuses everything already stored (the store is resumable); ``fresh=True`` starts from an empty store.
"""

from __future__ import annotations

import html
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from attnprobe.data.images import ImageRecord, ImageSet
from attnprobe.data.synthetic import SyntheticShapes, render_image
from attnprobe.errors import UserError
from attnprobe.jsonsafe import dumps
from attnprobe.outdir import check_output_folder

__all__ = ["DEMO_MODELS", "DemoConfig", "DemoResult", "QUICK_CORRUPTIONS", "SWEEP_MODELS", "SyntheticRecord",
           "run_demo", "synthetic_image_set"]

#: The bundled demo models, baseline first.
DEMO_MODELS = ("demo_vit_baseline", "demo_vit_tap", "demo_vit_adl", "demo_vit_tapadl")
#: Extra bundled TAP models (K = 2, 3) for the Fig. 7 sweep over K; used when bundled, left out in quick mode.
SWEEP_MODELS = ("demo_vit_tap_k2", "demo_vit_tap_k3")
#: The corruptions of the reduced (``quick``) mode: one noise, one blur, one digital.
QUICK_CORRUPTIONS = ("gaussian_noise", "defocus_blur", "contrast")
STABILITY_CORRUPTION = "gaussian_noise"
#: Severity of the corrupted attention maps in the figures (and of the stability figure and table).
MAP_SEVERITY = 3
SEVERITIES = (1, 2, 3, 4, 5)

Progress = Callable[[str, int, int], None]


def default_demo_out() -> Path:
    """Where `attnprobe demo` writes unless told: `reports/demo` of the attnprobe checkout (the committed demo report,
    whichever folder the command runs from), or `./attnprobe-demo` when attnprobe is installed without a checkout."""
    root = Path(__file__).resolve().parents[1]
    if (root / "pyproject.toml").is_file() and (root / "reports").is_dir():
        return root / "reports" / "demo"
    return Path.cwd() / "attnprobe-demo"


@dataclass
class DemoConfig:
    """What the demo runs.

    Attributes:
        out: report folder (the results store goes to ``out/results``); None: `default_demo_out()`.
        quick: reduced mode for tests and smoke checks (few images, three corruptions).
        models: zoo names of the demo models; the first is the baseline.
        diag_images: synthetic val images for stability, overfocusing and head similarity.
        bench_images: images per corruption x severity cell of the benchmark.
        clean_images: images for clean accuracy.
        corruptions: benchmark corruptions (default: the 15 ImageNet-C ones; quick: `QUICK_CORRUPTIONS`).
        keep_maps: images whose full attention maps are saved for the figures.
        workers: processes that make the corrupted images (0: in this process).
        threads: torch CPU threads. The default 1 is the fastest for these tiny models on a small or shared CPU
            (several OpenMP threads spin and wait on matrices this small).
        data_seed: seed of the synthetic set (the demo models were trained on seed 0).
        formats: figure formats.
        fresh: delete the previous results store first.
        sweep: also run the bundled K-sweep models (`SWEEP_MODELS`, for Fig. 7); never in quick mode.
        segmentation: also evaluate the bundled tiny segmentation models (Table 4, Fig. 6; see
            `attnprobe.segmentation.demo`) when they are bundled.
    """

    out: str | None = None
    quick: bool = False
    models: Sequence[str] = DEMO_MODELS
    diag_images: int | None = None
    bench_images: int | None = None
    clean_images: int | None = None
    corruptions: Sequence[str] | None = None
    keep_maps: int | None = None
    workers: int = 0
    threads: int | None = 1
    data_seed: int = 0
    formats: Sequence[str] = ("png",)
    fresh: bool = False
    sweep: bool = True
    segmentation: bool = True

    def resolved(self) -> DemoConfig:
        """A copy with every None replaced by the default of the chosen mode."""
        from attnprobe.data.corruptions import benchmark_names

        quick = self.quick
        return DemoConfig(
            out=str(self.out or default_demo_out()), quick=quick, models=tuple(self.models),
            diag_images=self.diag_images or (6 if quick else 64),
            bench_images=self.bench_images or (10 if quick else 300),
            clean_images=self.clean_images or (50 if quick else 1000),
            corruptions=tuple(self.corruptions or (QUICK_CORRUPTIONS if quick else benchmark_names())),
            keep_maps=self.keep_maps if self.keep_maps is not None else (2 if quick else 3),
            workers=self.workers, threads=self.threads,
            data_seed=self.data_seed, formats=tuple(self.formats), fresh=self.fresh, sweep=self.sweep and not quick,
            segmentation=self.segmentation)


@dataclass
class DemoResult:
    """What the demo produced."""

    out: str
    index: str
    store: str
    seconds: float
    timings: dict[str, float]
    summary: dict[str, Any]
    figures: list[str] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------------------
# Synthetic images as an ImageSet (diagnostics) and as benchmark cells (counting)
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticRecord(ImageRecord):
    """An image of the synthetic set, rendered on demand (``source = "synthetic:<seed>:<split>:<index>:<size>"``)."""

    def load(self) -> Any:
        from PIL import Image

        _, seed, split, index, size = self.source.split(":")
        return Image.fromarray(render_image(int(seed), split, int(index), int(size))[0], mode="RGB")


def synthetic_image_set(n: int, seed: int = 0, size: int = 64, split: str = "val") -> ImageSet:
    """The first ``n`` images of a synthetic split as an `ImageSet` (ids ``val/000000`` ...)."""
    ds = SyntheticShapes(split, num_images=max(n, 1), size=size, seed=seed)
    return ImageSet(dataset=ds.fingerprint.replace(f":n={ds.num_images}", ""),
                    records=[SyntheticRecord(id=f"{split}/{i:06d}", source=f"synthetic:{seed}:{split}:{i}:{size}")
                             for i in range(n)])


def _corrupt_block(args: tuple[np.ndarray, list[str], str, int]) -> np.ndarray:
    """Corrupt a stack of uint8 images (module level, so worker processes can run it)."""
    from attnprobe.data import corruptions as C

    images, ids, corruption, severity = args
    batch = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)  # (N, 3, S, S)
    # NOTE: one engine call per cell; per-image seeds give each image what `C.corrupt` gives it alone
    out = C.corrupt_batch(batch, corruption, severity, [C.image_seed(i, corruption, severity) for i in ids])
    return out.permute(0, 2, 3, 1).contiguous().numpy()  # (N, S, S, 3)


class _ArrayCell(Dataset):
    """uint8 images (N, S, S, 3) with labels, normalised for one model (the `run_cells` dataset contract)."""

    def __init__(self, images: np.ndarray, targets: Sequence[int], ids: Sequence[str], pre: Any,
                 fingerprint: str) -> None:
        self.images, self.targets, self.ids, self.pre = images, list(targets), list(ids), pre
        self.fingerprint = fingerprint

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from attnprobe.data.images import normalize_u8

        return normalize_u8(self.images[i:i + 1], self.pre)[0], self.targets[i]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int]]:
        """Batched fetch (used by DataLoader): one normalisation per batch instead of one per image."""
        from attnprobe.data.images import normalize_u8

        x = normalize_u8(self.images[indices], self.pre)  # (B, 3, S, S)
        return list(zip(x.unbind(0), (self.targets[i] for i in indices)))

    def sample_name(self, i: int) -> str:
        return self.ids[i]


def _corrupted_sets(clean: np.ndarray, ids: list[str], corruptions: Sequence[str], workers: int,
                    progress: Progress) -> dict[tuple[str, int], np.ndarray]:
    """Every (corruption, severity) version of the benchmark images, made once (in parallel when workers > 0)."""
    jobs = [(c, s) for c in corruptions for s in SEVERITIES]
    out: dict[tuple[str, int], np.ndarray] = {}
    if workers > 0:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        # NOTE: spawn, not fork: the parent may already run torch threads, which do not survive a fork.
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
            futures = {job: pool.submit(_corrupt_block, (clean, ids, job[0], job[1])) for job in jobs}
            for i, (job, fut) in enumerate(futures.items()):
                out[job] = fut.result()
                progress("corrupt", i + 1, len(jobs))
    else:
        for i, job in enumerate(jobs):
            out[job] = _corrupt_block((clean, ids, job[0], job[1]))
            progress("corrupt", i + 1, len(jobs))
    return out


# --------------------------------------------------------------------------------------------------------------
# The demo
# --------------------------------------------------------------------------------------------------------------


def _load_models(names: Sequence[str]) -> list[Any]:
    from attnprobe import zoo

    loaded = []
    for name in names:
        card = zoo.load_card(name)
        if card is None or zoo.bundled_checkpoint(card) is None:
            raise UserError(f"demo model {name!r} is not bundled in {zoo.models_dir()}; restore models/ from the "
                            "repository or retrain it with `bash scripts/make_demo_models.sh`")
        loaded.append(zoo.load_model(name, pretrained=True))
    return loaded


def _run_key(name: str) -> str:
    return name  # one checkpoint per demo model, so the report's run key is the model name


def run_demo(cfg: DemoConfig, progress: Progress | None = None) -> DemoResult:
    """Run the demo (see the module docstring) and build its report.

    Args:
        cfg: what to run (`DemoConfig`; defaults: the full demo into `default_demo_out()`).
        progress: ``progress(stage, done, total)`` while it runs.

    Returns:
        Paths, timings and the key numbers (`DemoResult`).
    """
    from attnprobe import diagnostics as Dg
    from attnprobe.engine import CellSpec, run_cells
    from attnprobe.report import build_report
    from attnprobe.store import CellKey, ResultsStore

    cfg = cfg.resolved()
    if len(cfg.models) < 2:
        raise UserError("the demo compares models with a baseline; give at least two --model names")
    say = progress or (lambda stage, done, total: None)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t_start = time.monotonic()
    timings: dict[str, float] = {}
    out = check_output_folder(cfg.out)
    store_dir = out / "results"
    if cfg.fresh and store_dir.exists():
        shutil.rmtree(store_dir)
    reused = (store_dir / "results.sqlite").exists()

    def lap(name: str, t0: float) -> float:
        timings[name] = round(time.monotonic() - t0, 1)
        return time.monotonic()

    t = time.monotonic()
    if cfg.sweep:
        from attnprobe import zoo

        extra = [m for m in SWEEP_MODELS if m not in cfg.models and (card := zoo.load_card(m)) is not None
                 and zoo.bundled_checkpoint(card) is not None]
        cfg.models = (*cfg.models, *extra)
    loaded = _load_models(cfg.models)
    size = int(loaded[0].preprocessing.input_size)
    entries = [Dg.ModelEntry.from_loaded(lm) for lm in loaded]
    for e in entries:
        e.model.eval()
    t = lap("load_models", t)

    n_bench, n_clean = int(cfg.bench_images), int(cfg.clean_images)
    val = SyntheticShapes("val", num_images=max(n_bench, n_clean), size=size, seed=cfg.data_seed)
    images_u8, targets = val.tensors()
    images_u8 = images_u8.permute(0, 2, 3, 1).numpy()  # (N, S, S, 3)
    targets = targets.tolist()
    ids = [f"val/{i:06d}" for i in range(len(targets))]
    base_fp = val.fingerprint.replace(f":n={val.num_images}", "")
    clean_fp, bench_fp = f"{base_fp}:first={n_clean}", f"{base_fp}:first={n_bench}:imagenet-c-code"

    with ResultsStore(store_dir) as store:
        for lm in loaded:
            store.register_model(lm.name, lm.checkpoint_sha256, lm.checkpoint_path, lm.card)

        def bench_key(lm: Any, c: str, s: int) -> CellKey:
            return CellKey(lm.name, lm.checkpoint_sha256, "imagenet_c", bench_fp, lm.preprocessing.key(), c, s)

        # Benchmark images: each (corruption, severity) version made once, in worker processes, and only for
        # cells that some model still lacks (a rerun reuses the store).
        todo = [c for c in cfg.corruptions if any(not store.is_cell_done(bench_key(lm, c, s))
                                                  for lm in loaded for s in SEVERITIES)]
        corrupted = _corrupted_sets(images_u8[:n_bench], ids[:n_bench], todo, cfg.workers, say)
        t = lap("corrupt_images", t)

        # 1-2. Diagnostics on the same images for every model.
        diag_set = synthetic_image_set(int(cfg.diag_images), cfg.data_seed, size)

        def diag_progress(stage: str) -> Callable[[int, int], None]:
            return lambda done, total: say(stage, done, total)

        # NOTE: maps are kept (for the figures) only at the middle severity, which keeps the store small.
        Dg.stability(entries, diag_set, STABILITY_CORRUPTION, [MAP_SEVERITY], store=store,
                     keep_maps=int(cfg.keep_maps), batch_size=32, progress=diag_progress("stability"))
        Dg.stability(entries, diag_set, STABILITY_CORRUPTION, [s for s in SEVERITIES if s != MAP_SEVERITY],
                     store=store, keep_maps=0, batch_size=32, progress=diag_progress("stability"))
        t = lap("stability", t)
        Dg.overfocus(entries, diag_set, store=store, batch_size=32, progress=diag_progress("overfocus"))
        t = lap("overfocus", t)
        Dg.heads(entries, diag_set, store=store, batch_size=32, progress=diag_progress("heads"))
        t = lap("heads", t)

        # 3. Clean accuracy and the corruption benchmark.
        bench_ids = ids[:n_bench]
        for mi, lm in enumerate(loaded):
            pre = lm.preprocessing
            cells = [CellSpec(CellKey(lm.name, lm.checkpoint_sha256, "clean", clean_fp, pre.key(), "clean", 0),
                              _ArrayCell(images_u8[:n_clean], targets[:n_clean], ids[:n_clean], pre, clean_fp),
                              {"source": "synthetic"})]
            for (c, s), arr in corrupted.items():
                if not store.is_cell_done(bench_key(lm, c, s)):
                    cells.append(CellSpec(bench_key(lm, c, s), _ArrayCell(arr, targets[:n_bench], bench_ids, pre,
                                                                          bench_fp),
                                          {"source": "on_the_fly", "images": n_bench, "size": size}))
            run_cells(lm.model, cells, store, batch_size=250, workers=0, device="cpu")
            say("benchmark", mi + 1, len(loaded))
        t = lap("benchmark", t)
        summary = _summary(store, cfg, loaded)
        # 4. Segmentation: the bundled tiny segmentation models (Table 4, supplementary Tables IV / V, Figs. 6, IV-VI)
        from attnprobe.segmentation.demo import run_segmentation_demo, segmentation_demo_available

        if cfg.segmentation and segmentation_demo_available():
            summary["segmentation"] = run_segmentation_demo(store, store_dir, cfg.quick, say)
            t = lap("segmentation", t)

    result = build_report(store_dir, out, baseline=_run_key(cfg.models[0]), ce_reference=_run_key(cfg.models[0]),
                          condition=STABILITY_CORRUPTION, severity=MAP_SEVERITY, formats=cfg.formats,
                          title="attnprobe demo: tiny ViTs with TAP and ADL on synthetic shapes"
                          + (" (and tiny segmentation models on synthetic streets)" if "segmentation" in summary
                             else ""))
    t = lap("report", t)
    seconds = round(time.monotonic() - t_start, 1)
    summary["seconds"] = seconds
    summary["timings"] = timings
    summary["reused_store"] = reused
    _write_summary(out, summary, cfg)
    _annotate_index(result.index, summary)
    return DemoResult(out=str(out), index=str(result.index), store=str(store_dir), seconds=seconds, timings=timings,
                      summary=summary, figures=[str(p) for f in result.figures for p in f.files],
                      tables=[str(p) for tb in result.tables for p in tb.files], notes=list(result.notes))


# --------------------------------------------------------------------------------------------------------------
# Key numbers in plain words
# --------------------------------------------------------------------------------------------------------------


def _mean(values: Sequence[float]) -> float:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return sum(vals) / len(vals) if vals else float("nan")


def _iv(iv: Any) -> list[float] | None:
    return None if iv is None else [float(iv.estimate), float(iv.low), float(iv.high)]


def _summary(store: Any, cfg: DemoConfig, loaded: Sequence[Any]) -> dict[str, Any]:
    """Per model: clean accuracy, mean corrupted error, mCE normalised by the baseline, stability, overfocusing, and
    the 95% intervals of the changes against the baseline (the same intervals as the report's tables)."""
    from attnprobe.report.loaders import cells_frame, chunks_frame, diagnostics_frame
    from attnprobe.report.summary import counting_summary, diagnostic_summary

    base = cfg.models[0]
    rows: dict[str, dict[str, Any]] = {}
    errors: dict[str, dict[str, list[float]]] = {}
    for lm in loaded:
        r: dict[str, Any] = {"title": lm.card.get("title", lm.name), "checkpoint_sha256": lm.checkpoint_sha256,
                             "hparams": lm.card.get("hparams", {}), "trained": lm.card.get("results", {})}
        for cell in store.cells(model=lm.name, checkpoint_sha256=lm.checkpoint_sha256):
            if cell["task"] == "clean":
                r["clean_accuracy"] = cell["correct"] / max(cell["n"], 1)
            elif cell["task"] == "imagenet_c":
                errors.setdefault(lm.name, {}).setdefault(cell["condition"], [float("nan")] * 5)[
                    int(cell["severity"]) - 1] = 1.0 - cell["correct"] / max(cell["n"], 1)
        rows[lm.name] = r
    base_err = {c: _mean(v) for c, v in errors.get(base, {}).items()}
    for name, r in rows.items():
        errs = errors.get(name, {})
        r["mean_corruption_error"] = _mean([_mean(v) for v in errs.values()])
        r["ce_vs_baseline"] = {c: _mean(v) / base_err[c] for c, v in errs.items() if base_err.get(c, 0) > 0}
        r["mce_vs_baseline"] = _mean(list(r["ce_vs_baseline"].values()))

    keys = [lm.name for lm in loaded]
    counting = counting_summary(cells_frame(store), chunks_frame(store), ce_reference=base, baseline=base, keys=keys)
    for name, r in rows.items():
        diffs = counting.differences.get(name, {})
        r["clean_accuracy_delta"] = _iv(diffs.get("clean"))
        r["mce_delta"] = _iv(diffs.get("mce"))
    series = {"stability_gaussian_noise_s3": ("attention_cosine", STABILITY_CORRUPTION, MAP_SEVERITY),
              "row_similarity": ("row_similarity", "clean", 0), "head_similarity": ("head_similarity", "clean", 0),
              "topk_column_mass": ("topk_column_mass", "clean", 0)}
    for field_name, (metric, cond, sev) in series.items():
        ds = diagnostic_summary(diagnostics_frame(store, metric), metric, cond, sev, base, keys)
        for name, r in rows.items():
            mean = ds.means.get(name) if ds else None
            r[field_name] = float(mean.estimate) if mean else float("nan")
            r[f"{field_name}_delta"] = _iv(ds.differences.get(name)) if ds else None
    return {"baseline": base, "models": rows, "images": {"diagnostics": cfg.diag_images,
                                                         "benchmark_per_cell": cfg.bench_images,
                                                         "clean": cfg.clean_images},
            "corruptions": list(cfg.corruptions), "quick": cfg.quick}


def _change(delta: list[float] | None, scale: float, unit: str, lower_is_better: bool, digits: int = 1) -> str:
    """'-0.4 points [-2.3, +1.4], within noise' / '+0.060 [+0.04, +0.08], better'."""
    if delta is None:
        return "n/a"
    est, low, high = (v * scale for v in delta)
    text = f"{est:+.{digits}f}{unit} [{low:+.{digits}f}, {high:+.{digits}f}]"
    if low <= 0 <= high:
        return text + ", within noise"
    return text + (", better" if (est < 0) == lower_is_better else ", worse")


def _verdicts(summary: dict[str, Any]) -> list[str]:
    """Plain sentences comparing each model with the baseline, with 95% intervals (measured, not assumed)."""
    rows, base = summary["models"], summary["baseline"]
    out = []
    for name, r in rows.items():
        if name == base:
            continue
        out.append(f"{r['title']}: mCE {100 * r['mce_vs_baseline']:.1f}% of the baseline's (change "
                   f"{_change(r.get('mce_delta'), 100, ' points', True)}); clean accuracy "
                   f"{_change(r.get('clean_accuracy_delta'), 100, ' points', False)}; attention stability under "
                   f"Gaussian noise (severity {MAP_SEVERITY}) "
                   f"{_change(r.get('stability_gaussian_noise_s3_delta'), 1, '', False, 3)}; row similarity "
                   f"(overfocusing, lower is better) {_change(r.get('row_similarity_delta'), 1, '', True, 3)}.")
    n = summary["images"]
    out.append(f"Brackets: 95% intervals of the change against the baseline, from bootstraps paired over images "
               f"(accuracy: the {n['clean']} clean images; mCE: the {n['benchmark_per_cell']} images shared by every "
               f"corruption x severity cell; attention: {n['diagnostics']} images). 'Within noise': the interval "
               f"contains zero.")
    return out


def _write_summary(out: Path, summary: dict[str, Any], cfg: DemoConfig) -> None:
    (out / "summary.json").write_text(dumps(summary, default=str, indent=2) + "\n", encoding="utf-8")
    rows = summary["models"]
    lines = ["# attnprobe demo: key numbers", "",
             "Tiny ViTs (64 px, 8x8 tokens) trained by `attnprobe train` on the synthetic textured-shapes set; "
             "measured by `attnprobe demo`" + (" in the reduced --quick mode" if cfg.quick else "") + ".",
             "CE is normalised by the demo baseline's error (not AlexNet's): the baseline's mCE is 100% by "
             "construction and the values are not comparable with published ImageNet-C numbers.", "",
             "| model | clean acc. | mean corr. error | mCE vs baseline | stability (noise s3) | row sim. | "
             "head sim. |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        lines.append(f"| {r['title']} | {100 * r.get('clean_accuracy', math.nan):.1f}% | "
                     f"{100 * r['mean_corruption_error']:.1f}% | {100 * r['mce_vs_baseline']:.1f}% | "
                     f"{r['stability_gaussian_noise_s3']:.3f} | {r['row_similarity']:.3f} | "
                     f"{r['head_similarity']:.3f} |")
    lines += ["", *[f"- {v}" for v in _verdicts(summary)]]
    if summary.get("segmentation"):  # Table 4 on the tiny segmentation models (attnprobe.segmentation.demo)
        lines += ["", "Segmentation (tiny FAN-Hybrid + SegFormer models on synthetic street scenes; mIoU over the "
                  "classes present; Cityscapes-C: 16 corruptions at the official severities, generated on the fly; "
                  "ACDC: the four conditions rendered on top):", "",
                  "| model | clean | Cityscapes-C | ACDC |", "|---|---:|---:|---:|"]
        for name, r in summary["segmentation"].items():
            lines.append(f"| {name} | " + " | ".join("–" if r.get(t) is None else f"{100 * r[t]:.1f}%"
                                                    for t in ("cityscapes", "cityscapes_c", "acdc")) + " |")
    lines += ["",
              f"Runtime: {summary['seconds']:.0f} s ("
              + ", ".join(f"{k} {v:.0f} s" for k, v in summary["timings"].items()) + ")"
              + ("; results already in the store were reused (`attnprobe demo --fresh` recomputes everything)."
                 if summary.get("reused_store") else ".")]
    (out / "summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _annotate_index(index: Path, summary: dict[str, Any]) -> None:
    """Put the demo's plain-words summary at the top of the report page."""
    page = index.read_text(encoding="utf-8")
    items = "".join(f"<li>{html.escape(v)}</li>" for v in _verdicts(summary))
    block = ("<section class=\"demo-summary\"><h2>What the demo models show</h2><p>Tiny ViTs trained on synthetic "
             "64&nbsp;px textured shapes (not ImageNet models). CE is normalised by the demo baseline, not by "
             f"AlexNet. Full numbers: <a href=\"summary.md\">summary.md</a>.</p><ul>{items}</ul></section>")
    pos = page.find("</h1>")
    page = page[:pos + 5] + block + page[pos + 5:] if pos >= 0 else block + page
    # NOTE: the committed demo report must not name the machine it was made on: paths become relative.
    from attnprobe.zoo import models_dir

    for root in {index.parent.resolve(), models_dir().resolve().parent}:
        page = page.replace(f"{root.as_posix()}/", "")
    index.write_text(page, encoding="utf-8")
