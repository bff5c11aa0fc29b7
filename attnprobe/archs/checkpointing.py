"""Activation (gradient) checkpointing helpers used by ``set_grad_checkpointing`` of our models.

Checkpointed blocks drop their activations in the forward pass and recompute them in the backward pass: the same
outputs and gradients for less memory. Only used in training with autograd; TorchScript skips these paths.
"""

from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as _checkpoint

__all__ = ["checkpoint", "checkpoint_seq"]


def checkpoint(module: nn.Module, *args: Any) -> Any:
    """``module(*args)`` with its activations recomputed in the backward pass (non-reentrant checkpointing)."""
    return _checkpoint(module, *args, use_reentrant=False)


def checkpoint_seq(blocks: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """Run a sequence of single-input blocks, checkpointing each one."""
    for block in blocks:
        x = checkpoint(block, x)
    return x
