"""Cost and peak memory of our sliding-window segmentation inference, in one interleaved run.

The official protocol slides 1024x1024 windows with stride 768 over 2048x1024 Cityscapes images (3 windows). This
script keeps that geometry at a smaller scale (default --scale 0.25: a 512x256 image, 256 windows, stride 192;
--scale 1 is the real size) with a small TAP-FAN-Hybrid + SegFormer model (random weights, eval mode, inference mode)
and measures:

1. Time (best of N interleaved rounds): ``attnprobe.segmentation.infer(mode="slide")`` against the sum of the
   separate forward passes of its windows (the work that cannot be avoided), plus the official loop (every window's
   logits zero-padded to a full-image tensor with F.pad and added) and ``batch_windows=3``.
   Target: ours / sum of window forwards <= 1.05.
2. Peak memory above the state before the call (model and input already in memory), each measured in a fresh
   subprocess: one window's forward pass, our slide inference, the official loop. On CPU the resident set size is
   sampled every 0.2 ms with glibc told to return every large block at once (MALLOC_MMAP_THRESHOLD_), on CUDA
   ``torch.cuda.max_memory_allocated`` is used. Target: ours <= one window + the output logits (which any
   implementation must hold) + the count map, i.e. "bounded by one window's activations".

Usage::

    python bench/bench_slide.py [--scale 0.5] [--repeats 3] [--threads N] [--device cpu|cuda]

Wall-clock timings on a shared machine are noisy; the interleaving and best-of-N keep the ratios fair.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from attnprobe.segmentation.inference import infer, slide_windows
from attnprobe.segmentation.model import build_segmentor

SMALL = dict(num_scales=4, embed_dim=128, depth=4, num_heads=4, backbone={"depths": [2, 2], "dims": [32, 64, 128, 256]},
             decoder_embed_dim=128, head_channels=64, num_classes=19)


def official_slide(model: nn.Module, img: torch.Tensor, crop: tuple[int, int], stride: tuple[int, int]) -> torch.Tensor:
    """The mmseg 0.13 loop, written here from the algorithm: F.pad every window's logits to the image, add."""
    batch, _, h_img, w_img = img.shape
    preds = img.new_zeros((batch, model.num_classes, h_img, w_img))
    count = img.new_zeros((batch, 1, h_img, w_img))
    for y1, y2, x1, x2 in slide_windows(h_img, w_img, crop, stride):
        logits = model(img[:, :, y1:y2, x1:x2])
        preds += F.pad(logits, (x1, w_img - x2, y1, h_img - y2))
        count[:, :, y1:y2, x1:x2] += 1
    return preds / count


def setup(scale: float, device: str) -> tuple[nn.Module, torch.Tensor, tuple[int, int], tuple[int, int]]:
    torch.manual_seed(0)
    model = build_segmentor("segformer_tap_fan_base_16_p4_hybrid", **SMALL).eval().to(device)
    height, width = int(1024 * scale), int(2048 * scale)
    crop, stride = (int(1024 * scale),) * 2, (int(768 * scale),) * 2
    x = torch.randn(1, 3, height, width, device=device)
    return model, x, crop, stride


def interleaved_best(fns: dict[str, Callable[[], object]], repeats: int, sync: Callable[[], None]) -> dict[str, float]:
    """Run every function once per round, ``repeats`` rounds; return the best wall time of each (seconds)."""
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):  # the first round doubles as warm-up: only the best time counts
        for name, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure_peak(what: str, scale: float, device: str) -> int:
    """(run in a subprocess) peak memory above the starting point while running ``what`` once, in bytes."""
    model, x, crop, stride = setup(scale, device)
    y1, y2, x1, x2 = slide_windows(x.shape[2], x.shape[3], crop, stride)[0]
    ops = {"window": lambda: model(x[:, :, y1:y2, x1:x2]), "ours": lambda: infer(model, x, mode="slide", crop=crop,
                                                                                    stride=stride),
           "official": lambda: official_slide(model, x, crop, stride)}
    with torch.inference_mode():
        ops[what]()  # warm-up: lazy initialisation must not count
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            start = torch.cuda.memory_allocated()
            out = ops[what]()
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - start
        start = _rss_bytes()
        peak = [start]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], _rss_bytes())
                time.sleep(0.0002)

        sampler = threading.Thread(target=sample)
        sampler.start()
        out = ops[what]()
        peak[0] = max(peak[0], _rss_bytes())
        done.set()
        sampler.join()
        del out
    return peak[0] - start


def peak_in_subprocess(what: str, args: argparse.Namespace) -> int:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    cmd = [sys.executable, __file__, "--measure", what, "--scale", str(args.scale), "--device", args.device,
           "--threads", str(args.threads)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return int(json.loads(out.strip().splitlines()[-1])["peak"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.25, help="image 2048x1024 and windows 1024/768 times this")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds; the best time is kept")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--measure", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.measure:
        print(json.dumps({"peak": measure_peak(args.measure, args.scale, args.device)}))
        return

    model, x, crop, stride = setup(args.scale, args.device)
    windows = slide_windows(x.shape[2], x.shape[3], crop, stride)
    crops = [x[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in windows]
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    cpu = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu}, "
          f"device {args.device}, image {x.shape[3]}x{x.shape[2]}, {len(windows)} windows of {crop[1]}x{crop[0]}, "
          f"stride {stride[0]}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M-parameter TAP-FAN-Hybrid "
          f"+ SegFormer, best of {args.repeats} interleaved rounds, load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs")

    with torch.inference_mode():
        ours = infer(model, x, mode="slide", crop=crop, stride=stride)
        reference = official_slide(model, x, crop, stride)
        batched = infer(model, x, mode="slide", crop=crop, stride=stride, batch_windows=3)
        print(f"outputs: ours vs official loop max |diff| {(ours - reference).abs().max().item():.1e}, "
              f"batch_windows=3 vs 1: {(batched - ours).abs().max().item():.1e}")
        fns: dict[str, Callable[[], object]] = {
            "window forwards": lambda: [model(c) for c in crops],
            "ours (slide)": lambda: infer(model, x, mode="slide", crop=crop, stride=stride),
            "official loop": lambda: official_slide(model, x, crop, stride),
            "ours, batch_windows=3": lambda: infer(model, x, mode="slide", crop=crop, stride=stride, batch_windows=3),
        }
        best = interleaved_best(fns, args.repeats, sync)
    base = best["window forwards"]
    print("\ntime (best of rounds):")
    for name, t in best.items():
        print(f"  {name:<24} {t * 1000:9.1f} ms   {t / base:6.3f}x the sum of the window forwards")
    print(f"  -> ours / sum of window forwards: {best['ours (slide)'] / base:.3f} (target <= 1.05)")

    output_bytes = ours.numel() * ours.element_size()
    count_bytes = x.shape[2] * x.shape[3] * 4
    peaks = {what: peak_in_subprocess(what, args) for what in ("window", "ours", "official")}
    mib = 1 << 20
    print("\npeak memory above the start (model and input already allocated), fresh process each:")
    print(f"  one window forward          {peaks['window'] / mib:8.1f} MiB")
    print(f"  ours (slide)                {peaks['ours'] / mib:8.1f} MiB")
    print(f"  official loop (F.pad)       {peaks['official'] / mib:8.1f} MiB")
    print(f"  output logits {output_bytes / mib:.1f} MiB, count map {count_bytes / mib:.1f} MiB")
    extra = peaks["ours"] - output_bytes - count_bytes
    print(f"  -> ours minus (output + count) / one window: {extra / peaks['window']:.2f} (target <= 1.0 + noise)")
    print(f"  -> official minus (output + count) / one window: "
          f"{(peaks['official'] - output_bytes - count_bytes) / peaks['window']:.2f}")


if __name__ == "__main__":
    main()
