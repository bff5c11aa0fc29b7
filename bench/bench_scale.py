"""End-to-end `mce` throughput vs the model alone, per precision and decode path (is the run loader-bound?).

    python bench/bench_scale.py                                        # CPU: a tiny ViT, a small generated tree
    python bench/bench_scale.py --model fan_base_16_p4_hybrid --device cuda --cells 3 --per-cell 4000 \\
        --batch-size 256 --workers 16 --precision fp32,bf16 --decode cpu,workers,gpu   # the GPU measurement

The script writes an ImageNet-C-format tree (`<root>/<corruption>/<severity>/<wnid>/*.JPEG`, 224 x 224, JPEG
quality 85 like the released files; the pixels are random crops of the bundled photos with a little noise, so every
file differs) and, for every precision x decode path, measures in one run:

* end to end: `attnprobe.benchmarks.imagenet_c.evaluate_imagenet_c` on the tree, with a results store (what
  `attnprobe mce --data TREE` does, minus model loading);
* model alone: the same model on the same number of images in the same batches, already decoded, normalised and on
  the device (the best any input pipeline can do);
* input alone: the same end-to-end loop with a model that does nothing (the input pipeline's own rate).

It prints images/s of each, the ratio end-to-end / model-only (the issue's goal: >= 0.8 on a GPU) and the wall time
a full ImageNet-C mCE (75 cells x 50,000 images, plus 50,000 clean) would take at the end-to-end rate. Random
weights: speed does not depend on them. The first pass of each configuration is a warm-up (and compiles with
`--compile`); passes are interleaved so that neighbours on a shared machine slow all of them alike.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

FULL_IMAGENET_C = 75 * 50_000 + 50_000  # 15 corruptions x 5 severities x 50k, plus the clean validation set
WNIDS = ("n01440764", "n01443537", "n01484850", "n01491361", "n01494475", "n01496331", "n01498041", "n01514668")
CORRUPTIONS = ("gaussian_noise", "fog", "jpeg_compression", "motion_blur", "contrast")


def _write_one(args: tuple[Path, int, int]) -> None:
    from PIL import Image

    from attnprobe.data.samples import load_sample, sample_names

    path, seed, size = args
    rng = np.random.default_rng(seed)
    names = sample_names()
    img = load_sample(names[seed % len(names)]).convert("RGB")
    w, h = img.size
    side = int(rng.integers(min(w, h) // 2, min(w, h) + 1))
    x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    crop = img.crop((x0, y0, x0 + side, y0 + side)).resize((size, size), Image.BICUBIC)
    arr = np.asarray(crop, dtype=np.int16) + rng.integers(-12, 13, (size, size, 3))
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=85)


def make_tree(root: Path, cells: int, per_cell: int, size: int, procs: int) -> list[tuple[str, int]]:
    """Write `cells` (1-5) corruption folders at severity 1, `per_cell` JPEGs each; returns the cells."""
    if not 1 <= cells <= len(CORRUPTIONS):
        raise SystemExit(f"--cells must be 1 to {len(CORRUPTIONS)}")
    chosen = [(c, 1) for c in CORRUPTIONS[:cells]]
    jobs = []
    for ci, (c, s) in enumerate(chosen):
        for k in range(per_cell):
            path = root / c / str(s) / WNIDS[k % len(WNIDS)] / f"ILSVRC2012_val_{k + 1:08d}.JPEG"
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                jobs.append((path, ci * 1_000_003 + k, size))
    if jobs:
        with mp.get_context("fork" if sys.platform == "linux" else "spawn").Pool(max(1, procs)) as pool:
            pool.map(_write_one, jobs, chunksize=64)
    return chosen


@dataclass
class Loaded:
    """The fields of `attnprobe.zoo.LoadedModel` the benchmark drivers read."""

    model: torch.nn.Module
    name: str
    preprocessing: Any
    checkpoint_sha256: str = "random-init"
    checkpoint_path: str | None = None
    card: dict = field(default_factory=dict)


class Nothing(torch.nn.Module):
    """A model that does no work: 1000 zero logits (the input pipeline's own rate)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[0], 1000)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def end_to_end(lm: Loaded, tree: Path, cells: list[tuple[str, int]], store_dir: str, args: argparse.Namespace,
               device: torch.device, precision: str, decode: str, limit: int | None = None) -> float:
    """images/s of `evaluate_imagenet_c` over the tree (fresh cells, with a results store)."""
    from attnprobe.benchmarks.imagenet_c import evaluate_imagenet_c
    from attnprobe.store import ResultsStore

    corr = sorted({c for c, _ in cells})
    sevs = sorted({s for _, s in cells})
    with ResultsStore(store_dir) as store:
        sync(device)
        t0 = time.perf_counter()
        rep = evaluate_imagenet_c(lm, store, data=tree, corruptions=corr, severities=sevs, limit=limit,
                                  batch_size=args.batch_size, workers=args.workers, device=device, fresh=True,
                                  precision=precision, decode=decode, compile=args.compile)
        sync(device)
        n = sum(r.n + r.skipped for r in rep.cells)
        return n / (time.perf_counter() - t0)


def decoded_batches(tree: Path, lm: Loaded, n: int, batch_size: int, device: torch.device) -> list[torch.Tensor]:
    """`n` images of the tree, decoded and normalised on the device, in batches (the model-only input)."""
    from attnprobe.data.folders import load_rgb
    from attnprobe.data.imagenet_c import ModelInput

    files = sorted(tree.rglob("*.JPEG"))
    to_input = ModelInput(lm.preprocessing)
    xs = [to_input(load_rgb(files[i % len(files)])) for i in range(n)]
    return [torch.stack(xs[i:i + batch_size]).to(device) for i in range(0, n, batch_size)]


def model_only(model: torch.nn.Module, batches: list[torch.Tensor], device: torch.device, precision: str) -> float:
    """images/s of the model on already decoded batches, as the engine runs it (inference mode, autocast)."""
    from attnprobe.engine.execution import Execution

    ex = Execution(precision)
    if Execution().uses_channels_last(model, device):  # as the engine feeds a channels_last model
        batches = [b.contiguous(memory_format=torch.channels_last) for b in batches]
    n = sum(len(b) for b in batches)
    sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode(), ex.autocast(device):
        hits = torch.zeros((), dtype=torch.long, device=device)
        for x in batches:
            hits += model(x).argmax(1).sum()
    int(hits)
    sync(device)
    return n / (time.perf_counter() - t0)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="fan_base_16_p4_hybrid" if cuda else "test_vit",
                    help="timm or attnprobe architecture name (random weights)")
    ap.add_argument("--device", default="cuda" if cuda else "cpu")
    ap.add_argument("--cells", type=int, default=3 if cuda else 2, help="corruption folders (1-5), severity 1")
    ap.add_argument("--per-cell", type=int, default=4000 if cuda else 64, help="images per cell")
    ap.add_argument("--image-size", type=int, default=224, help="side of the generated JPEGs (released: 224)")
    ap.add_argument("--batch-size", type=int, default=256 if cuda else 32)
    ap.add_argument("--workers", type=int, default=None, help="loader workers (default: attnprobe's default)")
    ap.add_argument("--precision", default="fp32,bf16", help="comma-separated: fp32, bf16, fp16")
    ap.add_argument("--decode", default="cpu,workers,gpu" if cuda else "cpu,workers,device",
                    help="comma-separated: cpu, workers, device, gpu")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (both measurements)")
    ap.add_argument("--repeats", type=int, default=2, help="timed passes of each configuration (interleaved)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    ap.add_argument("--tree", type=Path, default=None, help="write/reuse the generated tree here (default: temp)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import timm

    import attnprobe.archs  # noqa: F401  (registers FAN / TAP-FAN / RVT in timm)
    from attnprobe.engine.execution import Execution
    from attnprobe.zoo import Preprocessing

    device = torch.device(args.device)
    size = args.image_size
    kw = {"img_size": size} if "vit" in args.model else {}
    model = timm.create_model(args.model, num_classes=1000, **kw).eval().to(device)
    pre = Preprocessing(input_size=size, interpolation="bicubic", crop_pct=1.0)
    lm, idle = Loaded(model, args.model, pre), Loaded(Nothing().to(device), "nothing", pre)
    configs = [(p.strip(), d.strip()) for p in args.precision.split(",") for d in args.decode.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        tree = args.tree or Path(tmp) / "imagenet-c"
        cells = make_tree(tree, args.cells, args.per_cell, size, procs=max(1, (mp.cpu_count() or 2)))
        n_images = args.cells * args.per_cell
        batches = decoded_batches(tree, lm, n_images, args.batch_size, device)
        runs: dict[tuple[str, str], dict[str, list[float]]] = {c: {"e2e": [], "model": [], "input": []}
                                                              for c in configs}
        for precision, decode in configs:  # warm-up: loaders, cuDNN autotuning, compilation
            ex = Execution(precision, compile=args.compile)
            model_only(ex.prepare(model, device), batches[:2], device, precision)
            end_to_end(lm, tree, cells[:1], f"{tmp}/warm", args, device, precision, decode, limit=2 * args.batch_size)
        for _ in range(args.repeats):
            for precision, decode in configs:
                r = runs[(precision, decode)]
                r["model"].append(model_only(Execution(precision, compile=args.compile).prepare(model, device),
                                             batches, device, precision))
                r["e2e"].append(end_to_end(lm, tree, cells, f"{tmp}/store", args, device, precision, decode))
                r["input"].append(end_to_end(idle, tree, cells, f"{tmp}/idle", args, device, precision, decode))
    rows = report(args, configs, runs, n_images)
    return rows


def report(args: argparse.Namespace, configs: list[tuple[str, str]], runs: dict, n_images: int) -> list[dict]:
    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "CPU"
    print(f"model={args.model} device={args.device} ({name}) images={n_images} ({args.cells} cells x "
          f"{args.per_cell}, {args.image_size} px JPEG q85) batch={args.batch_size} workers={args.workers} "
          f"threads={torch.get_num_threads()} compile={args.compile} repeats={args.repeats} torch={torch.__version__}")
    print(f"{'precision':9} {'decode':7} {'end-to-end':>11} {'model only':>11} {'input only':>11} {'ratio':>6} "
          f"{'full ImageNet-C':>16}")
    rows = []
    for precision, decode in configs:
        r = runs[(precision, decode)]
        e2e, mod, inp = (statistics.median(r[k]) for k in ("e2e", "model", "input"))
        hours = FULL_IMAGENET_C / e2e / 3600
        rows.append({"precision": precision, "decode": decode, "e2e": e2e, "model": mod, "input": inp,
                     "ratio": e2e / mod, "hours": hours})
        print(f"{precision:9} {decode:7} {e2e:9.1f}/s {mod:9.1f}/s {inp:9.1f}/s {e2e / mod:6.3f} "
              f"{hours:13.2f} h")
    print("ratio = end-to-end / model only (goal on a GPU: >= 0.8); images/s are medians over the timed passes; "
          "full ImageNet-C = 3.8M images at the end-to-end rate")
    return rows


if __name__ == "__main__":
    main()
