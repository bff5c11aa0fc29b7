"""Speed of the torch corruption engine against the per-image reference (`imagecorruptions`), in one run.

For each corruption at one severity, interleaved (reference, then engine, each round), best of ``--repeats``
rounds, or of more rounds (up to 50) until that corruption has been timed ``--min-seconds`` (2 s):

* reference: `imagecorruptions.corrupt` on each image in turn (through `attnprobe.data.corruptions.corrupt`,
  which only seeds NumPy around the call), HWC uint8 NumPy images;
* engine: `attnprobe.corruptions.corrupt` on the whole batch (B, 3, H, W) uint8, one seed per image.

Prints ms per image for both and their ratio, then the sums over the 15 benchmark corruptions. ``--size`` is
``224`` (the default; 32 images) or ``HxW`` such as ``1024x2048`` (use ``--images 2`` there: the reference takes
seconds per image). On a GPU (``--device cuda``) the engine runs there (the reference stays on the CPU) and
``--model fan_b`` adds a forward pass of that model (random weights, same batch) for comparison, images/s.

Usage::

    python bench/bench_corruptions.py [--size 224] [--images 32] [--severity 3] [--repeats 2] [--min-seconds 2]
                                      [--threads 2] [--only glass_blur,snow] [--extra] [--device cpu|cuda]
                                      [--model fan_b]

Timings on a shared machine are noisy; the interleaving keeps the ratios fair.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import warnings

import numpy as np
import torch


def _photos(n: int, h: int, w: int) -> np.ndarray:
    """n real photographs (scikit-image), resized and centre-cropped to h x w, uint8 (n, h, w, 3)."""
    import skimage.data
    from PIL import Image

    names = ["astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field"]
    out = []
    for i in range(n):
        img = Image.fromarray(getattr(skimage.data, names[i % len(names)])()).convert("RGB")
        scale = max(h / img.height, w / img.width)
        img = img.resize((max(w, round(img.width * scale)), max(h, round(img.height * scale))), Image.BILINEAR)
        left, top = (img.width - w) // 2, (img.height - h) // 2
        arr = np.asarray(img.crop((left, top, left + w, top + h)))
        out.append(np.roll(arr, i * 7, axis=1))  # NOTE: shift repeats so no two images are equal
    return np.stack(out)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="224", help="224 or HxW, e.g. 1024x2048")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--severity", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="at least this many rounds (best of them)")
    parser.add_argument("--min-seconds", type=float, default=2.0,
                        help="more rounds (up to 50) until a corruption has been timed this long")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default="", help="comma-separated corruption names")
    parser.add_argument("--extra", action="store_true", help="also the 4 extra corruptions")
    parser.add_argument("--recipe", default="imagenet-c")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-reference", action="store_true", help="engine only (GPU runs)")
    parser.add_argument("--model", default="", help="zoo name of a model to time a forward pass of (GPU)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    from attnprobe.corruptions import corrupt
    from attnprobe.data import corruptions as ref
    from attnprobe.data.corruptions import benchmark_names, extra_names

    h, w = (224, 224) if "x" not in args.size else (int(v) for v in args.size.split("x"))
    names = benchmark_names() + (extra_names() if args.extra else [])
    if args.only:
        names = [n for n in args.only.split(",") if n]
    photos = _photos(args.images, h, w)
    batch = torch.from_numpy(photos).permute(0, 3, 1, 2).contiguous().to(args.device)
    seeds = [ref.image_seed(f"img{i}", "bench", args.severity) for i in range(args.images)]
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads, "
          f"{args.images} images of {w}x{h}, severity {args.severity}, recipe {args.recipe}, device {args.device}")
    print(f"{'corruption':20s} {'reference ms/img':>17s} {'engine ms/img':>14s} {'ratio':>7s}")
    total_ref = total_eng = 0.0
    bench = set(benchmark_names())
    for name in names:
        corrupt(batch[:2], name, args.severity, seed=seeds[:2], recipe=args.recipe)  # warm caches (and Numba's JIT)
        if not args.no_reference:
            ref.corrupt(photos[0], name, args.severity, seed=0, backend="reference")
        best_ref = best_eng = float("inf")
        started, rounds = time.perf_counter(), 0
        # NOTE: at least --repeats rounds, more while under --min-seconds: the fast corruptions take a few ms a
        # round, where one scheduling hiccup of this shared machine would decide the ratio of a best of two
        while rounds < args.repeats or (time.perf_counter() - started < args.min_seconds and rounds < 50):
            rounds += 1
            if not args.no_reference:
                t0 = time.perf_counter()
                for img, s in zip(photos, seeds):
                    ref.corrupt(img, name, args.severity, seed=s, backend="reference")
                best_ref = min(best_ref, time.perf_counter() - t0)
            _sync(args.device)
            t0 = time.perf_counter()
            corrupt(batch, name, args.severity, seed=seeds, recipe=args.recipe)
            _sync(args.device)
            best_eng = min(best_eng, time.perf_counter() - t0)
        ms_ref, ms_eng = best_ref / args.images * 1000, best_eng / args.images * 1000
        if name in bench:
            total_ref += ms_ref
            total_eng += ms_eng
        ratio = f"{ms_ref / ms_eng:6.1f}x" if not args.no_reference else "   -"
        print(f"{name:20s} {ms_ref:17.2f} {ms_eng:14.2f} {ratio:>7s}   ({1000 / ms_eng:8.0f} img/s, best of {rounds})",
              flush=True)
    if len(bench & set(names)) == 15:
        ratio = f"{total_ref / total_eng:6.1f}x" if not args.no_reference else "   -"
        print(f"{'sum of the 15':20s} {total_ref:17.2f} {total_eng:14.2f} {ratio:>7s}")
    if args.model:
        from attnprobe import create_model

        model = create_model(args.model).to(args.device).eval()
        x = torch.randn(args.images, 3, h, w, device=args.device)
        with torch.inference_mode():
            model(x)
            _sync(args.device)
            best = float("inf")
            for _ in range(max(args.repeats, 3)):
                t0 = time.perf_counter()
                model(x)
                _sync(args.device)
                best = min(best, time.perf_counter() - t0)
        print(f"{args.model + ' forward':20s} {'':17s} {best / args.images * 1000:14.2f}          "
              f"({args.images / best:8.0f} img/s)")


if __name__ == "__main__":
    main()
