"""Segmentation data path at Cityscapes size: reading + test pipeline per image, and the mIoU accumulation.

Writes a few synthetic 2048 x 1024 street scenes as a Cityscapes tree in a temporary folder, then times, in one
interleaved run: `ds[i]` with output "normalized" (float32 input, the default) and "uint8" (normalise on the device),
`batch_areas` on a batch of 2048 x 1024 predictions, and (optionally) on-the-fly corruption of one image.

    .venv/bin/python bench/bench_seg_data.py [--images 6] [--repeats 3] [--corruptions gaussian_noise,fog]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    from attnprobe.data.cityscapes import CityscapesDataset, OnTheFlyCityscapesC
    from attnprobe.data.synthetic_seg import write_cityscapes_tree
    from attnprobe.segmentation import batch_areas

    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--corruptions", default="gaussian_noise")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        root = write_cityscapes_tree(Path(tmp) / "cs", num_train=0, num_val=args.images, height=1024, width=2048)
        print(f"wrote {args.images} synthetic 2048x1024 scenes in {time.perf_counter() - t0:.1f} s")
        norm = CityscapesDataset(root)
        u8 = CityscapesDataset(root, output="uint8")
        n = len(norm)
        t_norm = _best(lambda: [norm[i] for i in range(n)], args.repeats) / n
        t_u8 = _best(lambda: [u8[i] for i in range(n)], args.repeats) / n
        print(f"ds[i], output='normalized': {t_norm * 1e3:.1f} ms/image  (float32 input, 25 MB)")
        print(f"ds[i], output='uint8':      {t_u8 * 1e3:.1f} ms/image  (uint8 input, 6 MB; normalise on device)")
        print(f"  ratio normalized / uint8: {t_norm / t_u8:.2f}x")
        g = torch.Generator().manual_seed(0)
        pred = torch.randint(0, 19, (4, 1024, 2048), generator=g)
        label = torch.randint(0, 20, (4, 1024, 2048), generator=g).to(torch.uint8)
        t_area = _best(lambda: batch_areas(pred, label), args.repeats) / 4
        print(f"batch_areas (CPU, 1 thread): {t_area * 1e3:.1f} ms/image = {t_area / t_norm:.2f}x of reading one image")
        for name in filter(None, args.corruptions.split(",")):
            otf = OnTheFlyCityscapesC(root, name, 3, output="uint8")
            t_c = _best(lambda ds=otf: ds[0], 1)
            print(f"on-the-fly {name} s3 (imagecorruptions, per image): {t_c:.2f} s/image = {t_c / t_u8:.0f}x reading")


if __name__ == "__main__":
    main()
