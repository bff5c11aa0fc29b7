"""Layer discovery: which modules of a model compute attention maps, what their queries are, and how to read them.

One rule per module class that needs one, keyed by `<python module>.<class>` (the last part of the module path, so
`twins.LocallyGroupedAttn`, `nest.Attention`): every other timm attention module (any module with a `fused_attn`
flag: ViT, DeiT, BEiT, EVA, Swin, MaxViT, PVT-v2, Twins, NextViT, TinyViT, ...) follows the generic rule, token
attention read at its softmax. attnprobe's own modules (FAN / TAP-FAN / RVT / the demo ViT) declare
`attention_kind` and are read at `attn_drop` (their contract, see `attnprobe.archs.attention`).

Roles (`AttentionLayer.kind`), i.e. what the queries are:

* `"token"`: the queries are tokens of the image (self-attention; also spatial-reduction, pooling and windowed
  attention, whose queries are image tokens too). At run time each map gets a finer kind, see `layout.map_kind`.
* `"class"`: class token(s) query all tokens (CaiT / XCiT / VOLO / FAN class attention), N_q = 1.
* `"cross"`: a token of one branch queries another branch (CrossViT: the class token of one scale attends to the
  patch tokens of the other).
* `"pool"`: learned latent queries pool the tokens (timm's `AttentionPoolLatent` head, `global_pool="map"`).

Excluded (listed by `find_excluded_attention`, never captured), because their softmax is not a distribution of a
query over tokens: channel attention (XCiT's XCA, EdgeNeXt, DaViT channel blocks), VOLO's outlook attention (weights
over the k x k neighbourhood predicted from one token by a linear layer, then folded back, not query-key attention),
factorised / linear attention (CoaT, MobileViT-v2, lambda layers: the softmax runs over keys alone, no N x N map
exists), softmaxes over branches, kernels or state dimensions (ResNeSt split attention, SK, EfficientViM), and
CSATv2's spatial block, whose softmax in timm 1.0.31 runs across the images of the batch (B x B), not over tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

__all__ = [
    "ROLES", "AttentionLayer", "ExcludedLayer", "classify", "find_attention_layers", "find_excluded_attention",
]

TOKEN, CLASS, CROSS, POOL = "token", "class", "cross", "pool"
#: The roles a captured module can have; `maps` holds token-role maps, `cls_maps` the others.
ROLES = (TOKEN, CLASS, CROSS, POOL)

# Why a module's softmax is not captured (the value of ExcludedLayer.reason).
CHANNEL = "channel attention (softmax over channels, not tokens)"
OUTLOOK = "outlook attention (weights over a k x k neighbourhood predicted from one token, not query-key attention)"
LINEAR = "factorised / linear attention (softmax over keys alone; no query-to-token map exists)"
BRANCHES = "softmax over branches or kernels, not over tokens"
STATE = "state-space mixing (softmax over hidden state dimensions, not tokens)"
BATCH = "softmax over the images of the batch (B x B), not over tokens (as written in timm 1.0.31)"


@dataclass(frozen=True)
class AttentionLayer:
    """One attention module as the capture sees it.

    Attributes:
        name: qualified module name in the model (e.g. `blocks.3.attn`).
        kind: role of its queries: `"token"`, `"class"`, `"cross"` or `"pool"` (see the module docstring).
        module_type: the module's class name.
        num_heads: heads, when the module says (`num_heads` / `heads`), else None.
        windowed: True for modules that attend inside local windows (Swin, Twins LSA, NesT, ...); modules whose
            block partitions the tokens (TinyViT, EfficientViT-M) are recognised per map from the batch size.
        hook_point: `"softmax"` (the output of the softmax computed inside the module) or a submodule whose input is
            the map (`"attn_drop"`: attnprobe's modules and ConViT's gated attention).
        layout: how the module lays out its map before normalisation to (B * nW, H, N_q, N_k) (see `layout.py`).
        note: what the map is, where that is not obvious.
    """

    name: str
    kind: str
    module_type: str
    num_heads: int | None
    windowed: bool
    hook_point: str
    layout: str = "auto"
    note: str = ""


@dataclass(frozen=True)
class ExcludedLayer:
    """A module with a softmax that is deliberately not captured, and why."""

    name: str
    module_type: str
    reason: str


@dataclass(frozen=True)
class _Rule:
    kind: str = TOKEN
    hook_point: str = "softmax"
    layout: str = "auto"
    windowed: bool = False
    note: str = ""


def _mqa2d(module: nn.Module) -> _Rule:
    # NOTE: MobileNetV4's multi-query attention lays its logits out (B, N_q, H, N_k) on the einsum path
    return _Rule(layout="bqhk" if getattr(module, "einsum", False) else "auto")


def _hiera(module: nn.Module) -> _Rule:
    return _Rule(layout="bhwqk", windowed=bool(getattr(module, "use_mask_unit_attn", False)))


_Spec = _Rule | str | Callable[[nn.Module], _Rule]

#: Modules that need their own rule; a str value excludes the module for that reason.
FAMILY_RULES: dict[str, _Spec] = {
    # excluded: not a distribution of a query over tokens
    "xcit.XCA": CHANNEL,
    "edgenext.CrossCovarianceAttn": CHANNEL,
    "davit.ChannelAttention": CHANNEL,
    "davit.ChannelAttentionV2": CHANNEL,
    "volo.OutlookAttention": OUTLOOK,
    "coat.FactorAttnConvRelPosEnc": LINEAR,
    "mobilevit.LinearSelfAttention": LINEAR,
    "lambda_layer.LambdaLayer": LINEAR,
    "split_attn.SplitAttn": BRANCHES,
    "selective_kernel.SelectiveKernelAttn": BRANCHES,
    "efficientvim.HSMSSD": STATE,
    "csatv2.SpatialTransformerBlock": BATCH,
    # class-like queries
    "cait.ClassAttn": _Rule(kind=CLASS),
    "volo.ClassAttention": _Rule(kind=CLASS),
    "crossvit.CrossAttention": _Rule(kind=CROSS, note="class token of one branch attends to [itself; the other "
                                                      "branch's patch tokens]"),
    "attention_pool.AttentionPoolLatent": _Rule(kind=POOL, note="learned latent queries pool the tokens"),
    # token attention without a fused_attn flag, or with a layout of its own
    "cait.TalkingHeadAttn": _Rule(note="after the softmax, before the talking-heads mixing (rows sum to 1)"),
    "convit.GPSA": _Rule(hook_point="attn_drop", note="gated mix of patch and positional attention, renormalised"),
    "convit.MHSA": _Rule(),
    "swin_transformer_v2.WindowAttention": _Rule(windowed=True),
    "swin_transformer_v2_cr.WindowMultiHeadAttention": _Rule(windowed=True),
    "mvitv2.MultiScaleAttention": _Rule(),
    "mvitv2.MultiScaleAttentionPoolFirst": _Rule(),
    "levit.Attention": _Rule(),
    "levit.AttentionDownsample": _Rule(),
    "efficientformer.Attention": _Rule(),
    "efficientformer_v2.Attention2d": _Rule(note="after the softmax, before the talking-heads mixing"),
    "efficientformer_v2.Attention2dDownsample": _Rule(),
    "efficientvit_msra.CascadedGroupAttention": _Rule(layout="heads", note="one softmax per head (cascaded)"),
    "gcvit.WindowAttentionGlobal": _Rule(windowed=True),
    "tnt.Attention": _Rule(),
    "shvit.SHSA": _Rule(),
    "twins.LocallyGroupedAttn": _Rule(layout="bwhqk", windowed=True),
    "nest.Attention": _Rule(layout="bhwqk", windowed=True),
    "hiera.MaskUnitAttention": _hiera,
    "bottleneck_attn.BottleneckAttn": _Rule(layout="(bh)qk"),
    "vision_transformer_sam.Attention": _Rule(layout="(bh)qk"),
    "halo_attn.HaloAttn": _Rule(layout="(bh)wqk", windowed=True),
    "attention2d.MultiQueryAttention2d": _mqa2d,
    "attention2d.MultiQueryAttentionV2": _Rule(layout="bqhk"),
    "diff_attention.DiffAttention": _Rule(note="both softmax maps of each differential head: heads 2h and 2h+1"),
}


def _rule_key(module: nn.Module) -> str:
    cls = type(module)
    return f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"


def classify(module: nn.Module) -> _Rule | str | None:
    """How `module` is captured: a rule, the reason it is excluded (str), or None when it is no attention module."""
    cls = type(module)
    # NOTE: class and instance dict lookups, not getattr: nn.Module.__getattr__ is slow for missing names, and this
    # runs for every module of the model each time a capture opens
    declared = getattr(cls, "attention_kind", None) or module.__dict__.get("attention_kind")
    if declared is not None:  # attnprobe's contract: the map is the input of attn_drop
        if declared in (TOKEN, CLASS) and isinstance(module._modules.get("attn_drop"), nn.Module):
            return _Rule(kind=str(declared), hook_point="attn_drop", layout="bhqk")
        return None
    spec = FAMILY_RULES.get(_rule_key(module))
    if spec is not None:
        return spec(module) if callable(spec) else spec
    if ("fused_attn" in module.__dict__ or hasattr(cls, "fused_attn")) and not cls.__module__.startswith("attnprobe."):
        return _Rule()  # NOTE: timm's convention: every module with a fused_attn flag is an attention module
    return None


def _num_heads(module: nn.Module) -> int | None:
    for attr in ("num_heads", "heads"):
        value = getattr(module, attr, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def find_attention_layers(model: nn.Module) -> list[AttentionLayer]:
    """The attention modules of `model` that `AttentionCapture` records, in registration order (may be empty)."""
    layers = []
    for name, module in model.named_modules():
        rule = classify(module)
        if not isinstance(rule, _Rule):
            continue
        # NOTE: not `hasattr(module, "window_size")`: BEiT's global attention has one (for its relative positions)
        windowed = rule.windowed or "window" in type(module).__name__.lower()
        layers.append(AttentionLayer(name=name, kind=rule.kind, module_type=type(module).__name__,
                                     num_heads=_num_heads(module), windowed=windowed, hook_point=rule.hook_point,
                                     layout=rule.layout, note=rule.note))
    return layers


def find_excluded_attention(model: nn.Module) -> list[ExcludedLayer]:
    """Modules with a softmax that `AttentionCapture` deliberately skips (channel, outlook, linear attention, ...)."""
    return [ExcludedLayer(name, type(module).__name__, rule) for name, module in model.named_modules()
            if isinstance(rule := classify(module), str)]
