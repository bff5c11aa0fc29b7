"""Speed of TAP and of our FAN-B-Hybrid on CPU, in one interleaved run (best of N).

Measures, with random weights, eval mode and ``torch.inference_mode()``:

1. TAP module alone on a FAN-B token grid (B, 14, 14, 448), K = 4: ours (shifted sums) vs the official
   formulation (nn.Unfold with dilation, mean of the 9 taps; written here from the algorithm), outputs compared.
2. Whole models, batch ``--batch`` at 224 px:
   - ours FAN-B-Hybrid (fused attention, the default)
   - ours FAN-B-Hybrid with explicit softmax attention (the official formulation of attention)
   - ours TAP-FAN-B-Hybrid K=4
   - with ``--official-tap``: ours TAP-FAN-B-Hybrid K=4 with TAP swapped for the unfold formulation and explicit
     softmax attention (the official formulation of the whole TAP-FAN forward)
   Outputs of the two attention formulations (and of the two TAP models) are asserted equal (atol 1e-4).

Usage::

    python bench/bench_tap.py [--batch 8] [--repeats 3] [--threads N] [--official-tap]

Wall-clock timings on a shared machine are noisy; the interleaving and best-of-N keep the ratios fair.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

import torch
from torch import nn

from attnprobe.archs import build_variant, set_fused_attn
from attnprobe.archs.tap import TokenAwarePooling, tap_reference_unfold


class UnfoldTAP(nn.Module):
    """Token-layout wrapper that runs the unfold (official) formulation with the weights of a TokenAwarePooling."""

    def __init__(self, tap: TokenAwarePooling) -> None:
        super().__init__()
        self.tap = tap

    def forward(self, x: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
        B, N, C = x.shape
        H, W = grid_size
        fmap = x.transpose(1, 2).reshape(B, C, H, W)  # (B, C, H, W)
        return tap_reference_unfold(self.tap, fmap).flatten(2).transpose(1, 2)  # (B, N, C)


def interleaved_best(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Run every function once per round, ``repeats`` rounds; return the best wall time of each (seconds)."""
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):  # the first round doubles as warm-up: only the best time counts
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the best time is kept")
    parser.add_argument("--official-tap", action="store_true",
                        help="also time TAP-FAN-B-Hybrid in the official formulation (unfold TAP, explicit softmax)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--tap-iters", type=int, default=10, help="TAP calls per timed TAP measurement")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cpu = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu}, "
          f"batch {args.batch}, best of {args.repeats} interleaved rounds, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")

    # 1. TAP module alone
    tap = TokenAwarePooling(448, 4).eval()
    with torch.no_grad():
        for p in tap.parameters():
            p.normal_(0, 0.1)
    tokens = torch.randn(args.batch, 14 * 14, 448)
    fmap = tokens.transpose(1, 2).reshape(args.batch, 448, 14, 14).contiguous()
    unfold_tap = UnfoldTAP(tap)
    with torch.inference_mode():
        ours = tap(tokens, (14, 14))
        ref = unfold_tap(tokens, (14, 14))
        diff = (ours - ref).abs().max().item()
        assert diff < 1e-5, f"TAP outputs differ by {diff}"
        map_diff = (tap.forward_map(fmap) - tap_reference_unfold(tap, fmap)).abs().max().item()
        assert map_diff < 1e-5, f"TAP map outputs differ by {map_diff}"

        def loop(fn: Callable[[], object]) -> Callable[[], None]:
            def run() -> None:
                for _ in range(args.tap_iters):
                    fn()
            return run

        t = interleaved_best({
            "ours": loop(lambda: tap(tokens, (14, 14))),
            "unfold": loop(lambda: unfold_tap(tokens, (14, 14))),
        }, args.repeats)
    ms = {k: 1000 * v / args.tap_iters for k, v in t.items()}
    print("\n[TAP module, K=4, tokens (B, 196, 448)]  max |ours - unfold| = "
          f"{diff:.2e} (tokens), {map_diff:.2e} (maps)")
    print(f"  ours (shifted sums)   {ms['ours']:8.3f} ms/call")
    print(f"  unfold (official alg) {ms['unfold']:8.3f} ms/call   unfold / ours = {ms['unfold'] / ms['ours']:.2f}x")

    # 2. whole models
    fan = build_variant("fan_base_16_p4_hybrid").eval()
    fan_explicit = build_variant("fan_base_16_p4_hybrid").eval()
    fan_explicit.load_state_dict(fan.state_dict())
    set_fused_attn(fan_explicit, False)
    tap_fan = build_variant("tap_fan_base_16_p4_hybrid", num_scales=4).eval()
    tap_fan.load_state_dict(fan.state_dict(), strict=False)  # same weights outside TAP: only TAP differs
    with torch.no_grad():  # random predictor weights so that every branch gets weight
        for blk in tap_fan.blocks:
            for p in blk.dilation_predictor.parameters():
                p.normal_(0, 0.05)
    x = torch.randn(args.batch, 3, 224, 224)
    models = {"fan": fan, "fan_explicit": fan_explicit, "tap_fan": tap_fan}
    if args.official_tap:
        tap_fan_unfold = build_variant("tap_fan_base_16_p4_hybrid", num_scales=4).eval()
        tap_fan_unfold.load_state_dict(tap_fan.state_dict())
        for blk in tap_fan_unfold.blocks:
            blk.dilation_predictor = UnfoldTAP(blk.dilation_predictor)
        set_fused_attn(tap_fan_unfold, False)
        models["tap_fan_unfold"] = tap_fan_unfold
    with torch.inference_mode():
        d_attn = (fan(x) - fan_explicit(x)).abs().max().item()
        assert d_attn < 1e-4, f"fused vs explicit attention logits differ by {d_attn}"
        d_tap = float("nan")
        if args.official_tap:
            d_tap = (tap_fan(x) - models["tap_fan_unfold"](x)).abs().max().item()
            assert d_tap < 1e-4, f"TAP vs unfold-TAP logits differ by {d_tap}"
        t = interleaved_best({k: (lambda m=m: m(x)) for k, m in models.items()}, args.repeats)
    ips = {k: args.batch / v for k, v in t.items()}
    print(f"\n[models, 224 px, batch {args.batch}]  max |logit diff|: fused vs explicit {d_attn:.2e}, "
          f"TAP vs unfold-TAP {d_tap:.2e}")
    rows = [
        ("FAN-B-Hybrid (ours, fused attention)", "fan"),
        ("FAN-B-Hybrid (ours, explicit softmax = official formulation)", "fan_explicit"),
        ("TAP-FAN-B-Hybrid K=4 (ours)", "tap_fan"),
        ("TAP-FAN-B-Hybrid K=4 (unfold TAP + explicit softmax = official)", "tap_fan_unfold"),
    ]
    for label, key in rows:
        if key in t:
            print(f"  {label:<62} {ips[key]:7.2f} img/s  ({1000 * t[key]:8.1f} ms/batch)")
    print("\nratios of time per batch:")
    ratio = t["tap_fan"] / t["fan"]
    print(f"  ours TAP-FAN-B-Hybrid / ours FAN-B-Hybrid                     {ratio:.3f}  (goal <= 1.10)")
    if "tap_fan_unfold" in t:
        print(f"  official-formulation TAP-FAN-B-Hybrid / FAN-B-Hybrid          "
              f"{t['tap_fan_unfold'] / t['fan_explicit']:.3f}  (unfold TAP, explicit softmax in both)")
    print(f"  ours FAN-B-Hybrid fused / explicit softmax                    {t['fan'] / t['fan_explicit']:.3f}  "
          "(<= 1 means ours is no slower)")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (a busy machine inflates multi-thread timings; "
          "--threads 1 is steadier there)")


if __name__ == "__main__":
    main()
