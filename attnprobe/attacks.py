"""Adversarial attacks for robustness evaluation: L-inf PGD as used by RVT and the TAP/ADL supplementary (PGD-5).

The attack works in pixel space, images in [0, 1], and normalises inside the forward pass. That is the same
attack as one run in the model's normalised input space with a per-channel budget `eps / std` and step
`step / std`, clamped to the normalised images of the pixel range `[(0 - mean) / std, (1 - mean) / std]`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PGD5", "pgd", "normalize"]

#: PGD-5 settings of the TAP/ADL supplementary (Table I), following RVT: L-inf, pixel units.
PGD5 = {"eps": 1 / 255, "step": 0.5 / 255, "steps": 5}


def normalize(x: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor
              ) -> torch.Tensor:
    """Differentiable per-channel `(x - mean) / std` for (B, C, H, W) pixels in [0, 1]."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mean: Sequence[float] | torch.Tensor,
        std: Sequence[float] | torch.Tensor, eps: float = 1 / 255, step: float = 0.5 / 255, steps: int = 5,
        seed: int | Sequence[int] = 0, random_start: bool = True) -> torch.Tensor:
    """Untargeted L-inf projected gradient descent on the cross-entropy loss.

    The model runs in eval mode and its parameters are frozen during the attack (both restored afterwards).
    Each step: `delta += step * sign(grad)`, project `delta` onto `[-eps, eps]`, then clamp `x + delta` to
    `[0, 1]`. The random start is uniform in the eps-ball and drawn from CPU generators, so the same seed gives
    the same start on any device; per-sample seeds make a sample's attack independent of its batch.

    Args:
        model: classifier that takes *normalised* images and returns logits.
        x: (B, C, H, W) clean images in pixel space [0, 1].
        y: (B,) true labels.
        mean: per-channel normalisation mean of the model.
        std: per-channel normalisation std of the model.
        eps: L-inf budget in pixel units (1/255 for PGD-5).
        step: step size in pixel units (0.5/255 for PGD-5).
        steps: number of gradient steps (5 for PGD-5).
        seed: seed of the random start: one int for the batch, or one seed per sample.
        random_start: start from a uniform random point in the ball (True for PGD-5) or from `x`.

    Returns:
        (B, C, H, W) adversarial images in pixel space, detached, with `|x_adv - x| <= eps` and values in [0, 1].
    """
    if x.dim() != 4:
        raise ValueError(f"pgd expects (B, C, H, W) images, got shape {tuple(x.shape)}")
    x = x.detach()
    if random_start:
        if isinstance(seed, int):
            gen = torch.Generator(device="cpu").manual_seed(seed)
            noise = torch.rand(x.shape, generator=gen, dtype=torch.float32)
        else:
            seeds = [int(s) for s in seed]
            if len(seeds) != x.shape[0]:
                raise ValueError(f"got {len(seeds)} seeds for {x.shape[0]} images")
            noise = torch.stack([torch.rand(x.shape[1:], generator=torch.Generator(device="cpu").manual_seed(s))
                                 for s in seeds])
        delta = (noise.to(device=x.device, dtype=x.dtype) * 2 - 1) * eps
    else:
        delta = torch.zeros_like(x)
    delta = (x + delta).clamp(0, 1) - x

    was_training = model.training
    frozen = [p for p in model.parameters() if p.requires_grad]
    model.eval()
    for p in frozen:  # only the input needs a gradient; saves the weight-gradient bookkeeping
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            for _ in range(int(steps)):
                delta.requires_grad_(True)
                loss = F.cross_entropy(model(normalize(x + delta, mean, std)), y, reduction="sum")
                (grad,) = torch.autograd.grad(loss, delta)
                delta = (delta.detach() + step * grad.sign()).clamp(-eps, eps)
                delta = (x + delta).clamp(0, 1) - x
    finally:
        model.train(was_training)
        for p in frozen:
            p.requires_grad_(True)
    return (x + delta).detach()
