"""Benchmark: `attnprobe stability` on a segmentation model vs two plain forward passes, and its peak memory.

    python bench/bench_seg.py                     # TAP-FAN-B-Hybrid + SegFormer with 4 of its 16 blocks, 1024 px
    python bench/bench_seg.py --full --n 4        # the official FAN-B-Hybrid segmentation size (slow on a CPU)
    python bench/bench_seg.py --window 512        # 1024 tokens instead of 4096 (quick check)

A segmentation model's diagnostics run on one window of its slide inference (1024 x 1024 px: 64 x 64 = 4096 tokens,
so every layer's maps are 4096 x 4096 per head), one image per pass. Timing, per image and interleaved (the order of
the two arms rotates every image, so load changes on a shared machine hit both alike): (a) two plain forward passes
(clean, then corrupted; fused attention, no capture) and (b) the stability driver (capture through the explicit
attention path, per-layer reduction to per-image values, results store; maps of the first image kept, pooled).
Corruption generation is excluded (made before timing, as in bench_stability.py). Target: (b) / (a) <= 1.3.

Memory: resident set size above the level before the first image, sampled every 2 ms; the peak over the first image
vs the peak over all of them must not grow (each layer's 4096 x 4096 maps are reduced and freed before the next).

The slide inference itself (its cost vs its window forwards, its peak memory) is measured by bench/bench_slide.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_stability import RssSampler, make_images

#: FAN-B-Hybrid's blocks (448 channels, 8 heads of 56, its ConvNeXt stem) but 4 of its 16 blocks: every block costs
#: what an official block costs, so the ratio per block is the official one, in a quarter of the time.
SMALL = {"depth": 4}


def main() -> None:
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "131072"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="the official FAN-B-Hybrid size (16 blocks, 448 channels)")
    ap.add_argument("--n", type=int, default=4, help="images")
    ap.add_argument("--window", type=int, default=1024, help="window side in pixels (official 1024)")
    ap.add_argument("--corruption", default="gaussian_noise")
    ap.add_argument("--severity", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import warnings

    from attnprobe import diagnostics as D
    from attnprobe import zoo
    from attnprobe.data import corruptions as C
    from attnprobe.data.images import ImageSet, image_folder, model_input_u8, normalize_u8
    from attnprobe.store import ResultsStore

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = zoo.load_model("fan_b_tapadl_seg", pretrained=False, **({} if args.full else SMALL))
    model = loaded.model.eval()
    pre = zoo.Preprocessing(input_size=args.window, interpolation="bilinear", crop_pct=1.0)
    entry = D.ModelEntry(name="fan_b_tapadl_seg" + ("" if args.full else " (small)"), model=model,
                         preprocessing=pre)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_p = Path(tmp)
        (tmp_p / "images").mkdir()
        make_images(tmp_p / "images", args.n)
        images = image_folder(tmp_p / "images")
        clean = {r.id: model_input_u8(r.load(), pre) for r in images.records}
        corrupted = {C.image_seed(r.id, args.corruption, args.severity):
                     C.corrupt(clean[r.id], args.corruption, args.severity,
                               seed=C.image_seed(r.id, args.corruption, args.severity)) for r in images.records}
        real_corrupt = C.corrupt
        C.corrupt = lambda image, name, severity, seed: corrupted[seed]  # corruption generation excluded
        store = ResultsStore(tmp_p / "out")
        with torch.no_grad():  # warm-up of both paths, not timed
            x = normalize_u8(clean[images.records[0].id][None], pre)
            model(x)
        D.stability([entry], ImageSet(dataset=images.dataset, records=images.records[:1]), args.corruption,
                    [args.severity], store=ResultsStore(tmp_p / "warmup"), keep_maps=0)
        base_rss = RssSampler().rss()
        plain_t, stab_t, peaks = [], [], []
        for i, r in enumerate(images.records):
            xc = normalize_u8(clean[r.id][None], pre)
            xk = normalize_u8(corrupted[C.image_seed(r.id, args.corruption, args.severity)][None], pre)

            def plain(xc: torch.Tensor = xc, xk: torch.Tensor = xk) -> float:
                t0 = time.perf_counter()
                with torch.no_grad():
                    model(xc)
                    model(xk)
                return time.perf_counter() - t0

            def stab(r: object = r, i: int = i) -> float:
                t0 = time.perf_counter()
                with RssSampler() as mem:
                    D.stability([entry], ImageSet(dataset=images.dataset, records=[r]), args.corruption,
                                [args.severity], store=store, keep_maps=1 if i == 0 else 0)
                peaks.append(mem.peak - base_rss)
                return time.perf_counter() - t0

            arms = [(plain_t, plain), (stab_t, stab)]
            for k in range(2):
                out, fn = arms[(i + k) % 2]
                out.append(fn())
            print(f"image {i + 1}/{args.n}: plain 2 passes {plain_t[-1]:.2f}s  stability {stab_t[-1]:.2f}s  ratio "
                  f"{stab_t[-1] / plain_t[-1]:.3f}  peak RSS +{peaks[-1] / 2**20:.0f} MiB", file=sys.stderr)
        C.corrupt = real_corrupt
        maps = D.load_maps(store.artifacts(kind=D.ARTIFACT_KIND)[0]["abspath"])
        result = {
            "model": entry.name, "params": sum(p.numel() for p in model.parameters()), "window": args.window,
            "tokens_per_window": int(maps["meta"]["grid"][0] * maps["meta"]["token_pool"]) ** 2,
            "kept_map_shape": list(maps["attn"][0].shape), "n_images": args.n, "corruption": args.corruption,
            "severity": args.severity, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__,
            "plain_two_passes_s": round(sum(plain_t), 3), "stability_s": round(sum(stab_t), 3),
            "ratio_total": round(sum(stab_t) / sum(plain_t), 4),
            "ratio_median_image": round(statistics.median(s / p for s, p in zip(stab_t, plain_t)), 4),
            "peak_rss_increase_mib_first_image": round(peaks[0] / 2**20, 1),
            "peak_rss_increase_mib_all": round(max(peaks) / 2**20, 1),
            "stored_values": len(store.diagnostics()),
        }
    print(json.dumps(result, indent=2))
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
