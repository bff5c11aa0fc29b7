"""Attention capture: a context manager that records every post-softmax attention map of a forward pass.

    with AttentionCapture(model) as cap:
        logits = model(x)
    cap.maps        # token attention, in the order computed: (B * nW, H, N_q, N_k) each
    cap.kinds       # the kind of each entry of maps: "token", "window" or "reduced"
    cap.cls_maps    # class / cross / pooling attention (queries are not image tokens): (B, H, N_q, N_k)
    cap.records     # every map with its layer, kind and window count (`LayerMap`), in the order computed

Kinds of maps (what `attnprobe.metrics` and the diagnostics make of each is in `attnprobe.metrics`):

* `token`: global self-attention over the tokens, N_q = N_k = N (ViT, DeiT, BEiT, EVA, CaiT, FAN, RVT, ...).
* `window`: self-attention inside local windows; a layer's map is (B * nW, H, n_q, n_k), windows of one image
  consecutive (Swin, Swin V2, MaxViT window and grid, Twins LSA, NesT, TinyViT, EfficientViT-M, DaViT, GCViT,
  Hiera mask units, HaloNet). `cap.windows[i]` is nW for `cap.maps[i]`; `cap.per_image(i)` reshapes to
  (B, nW, H, n_q, n_k). Windows are whatever the model attends over, padding tokens included.
* `reduced`: global attention whose queries and keys are different token sets of the image, N_q != N_k: spatial
  reduction of the keys (PVT-v2, Twins GSA, NextViT), pooling (MViTv2), subsampled queries (LeViT,
  EfficientFormer-v2 downsampling).
* `class` (class tokens query all tokens: CaiT, XCiT, VOLO, FAN class attention, N_q = 1), `cross` (CrossViT: one
  branch's class token attends to the other branch) and `pool` (learned latent queries, timm's `AttentionPoolLatent`)
  go to `cls_maps`.

Not captured (listed by `find_excluded_attention`): channel attention (XCiT's XCA, EdgeNeXt, DaViT channel blocks),
VOLO's outlook attention, factorised / linear attention (CoaT, MobileViT-v2), and softmaxes over branches or state
dimensions. A model with none of the above (ConvNeXt, ResNet, FocalNet's modulation) raises `UserError` on entering.
ConViT's gated positional attention is captured as the map it multiplies V with: the sigmoid-gated mix of its patch
and positional softmaxes, renormalised. CaiT's and EfficientFormer-v2's talking-heads attention are read after the
softmax and before the head mixing, so rows sum to 1; EfficientViT-M's cascaded heads (one softmax each) are stacked.

How: timm modules are read at their softmax (see `hooks.py`), attnprobe's own modules at `attn_drop`, and
`fused_attn` is switched off while capturing (so the explicit softmax path runs) and restored on exit, also after an
exception. The explicit path computes the same function as the fused one, so the logits agree to float rounding
(about 1e-6). Maps are read before attention dropout (the same thing in eval mode).

Maps are reset at the start of every call of `model` (its `__call__`), so they always hold the most recent forward
pass and memory does not grow over a long run. For long runs, pass `reduce=` (called once per captured map, right
when the layer runs, with a `LayerMap`) and `keep_maps=False`: each map is reduced and released immediately, so at
most one layer's map is alive at a time; the reductions of the last pass are in `cap.reduced`.

The package: `families.py` finds the layers (one rule per module class that needs one), `hooks.py` installs and
removes the hooks, `layout.py` normalises each map to (B * nW, H, N_q, N_k) and names its kind, `core.py` holds the
context manager and the last pass's maps.
"""

from attnprobe.capture.core import AttentionCapture, LayerMap, no_token_attention_message
from attnprobe.capture.families import AttentionLayer, ExcludedLayer, find_attention_layers, find_excluded_attention
from attnprobe.capture.layout import MAP_KINDS, TOKEN_MAP_KINDS

__all__ = [
    "MAP_KINDS", "TOKEN_MAP_KINDS", "AttentionCapture", "AttentionLayer", "ExcludedLayer", "LayerMap",
    "find_attention_layers", "find_excluded_attention", "no_token_attention_message",
]
