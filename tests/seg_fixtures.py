"""Small segmentation models and data for the segmentation benchmark tests (CPU, offline).

`TinySeg` is a stand-in segmentation model (any (B, 3, H, W) -> (B, 19, H, W) logits module with `task` and
`test_cfg`): the benchmark, CLI and report logic does not depend on the network, and it is fast. `write_fan_card`
makes a zoo card of a tiny real FAN / TAP-FAN-Hybrid + SegFormer for the end-to-end checks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: Constructor overrides that shrink the zoo's FAN-B segmentation models to a few thousand parameters.
TINY_FAN = {"embed_dim": 32, "depth": 2, "num_heads": 4, "backbone": {"depths": [1, 1], "dims": [16, 32, 64, 128]},
            "decoder_embed_dim": 32, "head_channels": 16}


class TinySeg(nn.Module):
    """A stand-in segmentation model: two convolutions, logits upsampled to the input size (like `model(x)`)."""

    task = "segmentation"

    def __init__(self, seed: int = 0, num_classes: int = 19, test_cfg: dict[str, Any] | None = None) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(16, num_classes, 1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        self.num_classes = num_classes
        self.align_corners = False
        self.test_cfg = test_cfg or {"mode": "slide", "crop_size": (48, 48), "stride": (32, 32)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.conv2(F.gelu(self.conv1(x)))  # (B, C, H / 2, W / 2)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


#: The [segmentation] table of a card for the synthetic 64 x 128 street scenes (the official pipeline scaled down).
SYNTH_SEG_CARD = {"img_scale": [128, 64], "mode": "slide", "crop_size": [48, 48], "stride": [32, 32],
                  "num_classes": 19}


def loaded_tiny(seed: int = 0, name: str | None = None, card: dict[str, Any] | None = None) -> Any:
    """A `LoadedModel` around `TinySeg`, as `zoo.load_model` would return it."""
    from attnprobe.zoo import LoadedModel, Preprocessing

    return LoadedModel(model=TinySeg(seed).eval(), name=name or f"tiny_seg_{seed}", arch="tiny_seg",
                       checkpoint_sha256=f"seed{seed}" + "0" * 58, checkpoint_path=None, preprocessing=Preprocessing(),
                       card={"task": "segmentation", "segmentation": dict(card or SYNTH_SEG_CARD)})


def direct_predictions(model: nn.Module, ds: Any, crop: tuple[int, int] = (48, 48),
                       stride: tuple[int, int] = (32, 32)) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(predictions, labels) of every readable sample, one image at a time, without the engine."""
    from attnprobe.segmentation import infer

    preds, gts = [], []
    with torch.inference_mode():
        for i in range(len(ds)):
            x, y, ok = ds[i]
            if not ok:
                continue
            if x.dtype == torch.uint8:
                x = ds.pipeline.normalize(x)
            logits = infer(model, x[None], mode="slide", crop=crop, stride=stride, output_size=tuple(y.shape))
            preds.append(logits.argmax(1)[0])
            gts.append(y)
    return preds, gts


def write_card(models_dir: Path, name: str, seed: int) -> Path:
    """A model card for `tiny_seg_arch` (registered in timm by `register_tiny_seg`)."""
    models_dir.mkdir(parents=True, exist_ok=True)
    seg = "\n".join(f"{k} = {v!r}".replace("'", '"') if not isinstance(v, list) else f"{k} = {v}"
                    for k, v in SYNTH_SEG_CARD.items())
    path = models_dir / f"{name}.toml"
    path.write_text(f'name = "{name}"\narch = "tiny_seg_arch"\ntask = "segmentation"\n\n[kwargs]\nseed = {seed}\n\n'
                    f"[segmentation]\n{seg}\n")
    return path


def register_tiny_seg() -> None:
    """Register `tiny_seg_arch` in timm (idempotent), so cards and the CLI can build `TinySeg`."""
    import timm.models

    if timm.models.is_model("tiny_seg_arch"):
        return

    def tiny_seg_arch(pretrained: bool = False, seed: int = 0, **kwargs: Any) -> nn.Module:
        for k in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(k, None)
        return TinySeg(seed=seed)

    timm.models.register_model(tiny_seg_arch)


def write_fan_card(models_dir: Path, name: str, tap: bool = True) -> Path:
    """A zoo card of a tiny (TAP-)FAN-Hybrid + SegFormer head for the synthetic 64 x 128 street scenes."""
    models_dir.mkdir(parents=True, exist_ok=True)
    arch = "segformer_tap_fan_base_16_p4_hybrid" if tap else "segformer_fan_base_16_p4_hybrid"
    path = models_dir / f"{name}.toml"
    path.write_text(
        f'name = "{name}"\narch = "{arch}"\ntask = "segmentation"\nmethod = "{"tapadl" if tap else "baseline"}"\n\n'
        f"[kwargs]\n{'num_scales = 4' if tap else ''}\nembed_dim = 32\ndepth = 2\nnum_heads = 4\n"
        "decoder_embed_dim = 32\nhead_channels = 16\nbackbone = { depths = [1, 1], dims = [16, 32, 64, 128] }\n\n"
        '[segmentation]\nimg_scale = [128, 64]\nmode = "slide"\ncrop_size = [64, 64]\nstride = [48, 48]\n')
    return path
