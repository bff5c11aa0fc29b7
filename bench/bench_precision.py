"""How far bf16 / fp16 autocast moves the numbers: prediction agreement with fp32, top-1 and corrupted-error changes.

    python bench/bench_precision.py                       # CPU: demo models + random-init FAN-T/B-Hybrid (minutes)
    python bench/bench_precision.py --device cuda --precision bf16,fp16 --n 1000 --fan-images 256

Two parts, measured in one run:

* the bundled demo ViTs (trained): top-1 on the synthetic validation images, clean and corrupted with the 15
  ImageNet-C corruptions x 5 severities (the demo's on-the-fly recipe, `--per-cell` images per cell), in fp32 and in
  each reduced precision: prediction agreement, clean top-1 change, and the change of the mean corrupted error (the
  quantity mCE averages);
* FAN-T-Hybrid and FAN-B-Hybrid with random weights (seeded; no released weights can be downloaded here) on the
  bundled photos and synthetic images upscaled to 224 px: prediction agreement with fp32 and the logits' relative
  error. Random weights give small logit margins, so their agreement is a pessimistic proxy, not a trained FAN's.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

DEMO = ("demo_vit_baseline", "demo_vit_tap", "demo_vit_adl", "demo_vit_tapadl")


def predict(model: torch.nn.Module, x: torch.Tensor, precision: str, device: torch.device,
            batch: int = 250) -> torch.Tensor:
    """Logits (float32, CPU) of `x` under `precision`."""
    from attnprobe.engine.execution import Execution

    ex = Execution(precision)
    ex.check(device)
    out = []
    with torch.inference_mode(), ex.autocast(device):
        for i in range(0, len(x), batch):
            out.append(model(x[i:i + batch].to(device)).float().cpu())
    return torch.cat(out)


def corrupted_sets(images: np.ndarray, per_cell: int, workers: int) -> dict[tuple[str, int], np.ndarray]:
    """The first `per_cell` images corrupted with every benchmark corruption and severity (seeded per image)."""
    from attnprobe.data import corruptions as C

    out = {}
    for name in C.benchmark_names():
        for s in C.SEVERITIES:
            out[(name, s)] = np.stack([C.corrupt(img, name, s, seed=C.image_seed(f"val/{i:06d}", name, s))
                                       for i, img in enumerate(images[:per_cell])])
    return out


def demo_part(args: argparse.Namespace, device: torch.device, precisions: list[str]) -> None:
    from attnprobe.data.images import normalize_u8
    from attnprobe.data.synthetic import SyntheticShapes
    from attnprobe.zoo import load_model

    val = SyntheticShapes("val", num_images=args.n)
    u8, y = val.tensors()
    u8 = u8.permute(0, 2, 3, 1).numpy()
    t0 = time.perf_counter()
    corr = corrupted_sets(u8, args.per_cell, 0)
    print(f"demo models: {args.n} clean synthetic images, {len(corr)} corrupted cells x {args.per_cell} images "
          f"(corrupted in {time.perf_counter() - t0:.0f} s)")
    print(f"{'model':20} {'prec':5} {'clean top-1':>11} {'Δ top-1':>8} {'agree clean':>11} "
          f"{'mean corr err':>13} {'Δ corr err':>10} {'agree corr':>10}")
    y_corr = y[:args.per_cell].repeat(len(corr))
    for name in args.models.split(","):
        lm = load_model(name, pretrained=True)
        model = lm.model.to(device).eval()
        x = normalize_u8(u8, lm.preprocessing)
        xc = normalize_u8(np.concatenate(list(corr.values())), lm.preprocessing)
        ref = predict(model, x, "fp32", device).argmax(1)
        ref_c = predict(model, xc, "fp32", device).argmax(1)
        acc0, err0 = (ref == y).float().mean().item(), (ref_c != y_corr).float().mean().item()
        print(f"{name:20} {'fp32':5} {100 * acc0:10.2f}% {'':>8} {'':>11} {100 * err0:12.2f}%")
        for p in precisions:
            pred = predict(model, x, p, device).argmax(1)
            pred_c = predict(model, xc, p, device).argmax(1)
            acc, err = (pred == y).float().mean().item(), (pred_c != y_corr).float().mean().item()
            print(f"{'':20} {p:5} {100 * acc:10.2f}% {100 * (acc - acc0):+7.2f}p "
                  f"{100 * (pred == ref).float().mean().item():10.2f}% {100 * err:12.2f}% "
                  f"{100 * (err - err0):+9.2f}p {100 * (pred_c == ref_c).float().mean().item():9.2f}%")


def fan_inputs(n_synthetic: int) -> torch.Tensor:
    """The bundled photos and upscaled synthetic images, resized/cropped to 224 and ImageNet-normalised."""
    from attnprobe.data.images import model_input_u8, normalize_u8
    from attnprobe.data.samples import load_sample, sample_names
    from attnprobe.data.synthetic import SyntheticShapes
    from attnprobe.zoo import Preprocessing

    pre = Preprocessing(input_size=224, crop_pct=1.0)
    imgs = [load_sample(n) for n in sample_names()]
    val = SyntheticShapes("val", num_images=n_synthetic, size=96)
    imgs += [val.image(i) for i in range(n_synthetic)]
    return normalize_u8(np.stack([model_input_u8(im, pre) for im in imgs]), pre)


def fan_part(args: argparse.Namespace, device: torch.device, precisions: list[str]) -> None:
    import timm

    import attnprobe.archs  # noqa: F401

    x = fan_inputs(args.fan_images)
    print(f"\nrandom-init FANs (seed 0): {len(x)} images (4 bundled photos + {args.fan_images} synthetic, 224 px)")
    print(f"{'model':24} {'prec':5} {'agree top-1':>11} {'top-5 overlap':>13} {'max |Δlogit| / std':>19}")
    for arch in args.fans.split(","):
        torch.manual_seed(0)
        model = timm.create_model(arch, num_classes=1000).eval().to(device)
        ref = predict(model, x, "fp32", device, batch=args.fan_batch)
        top5 = ref.topk(5, 1).indices
        for p in precisions:
            out = predict(model, x, p, device, batch=args.fan_batch)
            agree = (out.argmax(1) == ref.argmax(1)).float().mean().item()
            overlap = np.mean([len(set(a.tolist()) & set(b.tolist())) / 5
                               for a, b in zip(out.topk(5, 1).indices, top5)])
            rel = ((out - ref).abs().amax(1) / ref.std(1)).median().item()
            print(f"{arch:24} {p:5} {100 * agree:10.2f}% {100 * overlap:12.2f}% {rel:19.4f}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", default="bf16", help="comma-separated reduced precisions to compare with fp32")
    ap.add_argument("--n", type=int, default=1000, help="clean synthetic images for the demo models")
    ap.add_argument("--per-cell", type=int, default=40, help="corrupted images per corruption x severity")
    ap.add_argument("--models", default=",".join(DEMO), help="demo models (comma-separated)")
    ap.add_argument("--fans", default="fan_tiny_8_p4_hybrid,fan_base_16_p4_hybrid")
    ap.add_argument("--fan-images", type=int, default=60, help="synthetic images for the FANs (plus 4 photos)")
    ap.add_argument("--fan-batch", type=int, default=16)
    ap.add_argument("--skip-demo", action="store_true")
    ap.add_argument("--skip-fan", action="store_true")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} (bf16/fp16 autocast on a "
          f"CPU without native bf16/fp16 is emulated and slow; correct, not fast)")
    if not args.skip_demo:
        demo_part(args, device, precisions)
    if not args.skip_fan:
        fan_part(args, device, precisions)


if __name__ == "__main__":
    main()
