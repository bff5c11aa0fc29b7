"""Attention capture across timm families: one tiny random-weight model per family, checked against an independent
count of the softmaxes its forward pass computes and against `timm.utils.AttentionExtract`.

Per model: (1) the forward is run with every `fused_attn` flag off under a `TorchFunctionMode` that records each
softmax and the innermost module running it (global module hooks; nothing of attnprobe's is used); softmaxes of
modules that are deliberately not attention maps (`NOT_MAPS`) are set aside; (2) `AttentionCapture` must yield one map
per remaining softmax (per group of softmaxes where one map is built from several, `SOFTMAXES_PER_MAP`), holding the
same values, rows summing to 1, with logits within 1e-5 of the plain (fused) forward and every flag restored;
(3) where `AttentionExtract` works (fx graph, else `attn_drop` hooks), every map it finds must be one of ours;
(4) the stability / overfocus / heads / attention drivers run without a traceback, or refuse a model without token
attention with a one-line `UserError`.

`python tests/test_timm_coverage.py` prints the coverage table of the README (Metrics and protocols).
"""

from __future__ import annotations

import sys
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from attnprobe.capture import AttentionCapture, LayerMap
from attnprobe.errors import UserError

#: Softmaxes that are not a distribution of a query over tokens, by module class (the test's own list).
NOT_MAPS = {
    "XCA": "channel attention", "CrossCovarianceAttn": "channel attention", "ChannelAttention": "channel attention",
    "OutlookAttention": "outlook attention", "FactorAttnConvRelPosEnc": "factorised attention",
    "LinearSelfAttention": "linear attention",
}
#: Modules that build one map from several softmaxes (ConViT: patch + positional, gated; EfficientViT-M: per head).
SOFTMAXES_PER_MAP: dict[str, Callable[[nn.Module], int]] = {
    "GPSA": lambda m: 2, "CascadedGroupAttention": lambda m: len(m.qkvs),
}
#: Modules where `AttentionExtract` reads a different tensor than the post-softmax map (only the count is compared).
EXTRACT_READS_ELSEWHERE = {"TalkingHeadAttn": "attn_drop follows the talking-heads mixing (rows no longer sum to 1)"}


@dataclass(frozen=True)
class Arch:
    """A timm architecture in a tiny configuration (random weights)."""

    family: str
    name: str
    size: int
    kwargs: dict[str, Any] = field(default_factory=dict)
    build: Callable[[], nn.Module] | None = None  # when the entry point cannot be shrunk through kwargs
    token_attention: bool = True  # False: the diagnostics must refuse it with a one-line error
    extract: tuple[str, ...] = ("hook",)  # AttentionExtract methods the test tries, in order

    def create(self) -> nn.Module:
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = self.build() if self.build else timm.create_model(self.name, pretrained=False, num_classes=10,
                                                                      **self.kwargs)
        return model.eval()


def _mvitv2() -> nn.Module:
    from timm.models.mvitv2 import MultiScaleVit, MultiScaleVitCfg

    cfg = MultiScaleVitCfg(depths=(1, 1, 1, 1), embed_dim=16, num_heads=1, use_cls_token=True)
    return MultiScaleVit(cfg, img_size=(64, 64), num_classes=10)


def _nest() -> nn.Module:
    from timm.models.nest import Nest

    return Nest(img_size=32, embed_dims=(16, 32, 64), num_heads=(1, 2, 4), depths=(1, 1, 1), num_classes=10)


def _volo() -> nn.Module:
    from timm.models.volo import VOLO

    return VOLO(layers=(1, 1, 1, 1), img_size=64, embed_dims=(32, 64, 64, 64), num_heads=(1, 2, 2, 2), num_classes=10)


def _caformer() -> nn.Module:
    from timm.models.metaformer import Attention, LayerNorm2dNoBias, LayerNormNoBias, MetaFormer, SepConv

    mixers = (SepConv, SepConv, Attention, Attention)
    return MetaFormer(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128), token_mixers=mixers,
                      norm_layers=(LayerNorm2dNoBias,) * 2 + (LayerNormNoBias,) * 2, num_classes=10)


def _focalnet() -> nn.Module:
    from timm.models.focalnet import FocalNet

    return FocalNet(depths=(1, 1, 1, 1), embed_dim=16, num_classes=10)


ARCHS = [
    Arch("ViT", "vit_tiny_patch16_224", 32, dict(img_size=32, depth=2)),
    Arch("ViT, attention-pool head", "vit_tiny_patch16_224", 32, dict(img_size=32, depth=2, global_pool="map")),
    Arch("DeiT (distilled)", "deit_tiny_distilled_patch16_224", 32, dict(img_size=32, depth=2)),
    Arch("BEiT", "beit_base_patch16_224", 32, dict(img_size=32, depth=2, embed_dim=64, num_heads=4)),
    Arch("EVA-02", "eva02_tiny_patch14_224", 42, dict(img_size=42, depth=2)),
    Arch("ViT rel-pos", "vit_relpos_small_patch16_224", 32, dict(img_size=32, depth=2)),
    Arch("ViT differential attention", "vit_dwee_patch16_reg1_gap_256", 32, dict(img_size=32, depth=2)),
    Arch("SAM ViT (window + global)", "samvit_base_patch16", 64,
         dict(img_size=64, depth=2, embed_dim=64, num_heads=2, window_size=2, global_attn_indexes=(1,))),
    Arch("PiT", "pit_ti_224", 64, dict(img_size=64)),
    Arch("TNT", "tnt_s_patch16_224", 32, dict(img_size=32, depth=2)),
    Arch("CaiT", "cait_xxs24_224", 32, dict(img_size=32, depth=2)),
    Arch("XCiT", "xcit_nano_12_p16_224", 32, dict(img_size=32, depth=2), token_attention=False),
    Arch("ConViT", "convit_tiny", 32, dict(img_size=32, depth=2, local_up_to_layer=1)),
    Arch("CrossViT", "crossvit_tiny_240", 48, dict(img_size=48, img_scale=(1.0, 1.0))),
    Arch("VOLO", "volo_d1_224", 64, build=_volo),
    Arch("Swin", "swin_tiny_patch4_window7_224", 56, dict(img_size=56, depths=(2, 2), num_heads=(2, 4),
                                                          embed_dim=16)),
    Arch("Swin V2", "swinv2_tiny_window8_256", 64, dict(img_size=64, embed_dim=16, depths=(2, 2), num_heads=(2, 2),
                                                        window_size=4)),
    Arch("Swin V2 CR", "swinv2_cr_tiny_ns_224", 64, dict(img_size=64, embed_dim=16, depths=(2, 2), num_heads=(2, 2),
                                                         window_size=4)),
    Arch("MaxViT", "maxvit_pico_rw_256", 64, dict(img_size=64)),
    Arch("CoAtNet", "coatnet_nano_rw_224", 64, dict(img_size=64)),
    Arch("DaViT", "davit_tiny", 64, dict(depths=(1, 1, 1, 1), embed_dims=(16, 32, 64, 128), num_heads=(1, 2, 4, 8))),
    Arch("GCViT", "gcvit_xxtiny", 64, dict(img_size=64, embed_dim=16)),
    Arch("NesT", "nest_tiny", 32, build=_nest),
    Arch("Twins-SVT", "twins_svt_small", 64, dict(depths=(2, 2, 2, 2), embed_dims=(16, 32, 64, 128),
                                                  num_heads=(1, 2, 4, 8))),
    Arch("Twins-PCPVT", "twins_pcpvt_small", 64, dict(depths=(1, 1, 1, 1), embed_dims=(16, 32, 64, 128),
                                                      num_heads=(1, 2, 4, 8))),
    Arch("PVT-v2", "pvt_v2_b0", 64),
    Arch("NextViT", "nextvit_small", 64, dict(depths=(1, 1, 5, 1))),
    Arch("MViTv2", "mvitv2_tiny", 64, build=_mvitv2),
    Arch("Hiera", "hiera_tiny_224", 64, dict(img_size=(64, 64), embed_dim=16, num_heads=1, stages=(1, 1, 1, 1))),
    Arch("LeViT", "levit_128s", 64, dict(img_size=64)),
    Arch("TinyViT", "tiny_vit_5m_224", 64, dict(embed_dims=(16, 32, 32, 64), depths=(1, 1, 1, 1),
                                                num_heads=(1, 2, 2, 4), window_sizes=(4, 4, 2, 2))),
    Arch("EfficientFormer", "efficientformer_l1", 224, dict(depths=(1, 1, 1, 2), embed_dims=(16, 16, 16, 32))),
    Arch("EfficientFormer-V2", "efficientformerv2_s0", 64, dict(img_size=64)),
    Arch("EfficientViT-M (MSRA)", "efficientvit_m0", 64, dict(img_size=64)),
    Arch("FastViT", "fastvit_sa12", 64, dict(layers=(1, 1, 1, 1))),
    Arch("Visformer", "visformer_tiny", 64, dict(img_size=64)),
    Arch("MobileViT", "mobilevit_xxs", 64),
    Arch("SHViT (single head)", "shvit_s1", 64),
    Arch("iFormer", "iformer_t", 64),
    Arch("CAFormer (MetaFormer)", "caformer_s18", 64, build=_caformer),
    Arch("BoTNet", "botnet26t_256", 64, dict(img_size=64)),
    Arch("MobileNetV4 hybrid", "mobilenetv4_hybrid_medium", 64),
    # no token attention: the capture finds nothing (or only excluded softmaxes), the diagnostics refuse
    Arch("ConvNeXt", "convnext_atto", 64, token_attention=False),
    Arch("ResNet", "resnet18", 64, token_attention=False),
    Arch("FocalNet", "focalnet_tiny_srf", 64, build=_focalnet, token_attention=False),
    Arch("CoaT-Lite", "coat_lite_tiny", 64, dict(img_size=64), token_attention=False),
    Arch("EdgeNeXt", "edgenext_xx_small", 64, token_attention=False),
    Arch("MobileViT-v2", "mobilevitv2_050", 64, token_attention=False),
    Arch("EfficientViT (MIT)", "efficientvit_b0", 64, token_attention=False),
]


#: Kinds the capture must report (the attention design of each family; counts follow from the tiny configs).
EXPECTED_KINDS = {
    "ViT": {"token"}, "ViT, attention-pool head": {"token", "pool"}, "CaiT": {"token", "class"}, "XCiT": {"class"},
    "CrossViT": {"token", "cross"}, "VOLO": {"token", "class"}, "Swin": {"window"}, "Swin V2": {"window"},
    "Swin V2 CR": {"window"}, "MaxViT": {"window", "token"}, "SAM ViT (window + global)": {"window", "token"},
    "Twins-SVT": {"window", "reduced", "token"}, "Twins-PCPVT": {"reduced", "token"}, "PVT-v2": {"reduced", "token"},
    "NextViT": {"reduced", "token"}, "MViTv2": {"reduced", "token"}, "LeViT": {"token", "reduced"},
    "Hiera": {"window", "reduced"}, "TinyViT": {"window", "token"}, "EfficientFormer-V2": {"token", "reduced"},
    "NesT": {"window"}, "MobileViT": {"window"}, "TNT": {"window", "token"}, "MobileNetV4 hybrid": {"reduced", "token"},
}


# -- the independent softmax count ----------------------------------------------------------------------------------
class _SoftmaxLog(torch.overrides.TorchFunctionMode):
    """Every softmax of a forward pass with the innermost module running it (global module hooks keep the stack)."""

    FUNCS = (torch.Tensor.softmax, torch.softmax, F.softmax)

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[nn.Module | None, torch.Tensor]] = []
        self.stack: list[nn.Module] = []

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if func in self.FUNCS:
            self.calls.append((self.stack[-1] if self.stack else None, out))
        return out


def _softmax_calls(model: nn.Module, x: torch.Tensor) -> list[tuple[nn.Module | None, torch.Tensor]]:
    log = _SoftmaxLog()

    def push(mod: nn.Module, args: Any) -> None:
        log.stack.append(mod)

    def pop(mod: nn.Module, args: Any, out: Any) -> None:
        log.stack.pop()

    handles = [nn.modules.module.register_module_forward_pre_hook(push),
               nn.modules.module.register_module_forward_hook(pop)]
    try:
        with log:
            model(x)
    finally:
        for h in handles:
            h.remove()
    return log.calls


def _set_fused(model: nn.Module, value: bool | dict[int, Any]) -> dict[int, Any]:
    before = {id(m): m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")}
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = value[id(m)] if isinstance(value, dict) else value
    return before


# -- timm's own extractor -------------------------------------------------------------------------------------------
def _attention_extract(model: nn.Module, x: torch.Tensor,
                       methods: tuple[str, ...] = ("hook",)) -> tuple[str, dict[str, list[torch.Tensor]]]:
    """`AttentionExtract`'s maps grouped by the module that computed them, from the first method that works:
    ("fx" | "hook" | "fails", {module: maps}). The hook method (default names `*attn_drop`) takes milliseconds;
    the fx method traces the model three times (up to 30 s on the 2-core CI machine), so the test runs it only where
    the hook method fails and the trace is quick (`Arch.extract`); the README table tries both everywhere."""
    from timm.utils import AttentionExtract

    before = _set_fused(model, False)
    try:
        for method in methods:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    out = AttentionExtract(model, method=method)(x)
            except Exception:  # noqa: BLE001 - timm's extractor does not work on every model; that is the point
                continue
            grouped: dict[str, list[torch.Tensor]] = {}
            for name, t in out.items():
                grouped.setdefault(name.rsplit(".", 1)[0], []).append(t)
            return method, grouped
        return "fails", {}
    finally:
        _set_fused(model, before)
        model.eval()


# -- one model ------------------------------------------------------------------------------------------------------
@dataclass
class Coverage:
    """What one architecture gives; `problems()` lists every broken rule."""

    arch: Arch
    records: list[LayerMap] = field(default_factory=list)
    capture_error: str = ""
    expected_maps: int = 0
    expected_sumsq: dict[str, float] = field(default_factory=dict)
    excluded: Counter = field(default_factory=Counter)
    logit_diff: float = 0.0
    single_image_diff: float = 0.0  # image 0 alone vs image 0 of the batch: windows of one image stay together
    head_counts: dict[str, tuple[int, int]] = field(default_factory=dict)  # module: (map heads, module heads)
    flags_restored: bool = True
    extract_method: str = "fails"
    extract_maps: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    excluded_names: set[str] = field(default_factory=set)  # modules whose softmaxes are not maps
    module_types: dict[str, str] = field(default_factory=dict)
    diagnostics: str = ""

    def sumsq(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for r in self.records:
            out[r.layer.name] = out.get(r.layer.name, 0.0) + float(r.attn.double().square().sum())
        return out

    def problems(self) -> list[str]:
        bad = []
        if len(self.records) != self.expected_maps:
            bad.append(f"{len(self.records)} maps captured, {self.expected_maps} attention softmaxes computed")
        ours = self.sumsq()
        for name, value in self.expected_sumsq.items():
            if abs(ours.get(name, 0.0) - value) > 1e-4 * max(value, 1.0):
                bad.append(f"{name}: captured values differ from its softmax outputs")
        for r in self.records:
            rows = r.attn.sum(-1)
            if r.attn.ndim != 4 or (rows - 1).abs().max() > 1e-5 or r.attn.min() < 0:
                bad.append(f"{r.layer.name}: map {tuple(r.attn.shape)} is not (B', H, N_q, N_k) of distributions")
        for name, (got, want) in self.head_counts.items():
            if got != want:
                bad.append(f"{name}: maps have {got} heads, the module has {want}")
        if self.single_image_diff > 1e-3:  # NOTE: batch-size-dependent kernels differ by ~1e-4 (Visformer)
            bad.append(f"maps of image 0 alone differ from its part of the batch by {self.single_image_diff:.1e}")
        if self.logit_diff > 1e-5:
            bad.append(f"logits changed by {self.logit_diff:.1e}")
        if not self.flags_restored:
            bad.append("fused_attn flags not restored")
        for module, maps in self.extract_maps.items():
            if module in self.expected_sumsq or module in ours:
                value = sum(float(t.double().square().sum()) for t in maps)
                compare = module in self.expected_sumsq and self.module_types[module] not in EXTRACT_READS_ELSEWHERE
                if compare and abs(ours.get(module, 0.0) - value) > 1e-4 * max(value, 1.0):
                    bad.append(f"{module}: AttentionExtract's map differs from ours")
            elif module not in self.excluded_names:
                bad.append(f"{module}: AttentionExtract finds a map that the capture misses")
        kinds = {r.kind for r in self.records}
        if self.arch.family in EXPECTED_KINDS and kinds != EXPECTED_KINDS[self.arch.family]:
            bad.append(f"kinds {sorted(kinds)}, expected {sorted(EXPECTED_KINDS[self.arch.family])}")
        if self.arch.token_attention != (self.diagnostics == "ok"):
            bad.append(f"diagnostics: {self.diagnostics}")
        return bad

    def extract_agrees(self) -> str:
        """How many of our maps timm's extractor also finds, and with which of its methods."""
        if self.extract_method == "fails":
            return "fails"
        found = sum(len(v) for k, v in self.extract_maps.items() if k not in self.excluded_names)
        return f"{found} of {len(self.records)} ({self.extract_method})" if self.records else "nothing"


def _declared_heads(module: nn.Module) -> int | None:
    heads = getattr(module, "num_heads", None) or getattr(module, "heads", None)
    if not isinstance(heads, int):
        return None
    return 2 * heads if type(module).__name__ == "DiffAttention" else heads  # two softmax maps per head


def inspect_arch(arch: Arch, tmp: Path | None = None, extract: tuple[str, ...] | None = None) -> Coverage:
    """Run every check of the module docstring on `arch` and collect the outcome."""
    model = arch.create()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, arch.size, arch.size, generator=g)
    cov = Coverage(arch, module_types={n: type(m).__name__ for n, m in model.named_modules()})
    names = {id(m): n for n, m in model.named_modules()}
    modules_by_child = {id(child): parent for parent in model.modules() for child in parent.children()}
    with torch.no_grad():
        ref = model(x)
        before = _set_fused(model, False)
        calls = _softmax_calls(model, x)
        _set_fused(model, before)
        per_module: dict[str, list[torch.Tensor]] = {}
        modules: dict[str, nn.Module] = {}
        for module, out in calls:
            kind = type(module).__name__
            if isinstance(module, nn.Softmax):  # NOTE: an nn.Softmax submodule: the map belongs to its parent
                module = modules_by_child.get(id(module), module)
                kind = type(module).__name__
            if kind in NOT_MAPS:
                cov.excluded[f"{kind} ({NOT_MAPS[kind]})"] += 1
                cov.excluded_names.add(names[id(module)])
                continue
            name = names[id(module)] if module is not None else "<model>"
            per_module.setdefault(name, []).append(out)
            modules[name] = module
        for name, outs in per_module.items():
            group = SOFTMAXES_PER_MAP.get(type(modules[name]).__name__)
            cov.expected_maps += len(outs) // group(modules[name]) if group else len(outs)
            if group is None or type(modules[name]).__name__ == "CascadedGroupAttention":
                cov.expected_sumsq[name] = sum(float(o.double().square().sum()) for o in outs)
        flags = {id(m): m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")}
        try:
            with AttentionCapture(model) as cap:
                out = model(x)
                cov.records = cap.records
                model(x[:1])
                alone = cap.records
            cov.logit_diff = float((out - ref).abs().max())
            cov.single_image_diff = max((float((a.attn - r.attn[:len(a.attn)]).abs().max())
                                         for a, r in zip(alone, cov.records)), default=0.0)
            for r in cov.records:
                heads = _declared_heads(dict(model.named_modules())[r.layer.name])
                if heads:
                    cov.head_counts[r.layer.name] = (int(r.attn.shape[1]), heads)
        except UserError as e:
            cov.capture_error = str(e)
        cov.flags_restored = flags == {id(m): m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")}
        cov.extract_method, cov.extract_maps = _attention_extract(model, x, extract or arch.extract)
    cov.diagnostics = _run_diagnostics(arch, model, tmp)
    return cov


def _run_diagnostics(arch: Arch, model: nn.Module, tmp: Path | None) -> str:
    """"ok" when every driver runs and measures every token layer, else the one-line error."""
    import tempfile

    from attnprobe import diagnostics as D
    from attnprobe.data.samples import sample_images
    from attnprobe.zoo import Preprocessing

    entry = D.ModelEntry(name=arch.name, model=model, preprocessing=Preprocessing(input_size=arch.size, crop_pct=1.0))
    images = sample_images(1)
    try:
        stab = D.stability([entry], images, "gaussian_noise", [2], batch_size=1, keep_maps=0)
        over = D.overfocus([entry], images, batch_size=1)
        head = D.heads([entry], images, batch_size=1)
        with tempfile.TemporaryDirectory(dir=tmp) as out:
            maps = D.attention_maps([entry], images, out_dir=out, batch_size=1)
            saved = D.load_maps(maps.results[0]["artifacts"][0]["path"])
    except UserError as e:
        message = str(e)
        return message if "\n" not in message else f"multi-line error: {message!r}"
    layers = stab.results[0]["layers"]
    if not layers or any(lay["mean_cosine"] is None for lay in layers):
        return "stability measured no layer"
    if len(saved["attn"]) != len(layers) or len(over.results[0]["layers"]) != len(layers):
        return "the drivers disagree on the number of token-attention layers"
    multi_head = [lay for lay in layers if lay["heads"] > 1]
    if len(head.results[0]["layers"]) != len(multi_head):
        return "head similarity is missing for a layer with several heads"
    return "ok"


# -- the tests ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS, ids=[f"{a.family}" for a in ARCHS])
def test_capture_covers_family(arch: Arch, tmp_path: Path) -> None:
    cov = inspect_arch(arch, tmp_path)
    assert cov.problems() == []
    if arch.token_attention:
        assert any(r.is_token_attention for r in cov.records)
    else:
        assert cov.diagnostics.count("\n") == 0 and cov.diagnostics != "ok"


def test_coverage_list_is_broad() -> None:
    with_maps = [a for a in ARCHS if a.token_attention]
    assert len(with_maps) >= 30 and len({a.family for a in ARCHS}) == len(ARCHS)


# -- the README table -----------------------------------------------------------------------------------------------
def _kinds(cov: Coverage) -> str:
    counts = Counter(r.kind for r in cov.records)
    return ", ".join(f"{kind} {n}" for kind, n in counts.items()) or "none"


def coverage_table() -> str:
    """The Markdown table of the README: what the capture finds per family, and what timm's extractor finds."""
    header = ("| family | timm model (tiny config) | maps captured, by kind | not captured | timm `AttentionExtract` "
              "finds | diagnostics |")
    lines = [header, "|---|---|---|---|---|---|"]
    for arch in ARCHS:
        cov = inspect_arch(arch, extract=("fx", "hook"))
        for problem in cov.problems():
            print(f"PROBLEM {arch.family}: {problem}", file=sys.stderr)
        excluded = ", ".join(f"{k} ×{n}" for k, n in cov.excluded.items()) or "-"
        diag = "run" if cov.diagnostics == "ok" else "one-line error"
        lines.append(f"| {arch.family} | `{arch.name}` | {_kinds(cov)} | {excluded} | {cov.extract_agrees()} | "
                     f"{diag} |")
    return "\n".join(lines)


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(coverage_table())
