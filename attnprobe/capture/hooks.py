"""Hook installation: where and how the post-softmax maps are read, and how everything is put back.

Two ways to read a map, chosen per module by `families.classify`:

* `softmax` (every timm module): while a capture is open, `torch.Tensor.softmax` and `torch.softmax` are wrapped
  (`torch.nn.functional.softmax` and `nn.Softmax` call the former). A forward pre-hook on each captured module
  pushes it on a per-thread stack and a forward hook pops it; a softmax over the last dimension computed while a
  captured module is the innermost one running is recorded for that module. This reads the map exactly where the
  module computes it, whatever the module does next (dropout, talking heads, cascaded heads, gating), and needs no
  knowledge of the module's code. Softmaxes elsewhere (other modules, other threads) pass through untouched.
* a submodule pre-hook (`attn_drop`): its input is the map. attnprobe's modules promise this; ConViT's GPSA uses it
  because its map is the gated, renormalised mix of two softmaxes.

`fused_attn` is switched off on every captured module that has it (so the explicit softmax path runs) and restored
on exit, also after an exception; the wrapped functions are restored when the last open capture closes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attnprobe.capture.families import AttentionLayer

__all__ = ["Installation", "install"]

#: `sink(layer, tensors)`: the raw tensors one call of `layer`'s module produced at its hook point.
Sink = Callable[[AttentionLayer, list[torch.Tensor]], None]


@dataclass(eq=False)
class _Frame:
    module: nn.Module
    layer: AttentionLayer
    sink: Sink
    outputs: list[torch.Tensor] = field(default_factory=list)


def _softmax_dim(args: tuple, kwargs: dict) -> Any:
    return kwargs["dim"] if "dim" in kwargs else (args[0] if args else None)


_SDPA_ARGS = ("attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


def _explicit_map(softmax: Callable[..., torch.Tensor], q: torch.Tensor, k: torch.Tensor, args: tuple,
                  kwargs: dict) -> torch.Tensor:
    """The post-softmax map `F.scaled_dot_product_attention(q, k, v, *args, **kwargs)` uses (dropout aside)."""
    opts = {**dict(zip(_SDPA_ARGS, args)), **kwargs}
    scale = opts.get("scale")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if opts.get("enable_gqa") and k.shape[-3] != q.shape[-3]:
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
    logits = (q @ k.transpose(-2, -1)) * scale  # (..., N_q, N_k)
    if opts.get("is_causal"):
        keep = torch.ones(logits.shape[-2:], dtype=torch.bool, device=logits.device).tril()
        logits = logits.masked_fill(~keep, float("-inf"))
    mask = opts.get("attn_mask")
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask
    return softmax(logits, -1)


class _SoftmaxTap:
    """Process-wide softmax wrappers, installed while at least one capture using them is open.

    `F.scaled_dot_product_attention` is wrapped too, as a safety net: a captured module that calls it although its
    `fused_attn` flag is off (no timm 1.0.31 module does) still yields its map, computed explicitly from the query and
    key beside the unchanged fused call (the module's output is untouched).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._local = threading.local()
        self._originals: dict[str, Any] = {}

    def stack(self) -> list[_Frame]:
        stack = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        return stack

    def _observe(self, out: Any, dim: Any) -> None:
        stack = getattr(self._local, "stack", None)
        if not stack or not isinstance(out, torch.Tensor) or not isinstance(dim, int) or out.ndim < 2:
            return
        if dim % out.ndim != out.ndim - 1:
            return  # NOTE: attention normalises over keys, the last dimension
        top = stack[-1].module
        for frame in reversed(stack):  # every capture observing the innermost module (usually one)
            if frame.module is not top:
                break
            frame.outputs.append(out)

    def acquire(self) -> None:
        with self._lock:
            if self._users == 0:
                self._patch()
            self._users += 1

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0:
                self._unpatch()

    def _patch(self) -> None:
        tensor_softmax, torch_softmax, sdpa = torch.Tensor.softmax, torch.softmax, F.scaled_dot_product_attention
        self._originals = {"tensor": tensor_softmax, "torch": torch_softmax, "sdpa": sdpa}
        observe, local = self._observe, self._local

        def tensor_method(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            out = tensor_softmax(self, *args, **kwargs)
            observe(out, _softmax_dim(args, kwargs))
            return out

        def torch_function(input: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            out = torch_softmax(input, *args, **kwargs)
            observe(out, _softmax_dim(args, kwargs))
            return out

        def fused(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args: Any,
                  **kwargs: Any) -> torch.Tensor:
            out = sdpa(query, key, value, *args, **kwargs)
            if getattr(local, "stack", None):  # NOTE: only inside a captured module
                observe(_explicit_map(torch_softmax, query, key, args, kwargs), -1)
            return out

        torch.Tensor.softmax = tensor_method  # type: ignore[method-assign]
        torch.softmax = torch_function  # type: ignore[assignment]
        F.scaled_dot_product_attention = fused  # type: ignore[assignment]

    def _unpatch(self) -> None:
        if "softmax" in torch.Tensor.__dict__:
            del torch.Tensor.softmax  # NOTE: the method lives on torch._C.TensorBase; this unshadows it
        torch.softmax = self._originals["torch"]  # type: ignore[assignment]
        F.scaled_dot_product_attention = self._originals["sdpa"]  # type: ignore[assignment]
        self._originals = {}


_TAP = _SoftmaxTap()


class Installation:
    """The hooks and flags one capture changed; `remove()` puts everything back (idempotent)."""

    def __init__(self) -> None:
        self.handles: list[Any] = []
        self.fused: list[tuple[nn.Module, Any]] = []
        self.frames: list[_Frame] = []
        self.tapped = False

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        for module, value in reversed(self.fused):
            module.fused_attn = value
        self.fused.clear()
        stack = _TAP.stack()
        stack[:] = [f for f in stack if not any(f is mine for mine in self.frames)]
        self.frames.clear()
        if self.tapped:
            self.tapped = False
            _TAP.release()


def _watch_softmax(inst: Installation, module: nn.Module, layer: AttentionLayer, sink: Sink) -> None:
    def enter(mod: nn.Module, args: tuple) -> None:
        frame = _Frame(mod, layer, sink)
        inst.frames.append(frame)
        _TAP.stack().append(frame)

    def leave(mod: nn.Module, args: tuple, output: Any) -> None:
        stack = _TAP.stack()
        frame = next((f for f in reversed(stack) if f.module is mod and f.sink is sink), None)
        if frame is None:
            return
        stack.remove(frame)
        inst.frames.remove(frame)
        if frame.outputs:
            sink(layer, frame.outputs)

    inst.handles.append(module.register_forward_pre_hook(enter))
    inst.handles.append(module.register_forward_hook(leave, always_call=True))


def install(model: nn.Module, layers: list[AttentionLayer], sink: Sink) -> Installation:
    """Switch fused attention off and hook every layer of `model`; undo with `Installation.remove()`."""
    modules = dict(model.named_modules())
    inst = Installation()
    try:
        for layer in layers:
            module = modules[layer.name]
            if hasattr(module, "fused_attn"):
                inst.fused.append((module, module.fused_attn))
                module.fused_attn = False
            if layer.hook_point == "softmax":
                if not inst.tapped:
                    _TAP.acquire()
                    inst.tapped = True
                _watch_softmax(inst, module, layer, sink)
            else:
                point = getattr(module, layer.hook_point)
                inst.handles.append(point.register_forward_pre_hook(
                    lambda mod, inputs, layer=layer: sink(layer, [inputs[0]])))
    except BaseException:
        inst.remove()
        raise
    return inst
