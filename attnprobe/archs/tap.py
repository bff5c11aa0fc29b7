"""Token-aware Average Pooling (TAP), usable on any token grid.

TAP (Guo et al., ICCV 2023, Sec. 3.2) replaces each token by a per-token weighted mix of K average poolings of its
neighbourhood, computed on the block input before the token-attention branch:

    out[p] = sum_k  w_k[p] * pool_k(x)[p],        w[p] = softmax_k(predictor(x)[p])

    branch 0      identity (no pooling)
    branch d > 0  3x3 average with dilation d and zero padding d; the zeros count in the mean, i.e. the sum of the
                  up to 9 in-grid neighbours x[p + d*(i, j)], i, j in {-1, 0, 1}, divided by 9 everywhere
    predictor     conv3x3(C -> K, no bias) -> BatchNorm2d(K) -> conv3x3(K -> K, no bias), softmax over K

Usage::

    tap = TokenAwarePooling(dim=384, num_scales=4)
    y = tap(tokens, (H, W))        # tokens (B, N=H*W, C) -> (B, N, C), patch tokens only (no class token)
    y = tap.forward_map(x)         # x (B, C, H, W) -> (B, C, H, W)
    w = tap.last_weights           # (B, H, W, K) branch weights of the last call (None before the first)

With ``num_scales=1`` TAP is the identity (its only branch is the identity, with weight 1).

Implementation note: the official code stacks ``nn.Unfold`` copies (nine copies of every token map per branch).
Here each dilated 3x3 box sum is two separable passes of shifted in-place adds on the channels-last token grid
(no padding copy, no unfold, no permutes of the big tensor), and the K branches are folded into one running sum.
The result equals the unfold formulation up to float rounding (the order of the nine additions differs).

State-dict names follow the official checkpoints: the module holds ``proj.{0,1,2}`` and is registered in blocks
under the attribute name ``dilation_predictor`` (``blocks.3.dilation_predictor.proj.0.weight``).
"""

from typing import Optional, Tuple

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

__all__ = ["TokenAwarePooling", "dilated_box_sum", "tap_reference_unfold", "check_grid"]


def _shift_sum(x: torch.Tensor, dim: int, d: int) -> torch.Tensor:
    """Sum of x and its two neighbours at distance d along ``dim`` (zeros outside), as a new tensor."""
    out = x.clone()
    size = x.shape[dim]
    if d < size:
        out.narrow(dim, d, size - d).add_(x.narrow(dim, 0, size - d))
        out.narrow(dim, 0, size - d).add_(x.narrow(dim, d, size - d))
    return out


# NOTE: torch.fx treats the two functions below as leaves (their shape-dependent branches run at call time).
@torch.fx.wrap
def dilated_box_sum(x: torch.Tensor, dilation: int, dims: Tuple[int, int] = (1, 2)) -> torch.Tensor:
    """3x3 box sum with the given dilation and zero padding, on the two grid axes ``dims`` of ``x``.

    Args:
        x: a tensor whose ``dims`` are the (H, W) grid axes, e.g. (B, H, W, C) with ``dims=(1, 2)``.
        dilation: distance between the taps (>= 1).
        dims: the row and column axes.

    Returns:
        A tensor shaped like ``x``; divide by 9 for the count-include-pad average.
    """
    return _shift_sum(_shift_sum(x, dims[1], dilation), dims[0], dilation)


@torch.fx.wrap
def check_grid(num_tokens: int, grid_size: Tuple[int, int]) -> None:
    """Raise ValueError unless the (H, W) grid holds exactly ``num_tokens`` tokens."""
    if grid_size[0] * grid_size[1] != num_tokens:
        raise ValueError(f"grid {grid_size[0]}x{grid_size[1]} does not match {num_tokens} tokens")


def _is_tracing() -> bool:
    """True while torch.fx traces (a traced graph cannot keep Python-side state such as ``last_weights``)."""
    trace = torch.fx._symbolic_trace
    return getattr(trace, "is_fx_symbolic_tracing", trace.is_fx_tracing)()


class TokenAwarePooling(nn.Module):
    """Token-aware Average Pooling over a 2-D token grid (see the module docstring).

    Args:
        dim: channels C of the tokens.
        num_scales: number of branches K (dilations 0..K-1).
        temperature: softmax temperature of the dilation predictor (the official code uses 1).
    """

    def __init__(self, dim: int, num_scales: int, temperature: float = 1.0) -> None:
        super().__init__()
        if num_scales < 1:
            raise ValueError(f"num_scales must be >= 1, got {num_scales}")
        self.dim = dim
        self.num_scales = num_scales
        self.temperature = temperature
        self.proj = nn.Sequential(
            nn.Conv2d(dim, num_scales, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(num_scales),
            nn.Conv2d(num_scales, num_scales, kernel_size=3, padding=1, bias=False),
        )
        self.last_weights: Optional[torch.Tensor] = None

    def predict_weights(self, grid: torch.Tensor) -> torch.Tensor:
        """Branch weights for a channels-last grid (B, H, W, C) -> (B, H, W, K), summing to 1 over K."""
        logits = self.proj(grid.permute(0, 3, 1, 2))  # (B, K, H, W), channels-last memory
        return (logits.permute(0, 2, 3, 1) / self.temperature).softmax(dim=-1)  # (B, H, W, K)

    def forward_grid(self, grid: torch.Tensor) -> torch.Tensor:
        """TAP on a channels-last grid (B, H, W, C) -> (B, H, W, C)."""
        weights = self.predict_weights(grid)  # (B, H, W, K)
        if not torch.jit.is_scripting():  # noqa: SIM102 - TorchScript only skips a bare is_scripting() test
            if not _is_tracing():
                self.last_weights = weights.detach()
        if self.num_scales == 1:
            return grid * weights  # weights are all 1; keeps the autograd path of the predictor
        out = grid * weights[..., 0:1]
        pool_weights = weights[..., 1:] * (1.0 / 9.0)  # (B, H, W, K-1): the 1/9 of the mean folded into w_d
        for d in range(1, self.num_scales):
            # NOTE: each branch costs one copy, 4 in-place adds and 1 fused multiply-add over the grid. The result is
            # reassigned so that a torch.fx graph sees the data flow of the in-place op.
            out = out.addcmul_(dilated_box_sum(grid, d), pool_weights[..., d - 1 : d])
        return out

    def forward(self, x: torch.Tensor, grid_size: Tuple[int, int]) -> torch.Tensor:
        """TAP on patch tokens.

        Args:
            x: tokens (B, N, C) in row-major grid order, N = H * W (no class token).
            grid_size: (H, W).

        Returns:
            Pooled tokens (B, N, C).
        """
        B, N, C = x.shape
        check_grid(N, grid_size)
        return self.forward_grid(x.reshape(B, grid_size[0], grid_size[1], C)).reshape(B, N, C)  # (B, N, C)

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        """TAP on a feature map (B, C, H, W) -> (B, C, H, W)."""
        return self.forward_grid(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_scales={self.num_scales}"


def tap_reference_unfold(tap: TokenAwarePooling, x: torch.Tensor) -> torch.Tensor:
    """The official formulation of TAP, for tests and benchmarks: nn.Unfold per branch, mean of the 9 taps.

    Args:
        tap: a TokenAwarePooling whose predictor weights are used.
        x: feature map (B, C, H, W).

    Returns:
        (B, C, H, W), equal to ``tap.forward_map(x)`` up to float rounding.
    """
    B, C, H, W = x.shape
    mask = F.softmax(tap.proj(x).permute(0, 2, 3, 1).unsqueeze(1) / tap.temperature, dim=-1)  # (B, 1, H, W, K)
    branches = [x.unsqueeze(-1)]
    for d in range(1, tap.num_scales):
        cols = F.unfold(x, kernel_size=3, dilation=d, padding=d, stride=1)  # (B, C*9, H*W)
        branches.append(cols.reshape(B, C, 9, H, W).mean(dim=2).unsqueeze(-1))
    return (torch.cat(branches, dim=-1) * mask).sum(dim=-1)  # (B, C, H, W)
