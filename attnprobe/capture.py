"""Attention capture: a context manager that records post-softmax token attention during forward passes.

    with AttentionCapture(model) as cap:
        logits = model(x)
    cap.maps        # list, in depth order, of (B, H, N, N) token self-attention maps of that forward pass
    cap.cls_maps    # class-attention maps (FAN / CaiT class-attention blocks), (B, H, 1, N + 1)

One mechanism for every family. An attention module is found when it

* declares `attention_kind` (`"token"` or `"class"`; attnprobe's FAN / TAP-FAN / RVT modules do; any other value,
  e.g. FAN's sigmoid channel attention, is not captured), or
* is a timm-style attention module with `fused_attn` and `attn_drop` (ViT / DeiT `Attention`, Swin
  `WindowAttention`, CaiT `ClassAttn`, ...), or CaiT's `TalkingHeadAttn` (no fused path; its map is taken after the
  softmax and before the talking-heads mixing, so rows still sum to 1). XCiT's `XCA` is channel attention and skipped.

While capturing, `fused_attn` is switched off (so the explicit softmax path runs) and a pre-hook on `attn_drop` reads
its input, which is the post-softmax map. Everything is restored on exit, also after an exception. The explicit path
computes the same function as the fused one, so the logits agree to float rounding (about 1e-6). Maps are read
before attention dropout (the same thing in eval mode).

Maps are reset at the start of every call of `model` (its `__call__`), so `cap.maps` always holds the most recent
forward pass and memory does not grow over a long run. For long runs, pass `reduce=` (called once per captured map,
right when the layer runs, with a `LayerMap`) and `keep_maps=False`: each map is reduced and released immediately,
so at most one layer's map is alive at a time; the reductions of the last pass are in `cap.reduced`.

Windowed attention (Swin): a layer's map is (B * nW, H, n, n), one map per local window, windows of one image
consecutive (timm's `window_partition` order; shifted-window layers see the cyclically shifted image).
`cap.windows[i]` is nW for `cap.maps[i]` (1 for global attention) and `cap.per_image(i)` reshapes to
(B, nW, H, n, n). The metrics treat each window as an image part and average over the windows of an image
(`attnprobe.metrics.window_mean`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch
from torch import nn

from attnprobe.errors import UserError

__all__ = ["AttentionCapture", "AttentionLayer", "LayerMap", "find_attention_layers"]

# timm classes that look like token attention but are not (channel attention), or need a special hook point.
_NOT_TOKEN_ATTENTION = frozenset({"XCA"})
_CLASS_ATTENTION = frozenset({"ClassAttn"})
_TALKING_HEADS = frozenset({"TalkingHeadAttn"})


@dataclass(frozen=True)
class AttentionLayer:
    """One attention module as the capture sees it.

    Attributes:
        name: qualified module name in the model (e.g. `blocks.3.attn`).
        kind: `"token"` (N x N self-attention) or `"class"` (class token queries all tokens).
        module_type: the module's class name.
        num_heads: heads, when the module says (`num_heads`), else None.
        windowed: True for local-window attention (Swin), whose maps are per window.
        hook_point: submodule whose input is the post-softmax map (`attn_drop`, or `proj_w` for talking heads).
    """

    name: str
    kind: str
    module_type: str
    num_heads: int | None
    windowed: bool
    hook_point: str


@dataclass
class LayerMap:
    """A map handed to the `reduce` callback.

    Attributes:
        index: position among the maps of the same kind in this forward pass (depth order).
        layer: the module it came from.
        attn: (B * num_windows, H, N_q, N_k) post-softmax attention.
        batch_size: images in the forward pass (None when the model was not called through its `__call__`).
        num_windows: maps per image (1 for global attention).
    """

    index: int
    layer: AttentionLayer
    attn: torch.Tensor
    batch_size: int | None
    num_windows: int

    @property
    def kind(self) -> str:
        return self.layer.kind


def _classify(module: nn.Module) -> tuple[str, str] | None:
    """(kind, hook point) if `module` is an attention module to capture, else None."""
    type_name = type(module).__name__
    declared = getattr(type(module), "attention_kind", None) or getattr(module, "attention_kind", None)
    if declared is not None:
        if declared in ("token", "class") and isinstance(getattr(module, "attn_drop", None), nn.Module):
            return str(declared), "attn_drop"
        return None
    if type_name in _NOT_TOKEN_ATTENTION:
        return None
    if type_name in _TALKING_HEADS and isinstance(getattr(module, "proj_w", None), nn.Module):
        return "token", "proj_w"
    if hasattr(module, "fused_attn") and isinstance(getattr(module, "attn_drop", None), nn.Module):
        return ("class" if type_name in _CLASS_ATTENTION else "token"), "attn_drop"
    return None


def find_attention_layers(model: nn.Module) -> list[AttentionLayer]:
    """The attention modules of `model` that `AttentionCapture` records, in registration order (may be empty)."""
    layers = []
    for name, module in model.named_modules():
        found = _classify(module)
        if found is None:
            continue
        kind, hook_point = found
        heads = getattr(module, "num_heads", None)
        windowed = hasattr(module, "window_size") or "window" in type(module).__name__.lower()
        layers.append(AttentionLayer(name=name, kind=kind, module_type=type(module).__name__,
                                     num_heads=int(heads) if isinstance(heads, int) else None,
                                     windowed=windowed, hook_point=hook_point))
    return layers


class AttentionCapture:
    """Record the post-softmax attention maps of `model` while the context is open.

    Args:
        model: any supported model (see the module docstring).
        reduce: optional `fn(LayerMap) -> Any`, called for every captured map (token and class) as soon as its
            layer has run; return values of the last pass are collected in `reduced`.
        keep_maps: keep the maps of the last pass in `maps` / `cls_maps` (False: keep nothing, use `reduce`).
        detach: detach maps from the autograd graph (False to backpropagate through them, e.g. for the ADL).

    Raises:
        UserError: on entering, when the model has no attention layer that can be captured.
    """

    def __init__(self, model: nn.Module, *, reduce: Callable[[LayerMap], Any] | None = None,
                 keep_maps: bool = True, detach: bool = True) -> None:
        if not keep_maps and reduce is None:
            raise ValueError("keep_maps=False without reduce= would capture nothing; pass a reduce callback")
        self.model = model
        self.reduce = reduce
        self.keep_maps = keep_maps
        self.detach = detach
        self.layers: list[AttentionLayer] = []
        self.reduced: list[Any] = []
        self.batch_size: int | None = None
        self._maps: list[torch.Tensor] = []
        self._cls_maps: list[torch.Tensor] = []
        self._windows: list[int] = []
        self._map_layers: list[AttentionLayer] = []
        self._counts = {"token": 0, "class": 0}
        self._handles: list[Any] = []
        self._fused: list[tuple[nn.Module, Any]] = []
        self._passes = 0
        self._active = False

    # -- context ----------------------------------------------------------------------------------------------
    def __enter__(self) -> AttentionCapture:
        if self._active:
            raise RuntimeError("this AttentionCapture is already active")
        self.layers = find_attention_layers(self.model)
        if not self.layers:
            raise UserError(
                f"no attention layer found in {type(self.model).__name__}; attention capture needs a vision "
                "transformer (attnprobe FAN/TAP-FAN/RVT, or timm ViT/DeiT/CaiT/Swin attention modules)")
        modules = dict(self.model.named_modules())
        try:
            for layer in self.layers:
                module = modules[layer.name]
                if hasattr(module, "fused_attn"):
                    self._fused.append((module, module.fused_attn))
                    module.fused_attn = False
                point = getattr(module, layer.hook_point)
                self._handles.append(point.register_forward_pre_hook(self._make_hook(layer)))
            self._handles.append(self.model.register_forward_pre_hook(self._on_pass_start, with_kwargs=True))
        except BaseException:
            self._restore()
            raise
        self._active = True
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._restore()

    def _restore(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for module, value in reversed(self._fused):
            module.fused_attn = value
        self._fused.clear()
        self._active = False

    # -- hooks ------------------------------------------------------------------------------------------------
    def _on_pass_start(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.clear()
        self._passes += 1
        first = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
        self.batch_size = int(first.shape[0]) if first is not None and first.ndim > 0 else None

    def _make_hook(self, layer: AttentionLayer) -> Callable[[nn.Module, tuple], None]:
        def hook(module: nn.Module, inputs: tuple) -> None:
            attn = inputs[0]
            if layer.hook_point == "proj_w":
                attn = attn.permute(0, 3, 1, 2)  # (B, N, N, H) -> (B, H, N, N)
            self._record(layer, attn.detach() if self.detach else attn)

        return hook

    def _record(self, layer: AttentionLayer, attn: torch.Tensor) -> None:
        kind = layer.kind
        if kind == "token" and attn.shape[-1] != attn.shape[-2]:
            kind = "class"  # NOTE: a timm-style module whose queries are not the tokens (e.g. attention pooling)
        b = self.batch_size
        windows = attn.shape[0] // b if b and attn.shape[0] % b == 0 else 1
        if self.reduce is not None:
            self.reduced.append(self.reduce(LayerMap(index=self._counts[kind], layer=layer, attn=attn,
                                                     batch_size=b, num_windows=windows)))
        self._counts[kind] += 1
        if self.keep_maps:
            if kind == "token":
                self._maps.append(attn)
                self._windows.append(windows)
                self._map_layers.append(layer)
            else:
                self._cls_maps.append(attn)

    # -- results ----------------------------------------------------------------------------------------------
    def clear(self) -> None:
        """Forget the maps and reductions of the last pass (done automatically at each call of the model)."""
        self._maps, self._cls_maps, self._windows, self._map_layers = [], [], [], []
        self.reduced = []
        self._counts = {"token": 0, "class": 0}

    def _check_kept(self) -> None:
        if not self.keep_maps:
            raise RuntimeError("maps are not kept (keep_maps=False); read the reductions in `reduced` instead")

    @property
    def maps(self) -> list[torch.Tensor]:
        """Token self-attention maps of the last forward pass, in depth order: (B * nW, H, N, N) each."""
        self._check_kept()
        if not self._maps:
            if self._passes == 0:
                raise RuntimeError("no forward pass has run inside the capture; call the model in the `with` block")
            if not any(layer.kind == "token" for layer in self.layers):
                raise RuntimeError(f"{type(self.model).__name__} has no token self-attention layer, only class "
                                   "attention; read `cls_maps` instead")
            raise RuntimeError(
                f"the last forward pass of {type(self.model).__name__} produced no token attention map although "
                f"{len(self.layers)} attention module(s) were found; was the model called directly?")
        return list(self._maps)

    @property
    def cls_maps(self) -> list[torch.Tensor]:
        """Class-attention maps of the last forward pass, in depth order: (B, H, 1, N + 1) each (may be empty)."""
        self._check_kept()
        return list(self._cls_maps)

    @property
    def windows(self) -> list[int]:
        """Windows per image of each entry of `maps` (1 for global attention)."""
        self._check_kept()
        return list(self._windows)

    @property
    def map_layers(self) -> list[AttentionLayer]:
        """The module each entry of `maps` came from."""
        self._check_kept()
        return list(self._map_layers)

    def per_image(self, i: int) -> torch.Tensor:
        """`maps[i]` as (B, nW, H, n, n) (nW = 1 for global attention)."""
        attn, nw = self.maps[i], self._windows[i]
        return attn.reshape(attn.shape[0] // nw, nw, *attn.shape[1:])
