"""`AttentionCapture`: the context manager, and the storage of the last forward pass's maps."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch
from torch import nn

from attnprobe.capture.families import AttentionLayer, find_attention_layers, find_excluded_attention
from attnprobe.capture.hooks import Installation, install
from attnprobe.capture.layout import TOKEN_MAP_KINDS, map_kind, num_windows, standardize
from attnprobe.errors import UserError

__all__ = ["AttentionCapture", "LayerMap", "no_token_attention_message"]


@dataclass
class LayerMap:
    """One captured map, as handed to the `reduce` callback and kept in `AttentionCapture.records`.

    Attributes:
        index: position in `maps` (token, window and reduced attention) or in `cls_maps` (class, cross and pooling
            attention) of this forward pass, in the order the maps were computed.
        layer: the module it came from.
        attn: (B * num_windows, H, N_q, N_k) post-softmax attention; windows of one image are consecutive.
        batch_size: images in the forward pass (None when the model was not called through its `__call__`).
        num_windows: maps per image (1 for global attention).
        kind: `"token"`, `"window"`, `"reduced"`, `"class"`, `"cross"` or `"pool"` (see `attnprobe.capture`).
    """

    index: int
    layer: AttentionLayer
    attn: torch.Tensor
    batch_size: int | None
    num_windows: int
    kind: str = ""

    def __post_init__(self) -> None:
        if not self.kind:
            self.kind = map_kind(self.layer.kind, self.attn, self.num_windows, self.layer.windowed)

    @property
    def is_token_attention(self) -> bool:
        """True when the queries are image tokens (the map belongs to `maps`, not `cls_maps`)."""
        return self.kind in TOKEN_MAP_KINDS


class _LastPass:
    """The maps of the most recent forward pass, split into token attention and class-like attention."""

    def __init__(self) -> None:
        self.all: list[LayerMap] = []  # in the order computed
        self.token: list[LayerMap] = []
        self.other: list[LayerMap] = []

    def add(self, lm: LayerMap) -> None:
        self.all.append(lm)
        (self.token if lm.is_token_attention else self.other).append(lm)


class AttentionCapture:
    """Record the post-softmax attention maps of `model` while the context is open.

    Args:
        model: any supported model (see `attnprobe.capture`).
        reduce: optional `fn(LayerMap) -> Any`, called for every captured map (every kind) as soon as its layer has
            run; return values of the last pass are collected in `reduced`.
        keep_maps: keep the maps of the last pass in `maps` / `cls_maps` (False: keep nothing, use `reduce`).
        detach: detach maps from the autograd graph (False to backpropagate through them, e.g. for the ADL).

    Raises:
        UserError: on entering, when the model has no attention layer that can be captured.
    """

    def __init__(self, model: nn.Module, *, reduce: Callable[[LayerMap], Any] | None = None,
                 keep_maps: bool = True, detach: bool = True) -> None:
        if not keep_maps and reduce is None:
            raise ValueError("keep_maps=False without reduce= would capture nothing; pass a reduce callback")
        self.model, self.reduce, self.keep_maps, self.detach = model, reduce, keep_maps, detach
        self.layers: list[AttentionLayer] = []
        self.reduced: list[Any] = []
        self.batch_size: int | None = None
        self._last = _LastPass()
        self._counts = [0, 0]  # maps of this pass: token attention, class-like attention
        self._installed: Installation | None = None
        self._pass_hook: Any = None
        self._passes = 0

    # -- context ----------------------------------------------------------------------------------------------
    def __enter__(self) -> AttentionCapture:
        if self._installed is not None:
            raise RuntimeError("this AttentionCapture is already active")
        self.layers = find_attention_layers(self.model)
        if not self.layers:
            raise UserError(no_token_attention_message(self.model) or "no attention layer found")
        self._installed = install(self.model, self.layers, self._on_maps)
        try:
            self._pass_hook = self.model.register_forward_pre_hook(self._on_pass_start, with_kwargs=True)
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._restore()

    def _restore(self) -> None:
        if self._pass_hook is not None:
            self._pass_hook.remove()
            self._pass_hook = None
        if self._installed is not None:
            self._installed.remove()
            self._installed = None

    # -- hooks ------------------------------------------------------------------------------------------------
    def _on_pass_start(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.clear()
        self._passes += 1
        first = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
        self.batch_size = int(first.shape[0]) if first is not None and first.ndim > 0 else None

    def _on_maps(self, layer: AttentionLayer, raw: list[torch.Tensor]) -> None:
        for attn in standardize(raw, layer.layout, layer.num_heads):
            attn = attn.detach() if self.detach else attn
            windows = num_windows(attn, self.batch_size)
            kind = map_kind(layer.kind, attn, windows, layer.windowed)
            token = kind in TOKEN_MAP_KINDS
            lm = LayerMap(index=self._counts[not token], layer=layer, attn=attn, batch_size=self.batch_size,
                          num_windows=windows, kind=kind)
            self._counts[not token] += 1
            if self.reduce is not None:
                self.reduced.append(self.reduce(lm))
            if self.keep_maps:
                self._last.add(lm)

    # -- results ----------------------------------------------------------------------------------------------
    def clear(self) -> None:
        """Forget the maps and reductions of the last pass (done automatically at each call of the model)."""
        self._last = _LastPass()
        self.reduced = []
        self._counts = [0, 0]

    def _kept(self) -> _LastPass:
        if not self.keep_maps:
            raise RuntimeError("maps are not kept (keep_maps=False); read the reductions in `reduced` instead")
        return self._last

    @property
    def maps(self) -> list[torch.Tensor]:
        """Token-attention maps of the last pass (kinds token, window, reduced), in order: (B * nW, H, N_q, N_k)."""
        last = self._kept()
        if not last.token:
            raise RuntimeError(self._why_no_token_maps())
        return [lm.attn for lm in last.token]

    @property
    def cls_maps(self) -> list[torch.Tensor]:
        """Class, cross and pooling attention maps of the last pass, in order: (B, H, N_q, N_k) (may be empty)."""
        return [lm.attn for lm in self._kept().other]

    @property
    def windows(self) -> list[int]:
        """Windows per image of each entry of `maps` (1 for global attention)."""
        return [lm.num_windows for lm in self._kept().token]

    @property
    def map_layers(self) -> list[AttentionLayer]:
        """The module each entry of `maps` came from."""
        return [lm.layer for lm in self._kept().token]

    @property
    def kinds(self) -> list[str]:
        """The kind of each entry of `maps`: `"token"`, `"window"` or `"reduced"`."""
        return [lm.kind for lm in self._kept().token]

    @property
    def records(self) -> list[LayerMap]:
        """Every map of the last pass (both lists), with its layer, kind and windows, in the order computed."""
        return list(self._kept().all)

    def per_image(self, i: int) -> torch.Tensor:
        """`maps[i]` as (B, nW, H, N_q, N_k) (nW = 1 for global attention)."""
        lm = self._kept().token[i]
        return lm.attn.reshape(lm.attn.shape[0] // lm.num_windows, lm.num_windows, *lm.attn.shape[1:])

    def _why_no_token_maps(self) -> str:
        if self._passes == 0:
            return "no forward pass has run inside the capture; call the model in the `with` block"
        if not any(layer.kind == "token" for layer in self.layers):
            return (f"{type(self.model).__name__} has no token self-attention layer, only class attention (class, "
                    "cross or pooling queries); read `cls_maps` instead")
        return (f"the last forward pass of {type(self.model).__name__} produced no token attention map although "
                f"{len(self.layers)} attention module(s) were found; was the model called directly?")


def no_token_attention_message(model: nn.Module, name: str | None = None, *, need_token: bool = False) -> str | None:
    """The one-line reason why `model` cannot be captured (None when it can).

    Args:
        model: the network.
        name: how to call it in the message (default: its class name).
        need_token: also refuse a model whose only captured attention is class-like (class, cross, pooling), as
            the diagnostics do: their measures are over token attention.
    """
    name = name or type(model).__name__
    layers = find_attention_layers(model)
    if any(layer.kind == "token" for layer in layers) or (layers and not need_token):
        return None
    excluded = find_excluded_attention(model)
    if not layers and not excluded:
        return (f"no attention layer found in {name}; attention capture needs a vision transformer (attnprobe "
                "FAN/TAP-FAN/RVT, or a timm model with attention: ViT, DeiT, CaiT, Swin, PVT, ...)")
    found = [f"{sum(lay.kind == kind for lay in layers)} {kind}-attention layer(s)"
             for kind in sorted({lay.kind for lay in layers})]
    found += sorted({f"{e.module_type} ({e.reason.split(' (')[0]})" for e in excluded})
    return (f"{name} has no token attention, only {', '.join(found)}; attention diagnostics need a model whose "
            "attention queries are image tokens (ViT, DeiT, Swin, PVT, FAN, RVT, ...)")
