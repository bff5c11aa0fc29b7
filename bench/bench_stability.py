"""Benchmark: `attnprobe stability` vs two plain forward passes, and its peak memory vs the number of images.

    python bench/bench_stability.py                       # FAN-B-Hybrid, 64 images, batches of 8 (CPU: ~10 min)
    python bench/bench_stability.py --model vit_tiny_patch16_224 --n 16    # quick check

Timing: the same batches go through (a) two plain forward passes, clean then corrupted, fused attention on, no
capture; (b) the stability driver (`attnprobe.diagnostics.stability`: capture, per-layer reduction, results store,
maps kept for the first 2 images), which sends [clean; corrupted] through the model as one batch; and (c) one plain
pass over that same concatenated batch, which isolates the cost of capture + reduction from the batching effect.
The arms alternate batch by batch (the order rotates every batch), so load changes on a shared machine hit all of
them alike. Corruption generation is excluded: every corrupted image is made
before timing and the driver's `corrupt` is replaced by a lookup of those exact images. Image decoding and cropping
stay inside the driver's time (they are part of the command), so the ratio is conservative.

Memory: resident set size (RSS, from /proc/self/statm, sampled every 2 ms in a thread) above the level before the
first batch; the peak over the first quarter of the images is compared with the peak over all of them. A driver that
kept maps or per-image tensors would grow with the number of images; ours holds one layer's maps at a time. The
script re-executes itself with `MALLOC_MMAP_THRESHOLD_=131072` so that glibc returns large freed blocks to the OS
(its default adaptive threshold keeps them in the heap, which shows up as RSS creep unrelated to the program).

The model is FAN-B-Hybrid (`attnprobe.create_model("fan_b", pretrained=False)`, random weights: the cost does not
depend on them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch


class RssSampler:
    """Peak RSS (bytes) of this process while active, sampled in a background thread."""

    def __init__(self, interval_s: float = 0.002) -> None:
        self.interval_s = interval_s
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def __enter__(self) -> RssSampler:
        self.peak = self.rss()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval_s)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def make_images(root: Path, n: int) -> list[Path]:
    """n distinct real-photo crops (bundled scikit-image photos, shifted crops and flips) as PNG files."""
    from PIL import Image

    from attnprobe.data.samples import load_sample, sample_names

    paths = []
    photos = [np.asarray(load_sample(name)) for name in sample_names()]
    rng = np.random.default_rng(0)
    for i in range(n):
        arr = photos[i % len(photos)]
        h, w = arr.shape[:2]
        side = int(min(h, w) * rng.uniform(0.6, 1.0))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = arr[y:y + side, x:x + side]
        if i // len(photos) % 2:
            crop = crop[:, ::-1]
        p = root / f"img_{i:03d}.png"
        Image.fromarray(np.ascontiguousarray(crop)).save(p)
        paths.append(p)
    return paths


def build_model(name: str) -> tuple[torch.nn.Module, str]:
    import attnprobe

    torch.manual_seed(0)
    try:
        return attnprobe.create_model(name, pretrained=False), name
    except Exception as e:  # noqa: BLE001 - fall back as the issue allows, and say so
        print(f"could not build {name} ({e}); falling back to timm vit_base_patch16_224", file=sys.stderr)
        import timm

        return timm.create_model("vit_base_patch16_224").eval(), "vit_base_patch16_224 (fallback)"


def main() -> None:
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "131072"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="fan_b")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--corruption", default="gaussian_noise")
    ap.add_argument("--severity", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from attnprobe import diagnostics as D
    from attnprobe.data import corruptions as C
    from attnprobe.data.images import ImageSet, image_folder, model_input_u8, normalize_u8
    from attnprobe.store import ResultsStore
    from attnprobe.zoo import Preprocessing

    model, model_name = build_model(args.model)
    model.eval()
    pre = Preprocessing(input_size=224, crop_pct=0.9)
    entry = D.ModelEntry(name=model_name, model=model, preprocessing=pre)

    with tempfile.TemporaryDirectory() as tmp:
        tmp_p = Path(tmp)
        (tmp_p / "images").mkdir()
        make_images(tmp_p / "images", args.n)
        images = image_folder(tmp_p / "images")
        # inputs made before timing: clean crops and their corrupted copies (exactly what the driver would make)
        clean = {r.id: model_input_u8(r.load(), pre) for r in images.records}
        corrupted = {}
        for r in images.records:
            seed = C.image_seed(r.id, args.corruption, args.severity)
            corrupted[seed] = C.corrupt(clean[r.id], args.corruption, args.severity, seed=seed)
        real_corrupt = C.corrupt
        C.corrupt = lambda image, name, severity, seed: corrupted[seed]  # corruption generation excluded
        store = ResultsStore(tmp_p / "out")

        batches = [images.records[i:i + args.batch_size] for i in range(0, len(images), args.batch_size)]
        plain_t, stab_t, concat_t, peaks, after = [], [], [], [], []
        with torch.no_grad():  # warm-up (first-call allocations, lazy inits), not timed
            x = normalize_u8(np.stack([clean[r.id] for r in batches[0]]), pre)
            model(x)
            model(torch.cat([x, x]))
        # NOTE: the driver's first call also pays one-time costs (explicit-attention path at batch 2B, store schema);
        # warm it up on a scratch store so that both arms are timed warm.
        D.stability([entry], ImageSet(dataset=images.dataset, records=list(batches[0])), args.corruption,
                    [args.severity], store=ResultsStore(tmp_p / "warmup"), batch_size=args.batch_size, keep_maps=0)
        base_rss = RssSampler().rss()
        for bi, batch in enumerate(batches):
            xc = normalize_u8(np.stack([clean[r.id] for r in batch]), pre)
            xk = normalize_u8(np.stack([corrupted[C.image_seed(r.id, args.corruption, args.severity)]
                                        for r in batch]), pre)
            subset = ImageSet(dataset=images.dataset, records=list(batch))

            def plain() -> float:
                t0 = time.perf_counter()
                with torch.no_grad():
                    model(xc)
                    model(xk)
                return time.perf_counter() - t0

            def stab() -> float:
                t0 = time.perf_counter()
                with RssSampler() as mem:
                    D.stability([entry], subset, args.corruption, [args.severity], store=store,
                                batch_size=args.batch_size, keep_maps=2 if bi == 0 else 0)
                elapsed = time.perf_counter() - t0
                peaks.append(mem.peak - base_rss)
                after.append(mem.rss() - base_rss)
                return elapsed

            def concat() -> float:
                xx = torch.cat([xc, xk])
                t0 = time.perf_counter()
                with torch.no_grad():
                    model(xx)
                return time.perf_counter() - t0

            arms = [(plain_t, plain), (stab_t, stab), (concat_t, concat)]
            for k in range(3):
                out, fn = arms[(bi + k) % 3]
                out.append(fn())
            print(f"batch {bi + 1}/{len(batches)}: plain 2 passes {plain_t[-1]:.2f}s  stability {stab_t[-1]:.2f}s  "
                  f"plain [clean; corrupted] {concat_t[-1]:.2f}s  ratio {stab_t[-1] / plain_t[-1]:.3f}  "
                  f"peak RSS +{peaks[-1] / 2**20:.0f} MiB", file=sys.stderr)
        C.corrupt = real_corrupt
        n_rows = len(store.diagnostics())
        quarter = max(1, len(batches) // 4)
        result = {
            "model": model_name, "n_images": len(images), "batch_size": args.batch_size,
            "corruption": args.corruption, "severity": args.severity, "device": "cpu",
            "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__,
            "plain_two_passes_s": round(sum(plain_t), 3), "stability_s": round(sum(stab_t), 3),
            "ratio_total": round(sum(stab_t) / sum(plain_t), 4),
            "ratio_median_batch": round(statistics.median(s / p for s, p in zip(stab_t, plain_t)), 4),
            "plain_concatenated_pass_s": round(sum(concat_t), 3),
            "ratio_vs_concatenated_total": round(sum(stab_t) / sum(concat_t), 4),
            "ratio_vs_concatenated_median_batch": round(statistics.median(s / c for s, c in zip(stab_t, concat_t)),
                                                        4),
            "peak_rss_increase_mib_first_quarter": round(max(peaks[:quarter]) / 2**20, 1),
            "peak_rss_increase_mib_all": round(max(peaks) / 2**20, 1),
            "rss_after_batch_mib": [round(a / 2**20, 1) for a in after],
            "images_first_quarter": sum(len(b) for b in batches[:quarter]),
            "stored_values": n_rows,
        }
    print(json.dumps(result, indent=2))
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
