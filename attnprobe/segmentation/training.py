"""Segmentation as a task of `attnprobe train`: data, batches, loss, validation and card fields.

`attnprobe train --arch segformer_tap_fan_base_16_p4_hybrid --tap 4 --adl-weight 1 ...` trains a segmentation model
with loss = CE + lambda * ADL (the paper's equation): pixel-wise cross-entropy with ignore label 255, and the ADL of
every token-attention layer with the batch axis kept (`attnprobe.archs.adl.adl_loss`). NOTE: the official
segmentation code computes ADL on ``attn.mean(1).squeeze()`` with one image per GPU, which drops the batch axis and
makes the loss exactly 0 (see `shared/reference/segmentation/README.md`); ours is the per-image ADL of the paper.

Data: the synthetic street scenes (`attnprobe.data.synthetic_seg`, 64 x 128, default) or a Cityscapes root (`train`
for training, `val` for validation, through the official test pipeline's resize). Batches: a random
`img_size` x `img_size` crop per image (zero / ignore padding where the image is smaller) and a random horizontal
flip, seeded like the classification batches (so a resumed run continues bit-identically); not the official
mmseg training pipeline (no random rescale, no photometric distortion, no category-ratio re-crop).

Validation: mIoU (official rules), pixel accuracy and CE on the validation split with the model's own slide
inference (`test_cfg`: windows of `img_size`, stride 3/4 of it, as the official 1024 / 768).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attnprobe.errors import UserError

__all__ = ["SegmentationTask", "is_segmentation_arch"]

IGNORE = 255
#: The official normalisation (0-255 RGB).
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)


def is_segmentation_arch(arch: str) -> bool:
    """Whether a registered timm architecture builds one of our segmentation models."""
    import timm

    from attnprobe import zoo

    zoo._ensure_registered()
    return timm.is_model(arch) and timm.models.model_entrypoint(arch).__module__.startswith("attnprobe.segmentation")


class _Images(torch.utils.data.Dataset):
    """Images uint8 (3, H, W) and label maps uint8 (H, W): in memory (synthetic) or read lazily (Cityscapes)."""

    def __init__(self, images: torch.Tensor | None, labels: torch.Tensor | None, reader: Any = None,
                 fingerprint: str = "") -> None:
        self.images, self.labels, self.reader, self.fingerprint = images, labels, reader, fingerprint

    def __len__(self) -> int:
        return len(self.images) if self.images is not None else len(self.reader)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.images is not None:
            return self.images[i], self.labels[i]  # type: ignore[index]
        x, y, ok = self.reader[i]
        if not ok:
            raise UserError(f"unreadable training image or label {self.reader.sample_name(i)}; repair or remove it")
        if tuple(y.shape) != tuple(x.shape[-2:]):  # NOTE: labels follow the image through the resize (nearest)
            y = F.interpolate(y[None, None].float(), size=x.shape[-2:], mode="nearest")[0, 0].to(torch.uint8)
        return x, y


def _synthetic(split: str, n: int, seed: int) -> _Images:
    from attnprobe.data.synthetic_seg import SyntheticStreets

    ds = SyntheticStreets(split, n, seed=seed)
    rgb, labels = ds.arrays()
    return _Images(torch.from_numpy(rgb).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels),
                   fingerprint=ds.fingerprint)


def _cityscapes(root: str, split: str, limit: int | None) -> _Images:
    from attnprobe.data.cityscapes import CityscapesDataset

    ds = CityscapesDataset(root, split, output="uint8", limit=limit)
    return _Images(None, None, ds, ds.fingerprint)


def _random_crops(x: torch.Tensor, y: torch.Tensor, size: int, gen: torch.Generator
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """A random `size` x `size` crop and horizontal flip of each image (B, 3, H, W) and label map (B, H, W)."""
    b, _, h, w = x.shape
    if h < size or w < size:  # zero image / ignore label padding, as mmseg's Pad
        ph, pw = max(0, size - h), max(0, size - w)
        x = F.pad(x, (0, pw, 0, ph), value=0.0)
        y = F.pad(y, (0, pw, 0, ph), value=IGNORE)
        h, w = h + ph, w + pw
    tops = torch.randint(0, h - size + 1, (b,), generator=gen).tolist()
    lefts = torch.randint(0, w - size + 1, (b,), generator=gen).tolist()
    flips = (torch.rand(b, generator=gen) < 0.5).tolist()
    xs, ys = [], []
    for i in range(b):
        xi = x[i, :, tops[i]:tops[i] + size, lefts[i]:lefts[i] + size]  # (3, S, S)
        yi = y[i, tops[i]:tops[i] + size, lefts[i]:lefts[i] + size]  # (S, S)
        xs.append(xi.flip(-1) if flips[i] else xi)
        ys.append(yi.flip(-1) if flips[i] else yi)
    return torch.stack(xs), torch.stack(ys)


def _load_init(model: nn.Module, path: str) -> None:
    """Start from a segmentation checkpoint, or from an ImageNet classifier's weights for the backbone (the official
    recipe: `pretrained` backbone, new head); only entries that fit are taken (new TAP modules start fresh)."""
    from attnprobe import checkpoints

    state = checkpoints.read_state_dict(path)
    own = model.state_dict()
    if not any(k.startswith("backbone.") for k in state):  # NOTE: a classifier: its keys are the backbone's
        state = {f"backbone.{k}": v for k, v in state.items()}
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not fitting:
        raise UserError(f"no weight of {path} fits this segmentation model; pass a checkpoint of the same backbone")
    model.load_state_dict(fitting, strict=False)


class SegmentationTask:
    """What `attnprobe.train` needs from a segmentation run (see the module docstring).

    Args:
        cfg: the run's `TrainConfig` (`task="segmentation"`).
    """

    kind = "segmentation"

    def __init__(self, cfg: Any) -> None:
        from attnprobe.protocol import cityscapes_class_names

        if cfg.img_size % 16:
            raise UserError(f"--img-size {cfg.img_size}: segmentation crops must be a multiple of 16 pixels")
        self.cfg = cfg
        if cfg.data is None:
            self.train_ds = _synthetic("train", cfg.train_images, cfg.data_seed)
            self.val_ds = _synthetic("val", cfg.val_images, cfg.data_seed)
        else:
            self.train_ds = _cityscapes(cfg.data, "train", None)
            self.val_ds = _cityscapes(cfg.data, "val", cfg.val_images)
        self.classes = cityscapes_class_names()

    # -- the model ---------------------------------------------------------------------------------------------
    @property
    def test_cfg(self) -> dict[str, Any]:
        s = int(self.cfg.img_size)
        return {"mode": "slide", "crop_size": [s, s], "stride": [s * 3 // 4, s * 3 // 4]}

    def model_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"num_classes": len(self.classes), "test_cfg": self.test_cfg}
        if self.cfg.tap is not None:
            kwargs["num_scales"] = self.cfg.tap
        kwargs.update(self.cfg.model_kwargs)
        return kwargs

    def build(self) -> nn.Module:
        from attnprobe.segmentation.model import SEGMENTORS
        from attnprobe.train import _build_model

        if not is_segmentation_arch(self.cfg.arch):
            raise UserError(f"{self.cfg.arch!r} is not a segmentation architecture; use one of "
                            f"{', '.join(SEGMENTORS)}, or --task classification")
        from dataclasses import replace

        model = _build_model(replace(self.cfg, init=None), len(self.classes), self.model_kwargs())
        if self.cfg.init:
            _load_init(model, self.cfg.init)
        return model

    def preprocessing(self, model: nn.Module) -> dict[str, Any]:
        """The classification-style summary of the card (fractions); the protocol is in `card_fields`."""
        return {"input_size": int(self.cfg.img_size), "interpolation": "bilinear", "crop_pct": 1.0,
                "mean": [round(m / 255, 6) for m in MEAN], "std": [round(s / 255, 6) for s in STD]}

    # -- training ----------------------------------------------------------------------------------------------
    def batch(self, idx: Sequence[int], gen: torch.Generator, pre: dict[str, Any], device: torch.device
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Random crops and flips of the images `idx`, normalised as the test pipeline does, on `device`."""
        from attnprobe.data.seg_transforms import normalize_on_device

        ds = self.train_ds
        if ds.images is not None:
            x, y = ds.images[list(idx)], ds.labels[list(idx)]  # type: ignore[index]
            x, y = _random_crops(x, y, self.cfg.img_size, gen)
        else:
            pairs = [_random_crops(*(t[None] for t in ds[i]), self.cfg.img_size, gen) for i in idx]
            x, y = torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
        return normalize_on_device(x.to(device), MEAN, STD), y.to(device).long()

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Pixel-wise cross-entropy, ignored pixels (255) left out (mean over the others)."""
        return F.cross_entropy(logits, y, ignore_index=IGNORE)

    # -- validation --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model: nn.Module, pre: dict[str, Any], device: torch.device, batch_size: int = 16
                 ) -> dict[str, float]:
        """mIoU, pixel accuracy (`accuracy`), CE (`loss`) and ADL (no weight) on the validation split, eval mode."""
        from attnprobe.archs.adl import adl_loss
        from attnprobe.data.seg_transforms import normalize_on_device
        from attnprobe.segmentation import IoUAccumulator, infer
        from attnprobe.train import AttentionRecorder, _null

        was_training = model.training
        model.eval()
        acc = IoUAccumulator(len(self.classes), IGNORE)
        rec = AttentionRecorder(model)
        loss_sum = pixels = adl_sum = 0.0
        n = 0
        with rec if rec.modules else _null():
            for start in range(0, len(self.val_ds), batch_size):
                items = [self.val_ds[i] for i in range(start, min(start + batch_size, len(self.val_ds)))]
                x = normalize_on_device(torch.stack([t[0] for t in items]).to(device), MEAN, STD)
                y = torch.stack([t[1] for t in items]).to(device).long()
                logits = infer(model, x, output_size=tuple(y.shape[-2:]))
                acc.update(logits.argmax(1), y)
                valid = int((y != IGNORE).sum())
                loss_sum += F.cross_entropy(logits, y, ignore_index=IGNORE, reduction="sum").item()
                pixels += valid
                if rec.modules:
                    adl_sum += adl_loss(rec.pop(), self.cfg.adl_tau, self.cfg.adl_variant).item() * len(items)
                n += len(items)
        model.train(was_training)
        m = acc.compute()
        return {"loss": loss_sum / max(pixels, 1.0), "accuracy": float(m["aacc"]), "miou": float(m["miou"]),
                "adl": adl_sum / n if rec.modules else float("nan")}

    # -- the card ------------------------------------------------------------------------------------------------
    def card_fields(self) -> dict[str, Any]:
        """The segmentation part of the model card (the protocol `attnprobe seg` evaluates with)."""
        synthetic = self.cfg.data is None
        scale = [128, 64] if synthetic else [2048, 1024]
        return {
            "task": "segmentation",
            "family": "demo-seg" if synthetic else "fan",
            "description": ("Tiny FAN-Hybrid segmentation model (SegFormer head) trained by `attnprobe train` on the "
                            "synthetic street scenes; a demo model, not a Cityscapes model." if synthetic
                            else f"Segmentation model trained by `attnprobe train` on {self.cfg.data}."),
            "data": {"dataset": "synthetic-streets" if synthetic else str(self.cfg.data),
                     "classes": list(self.classes)},
            "segmentation": {"dataset": "synthetic-streets" if synthetic else "cityscapes",
                             "num_classes": len(self.classes), "ignore_index": IGNORE, "img_scale": scale,
                             "keep_ratio": True, "mean": list(MEAN), "std": list(STD), "to_rgb": True,
                             **self.test_cfg, "align_corners": False},
        }
