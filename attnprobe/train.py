"""Training and fine-tuning with TAP and ADL: loss = CE + lambda * ADL (Guo et al., ICCV 2023, Eq. (3)).

One function, `train(config)`, trains any architecture that follows the attnprobe attention contract (the tiny demo
ViT, our FAN/RVT variants, a timm ViT) on the synthetic "textured shapes" set or on any ImageFolder, with or
without TAP (constructor kwarg ``num_scales`` = K) and ADL (``adl_weight`` = lambda, ``adl_tau`` = tau).

ADL needs the post-softmax maps with their gradients. They are taken where every tool of attnprobe takes them: the
token-attention modules run their explicit path (``fused_attn = False``) and a forward pre-hook on ``attn_drop``
keeps its input. Hooks cost a few Python calls per layer; without ADL the fused kernel is used.

A run lives in one folder::

    <out>/checkpoint.pt          full training state (model, optimizer, scheduler, RNG, position), atomically replaced
    <out>/log.jsonl              one JSON line per finished epoch (train/val loss, accuracy, ADL, lr, seconds)
    <out>/<name>.safetensors     final weights (written when the run finishes)
    <out>/<name>.toml            model card for the zoo (arch, kwargs, checkpoint sha256, preprocessing, hparams,
                                 the exact command and seed)

Determinism: the data order of epoch e is a permutation seeded by (seed, e), augmentation of step s is seeded by
(seed, e, s, rank), and the global torch RNG (drop-path) is saved in every checkpoint; so a run resumed from its
checkpoint ends with the same weights as an uninterrupted one (on the same machine and thread count).

Distributed: under ``torchrun`` every rank takes ``batch[rank::world]`` of each global batch (DDP, gloo on CPU, nccl
on GPU); only rank 0 writes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from attnprobe import distributed as D
from attnprobe.errors import UserError
from attnprobe.jsonsafe import dumps
from attnprobe.outdir import check_output_folder

__all__ = [
    "TrainConfig",
    "TrainResult",
    "AttentionRecorder",
    "default_run_name",
    "evaluate_split",
    "install_model",
    "load_images",
    "stored_config",
    "train",
    "write_card",
]

DEMO_ARCH = "attnprobe_demo_vit_tiny"
CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"

# Fields of TrainConfig that do not change the computation; a resumed run may differ in them.
_NON_IDENTITY = {"out", "threads", "save_every", "workers", "device", "command", "name"}


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved in the checkpoint and the model card).

    Attributes:
        arch: timm architecture name (the demo ViT by default; any model following the attention contract).
        task: "classification", "segmentation" (a segmentation architecture, e.g.
            ``segformer_tap_fan_base_16_p4_hybrid``: CE over pixels with ignore label 255 + lambda * ADL, on the
            synthetic street scenes or a Cityscapes root), or "auto" (segmentation for segmentation architectures).
        tap: TAP branches K passed as the ``num_scales`` kwarg; None leaves the architecture's default.
        adl_weight: lambda of the ADL term (0 disables ADL).
        adl_tau: ADL threshold factor tau.
        adl_variant: "official" (released code) or "paper" (Eq. (1)-(2)); see `attnprobe.archs.adl`.
        data: an ImageFolder root (with ``train/`` and ``val/`` subfolders, or one folder from which 10 % is held
            out); None uses the synthetic set.
        img_size: training resolution.
        train_images, val_images: size of the synthetic splits (ignored with ``data``).
        data_seed: seed of the synthetic set (the bundled demo models use 0).
        epochs: training epochs.
        batch_size: global batch size (split across ranks under torchrun).
        lr: peak AdamW learning rate (cosine schedule after a linear warm-up).
        weight_decay: AdamW weight decay.
        warmup_epochs: linear warm-up length.
        label_smoothing: of the cross-entropy.
        seed: seeds the model initialisation, the data order and the augmentation.
        model_kwargs: extra constructor kwargs (e.g. ``{"embed_dim": 64, "depth": 4}``; CLI ``--model-arg k=v``).
        init: optional weights to start from (fine-tuning); loaded non-strictly (new TAP modules and a new head
            are initialised fresh).
        name: run/model name (default derived from arch, TAP and ADL, e.g. ``demo_vit_tapadl``).
        out: run folder.
        save_every: also checkpoint every N optimizer steps (0: only at the end of each epoch).
        threads: torch intra-op threads (None: torch's default).
        workers: DataLoader workers for ImageFolder data.
        device: "cpu", "cuda" (default: CUDA when available).
        command: the command line that started the run (recorded in the card).
    """

    arch: str = DEMO_ARCH
    task: str = "auto"
    tap: int | None = None
    adl_weight: float = 0.0
    adl_tau: float = 2.0
    adl_variant: str = "official"
    data: str | None = None
    img_size: int = 64
    train_images: int = 6000
    val_images: int = 1000
    data_seed: int = 0
    epochs: int = 10
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    seed: int = 0
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    init: str | None = None
    name: str | None = None
    out: str = "runs/train"
    save_every: int = 0
    threads: int | None = None
    workers: int = 2
    device: str | None = None
    command: str = ""

    def to_command(self) -> str:
        """The `attnprobe train` command that reproduces this run (options that differ from the defaults)."""
        flags = {"arch": "--arch", "task": "--task", "tap": "--tap", "adl_weight": "--adl-weight",
                 "adl_tau": "--adl-tau",
                 "adl_variant": "--adl-variant", "data": "--data", "img_size": "--img-size",
                 "train_images": "--train-images", "val_images": "--val-images", "epochs": "--epochs",
                 "batch_size": "--batch-size", "lr": "--lr", "weight_decay": "--weight-decay",
                 "warmup_epochs": "--warmup-epochs", "seed": "--seed", "init": "--init", "name": "--name"}
        default = TrainConfig()
        parts = ["attnprobe", "train"]
        for attr, flag in flags.items():
            value = getattr(self, attr)
            if value is not None and (value != getattr(default, attr) or attr in ("epochs", "seed")):
                parts += [flag, shlex.quote(str(value))]
        if self.data is None and self.data_seed != default.data_seed:
            parts.append(f"# synthetic data seed {self.data_seed} (library option data_seed)")
        if self.threads:  # not part of the run's identity, but float results can depend on it
            parts += ["--threads", str(self.threads)]
        for k, v in self.model_kwargs.items():
            parts += ["--model-arg", shlex.quote(f"{k}={json.dumps(v) if not isinstance(v, str) else v}")]
        return " ".join(parts)

    def identity(self) -> dict[str, Any]:
        """The fields that define the computation (a resumed run must match them)."""
        return {k: v for k, v in asdict(self).items() if k not in _NON_IDENTITY}


@dataclass
class TrainResult:
    """What a finished (or stopped) run reports."""

    name: str
    out: str
    finished: bool
    epoch: int
    step: int
    val_accuracy: float
    val_loss: float
    val_adl: float
    train_loss: float
    train_ce: float
    train_adl: float
    seconds: float
    weights: str | None = None
    card: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    val_miou: float | None = None  # segmentation runs


def default_run_name(arch: str, tap: int | None, adl_weight: float) -> str:
    """``demo_vit_baseline`` / ``demo_vit_tap`` / ``demo_vit_adl`` / ``demo_vit_tapadl`` (arch stem for others)."""
    stem = "demo_vit" if arch == DEMO_ARCH else arch
    suffix = ("tap" if tap and tap > 1 else "") + ("adl" if adl_weight > 0 else "")
    return f"{stem}_{suffix or 'baseline'}"


# --------------------------------------------------------------------------------------------------------------
# Attention recording for ADL
# --------------------------------------------------------------------------------------------------------------


class AttentionRecorder:
    """Keeps the post-softmax token-attention maps of every forward pass (with their autograd graph).

    Use as a context manager: it switches every ``attention_kind == "token"`` module to the explicit path and
    hooks its ``attn_drop``; on exit it restores the ``fused_attn`` flags and removes the hooks.
    """

    def __init__(self, model: nn.Module) -> None:
        self.modules = [m for m in model.modules()
                        if getattr(m, "attention_kind", None) == "token" and hasattr(m, "attn_drop")]
        self.maps: list[torch.Tensor] = []
        self._handles: list[Any] = []
        self._flags: list[bool] = []

    def _hook(self, _module: nn.Module, args: tuple[Any, ...]) -> None:
        self.maps.append(args[0])

    def __enter__(self) -> AttentionRecorder:
        if not self.modules:
            raise UserError("this model has no token-attention modules (attention_kind = 'token'), so ADL cannot "
                            "be applied; use --adl-weight 0 or an architecture from attnprobe.archs")
        for m in self.modules:
            self._flags.append(bool(getattr(m, "fused_attn", False)))
            m.fused_attn = False
            self._handles.append(m.attn_drop.register_forward_pre_hook(self._hook))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        for m, flag in zip(self.modules, self._flags):
            m.fused_attn = flag
        self._handles, self._flags = [], []

    def pop(self) -> list[torch.Tensor]:
        """The maps recorded since the last call, in layer order."""
        maps, self.maps = self.maps, []
        return maps


# --------------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------------


class _UInt8Images(torch.utils.data.Dataset):
    """Images as uint8 (3, S, S) tensors and int labels; in memory (synthetic) or read lazily (ImageFolder)."""

    def __init__(self, images: torch.Tensor | None, targets: Sequence[int], classes: Sequence[str],
                 folder: Any = None, size: int = 64, fingerprint: str = "") -> None:
        self.images = images
        self.targets = list(targets)
        self.classes = list(classes)
        self.folder = folder
        self.size = size
        self.fingerprint = fingerprint

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if self.images is not None:
            return self.images[i], self.targets[i]
        from PIL import Image
        from torchvision.transforms import functional as TF

        path, target = self.folder.samples[i]
        with Image.open(path) as im:
            im = im.convert("RGB")
        im = TF.center_crop(TF.resize(im, self.size, interpolation=TF.InterpolationMode.BILINEAR), self.size)
        return TF.pil_to_tensor(im), target


def load_images(cfg: TrainConfig) -> tuple[_UInt8Images, _UInt8Images]:
    """The (train, val) datasets of a run: synthetic, ``data/train`` + ``data/val``, or one folder split 90/10."""
    if cfg.data is None:
        from attnprobe.data.synthetic import CLASSES, SyntheticShapes

        out = []
        for split, n in (("train", cfg.train_images), ("val", cfg.val_images)):
            ds = SyntheticShapes(split, num_images=n, size=cfg.img_size, seed=cfg.data_seed)
            x, y = ds.tensors()
            out.append(_UInt8Images(x, y.tolist(), CLASSES, size=cfg.img_size, fingerprint=ds.fingerprint))
        return out[0], out[1]

    from torchvision.datasets import ImageFolder

    root = Path(cfg.data).expanduser()
    if not root.is_dir():
        raise UserError(f"data folder not found: {root}; pass an ImageFolder root (class subfolders, or train/ and "
                        "val/ each with class subfolders) to --data, or leave --data out for the synthetic set")
    try:
        if (root / "train").is_dir() and (root / "val").is_dir():
            tr, va = ImageFolder(str(root / "train")), ImageFolder(str(root / "val"))
            if tr.classes != va.classes:
                raise UserError(f"{root}/train and {root}/val have different class folders; make them match")
            return (_UInt8Images(None, tr.targets, tr.classes, tr, cfg.img_size, f"folder:{root}/train"),
                    _UInt8Images(None, va.targets, va.classes, va, cfg.img_size, f"folder:{root}/val"))
        full = ImageFolder(str(root))
    except (FileNotFoundError, RuntimeError) as e:
        raise UserError(f"{root} is not an ImageFolder ({str(e).splitlines()[0]}); it needs one subfolder of images "
                        "per class") from None
    g = torch.Generator().manual_seed(cfg.data_seed)
    perm = torch.randperm(len(full), generator=g).tolist()
    n_val = max(1, len(full) // 10)
    val_idx, train_idx = sorted(perm[:n_val]), sorted(perm[n_val:])

    def subset(idx: list[int], tag: str) -> _UInt8Images:
        sub = ImageFolder.__new__(ImageFolder)
        sub.samples = [full.samples[i] for i in idx]
        return _UInt8Images(None, [full.targets[i] for i in idx], full.classes, sub, cfg.img_size,
                            f"folder:{root}:{tag}:seed={cfg.data_seed}")

    return subset(train_idx, "train90"), subset(val_idx, "val10")


def _augment(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random horizontal flip and random translation (reflect padding) of a float batch (B, 3, S, S)."""
    B, _, S, _ = x.shape
    flip = torch.rand(B, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    offs = torch.randint(0, 2 * pad + 1, (B, 2), generator=gen).tolist()
    return torch.stack([padded[i, :, dy:dy + S, dx:dx + S] for i, (dy, dx) in enumerate(offs)])


def _normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


# --------------------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------------------


def _model_kwargs(cfg: TrainConfig, num_classes: int) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if cfg.tap is not None:
        kwargs["num_scales"] = cfg.tap
    kwargs["img_size"] = cfg.img_size
    kwargs.update(cfg.model_kwargs)
    return kwargs


def _build_model(cfg: TrainConfig, num_classes: int, kwargs: dict[str, Any] | None = None) -> nn.Module:
    import timm

    from attnprobe import zoo

    zoo._ensure_registered()
    if not timm.is_model(cfg.arch):
        raise UserError(f"unknown architecture {cfg.arch!r}; use a timm name such as {DEMO_ARCH} or "
                        "tap_fan_tiny_12_p16_224 (see `attnprobe models`)")
    kwargs = dict(kwargs) if kwargs is not None else _model_kwargs(cfg, num_classes)
    try:
        try:
            model = timm.create_model(cfg.arch, pretrained=False, **kwargs)
        except TypeError as e:
            if "img_size" not in kwargs or "img_size" in cfg.model_kwargs or "img_size" not in str(e):
                raise
            kwargs.pop("img_size")  # an architecture without an input-size argument
            model = timm.create_model(cfg.arch, pretrained=False, **kwargs)
    except TypeError as e:
        raise UserError(f"cannot build {cfg.arch!r} with {kwargs} ({e}); --tap needs an architecture with a "
                        "num_scales argument (the demo ViT, FAN or RVT from attnprobe.archs)") from None
    if cfg.tap is not None and cfg.tap > 1:
        from attnprobe.archs.tap import TokenAwarePooling

        if not any(isinstance(m, TokenAwarePooling) for m in model.modules()):
            hint = f"tap_{cfg.arch}" if timm.is_model(f"tap_{cfg.arch}") else "a TAP architecture"
            raise UserError(f"--tap {cfg.tap} has no effect on {cfg.arch!r} (it builds no TAP modules); use "
                            f"--arch {hint}")
    if cfg.init:
        from attnprobe import checkpoints

        state = checkpoints.read_state_dict(cfg.init)
        own = model.state_dict()
        # NOTE: fine-tuning adds TAP modules and may change the head; keep only entries that fit.
        fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        if not fitting:
            raise UserError(f"no weight of {cfg.init} fits {cfg.arch!r}; check --arch")
        model.load_state_dict(fitting, strict=False)
    return model


def _preprocessing(model: nn.Module, cfg: TrainConfig) -> dict[str, Any]:
    from attnprobe.archs.demo_vit import DEMO_MEAN, DEMO_STD

    pcfg = getattr(model, "pretrained_cfg", None) or {}
    mean = tuple(pcfg.get("mean", DEMO_MEAN)) if cfg.arch != DEMO_ARCH else DEMO_MEAN
    std = tuple(pcfg.get("std", DEMO_STD)) if cfg.arch != DEMO_ARCH else DEMO_STD
    return {"input_size": cfg.img_size, "interpolation": "bilinear", "crop_pct": 1.0,
            "mean": [float(v) for v in mean], "std": [float(v) for v in std]}


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_lambda(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))

    return f


# --------------------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_split(model: nn.Module, ds: torch.utils.data.Dataset, pre: dict[str, Any], adl_tau: float = 2.0,
                   adl_variant: str = "official", batch_size: int = 250, device: torch.device | None = None,
                   workers: int = 0) -> dict[str, float]:
    """Loss, top-1 accuracy and ADL (no weight) of ``model`` on a uint8 image dataset, in eval mode.

    Returns:
        ``{"loss", "accuracy", "adl"}`` (accuracy as a fraction; adl is NaN for a model without token attention).
    """
    from attnprobe.archs.adl import adl_loss

    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers)
    rec = AttentionRecorder(model)
    n, loss_sum, correct, adl_sum = 0, 0.0, 0, 0.0
    ctx = rec if rec.modules else _null()
    with ctx:
        for x, y in loader:
            x = _normalize(x.to(device).float() / 255.0, pre["mean"], pre["std"])
            y = y.to(device)
            logits = model(x)
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(-1) == y).sum().item()
            if rec.modules:
                adl_sum += adl_loss(rec.pop(), adl_tau, adl_variant).item() * len(y)
            n += len(y)
    model.train(was_training)
    return {"loss": loss_sum / n, "accuracy": correct / n, "adl": adl_sum / n if rec.modules else float("nan")}


@contextmanager
def _null() -> Iterator[None]:
    yield


# --------------------------------------------------------------------------------------------------------------
# Checkpoints and cards
# --------------------------------------------------------------------------------------------------------------


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        if isinstance(v, float) and not math.isfinite(v):
            return '"nan"'
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):  # an inline table, e.g. a nested constructor argument
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items() if x is not None) + " }"
    if v is None:
        return '""'
    return json.dumps(str(v), ensure_ascii=False)  # a JSON string is a valid TOML basic string


def _toml(card: dict[str, Any]) -> str:
    lines = [f"{k} = {_toml_value(v)}" for k, v in card.items() if not isinstance(v, dict)]
    for section, body in card.items():
        if isinstance(body, dict):
            lines += ["", f"[{section}]"] + [f"{k} = {_toml_value(v)}" for k, v in body.items() if v is not None]
    return "\n".join(lines) + "\n"


def _title(cfg: TrainConfig, name: str) -> str:
    """'Demo ViT (+TAP & ADL)'; K and lambda are named when they differ from the paper's 4 and 1."""
    tap, adl = bool(cfg.tap and cfg.tap > 1), cfg.adl_weight > 0
    parts = [p for p, on in (("TAP", tap), ("ADL", adl)) if on]
    extra = ([f"K={cfg.tap}"] if tap and cfg.tap != 4 else []) + ([f"λ={cfg.adl_weight:g}"] if adl and
                                                                   cfg.adl_weight != 1 else [])
    base = ("Demo ViT" if cfg.arch == DEMO_ARCH else "Demo FAN-Seg" if cfg.task == "segmentation" and cfg.data is None
            else cfg.arch)
    label = "+" + " & ".join(parts) if parts else "baseline"
    return f"{base} ({label}{', ' + ', '.join(extra) if extra else ''})"


def _method(card: dict[str, Any]) -> str:
    hp = card.get("hparams", {})
    tap, adl = int(hp.get("num_scales", 1)) > 1, float(hp.get("adl_weight", 0.0)) > 0
    return "tapadl" if tap and adl else "tap" if tap else "adl" if adl else "baseline"


def write_card(path: Path, cfg: TrainConfig, name: str, weights_file: str, sha256: str, kwargs: dict[str, Any],
               pre: dict[str, Any], classes: Sequence[str], metrics: dict[str, Any], world_size: int = 1,
               extra: dict[str, Any] | None = None) -> None:
    """Write a zoo model card (TOML) for a trained model (`extra`: the task's own fields, e.g. `[segmentation]`)."""
    card = {
        "name": name,
        "title": _title(cfg, name),
        "label": _title(cfg, name),
        "method": "",
        "arch": cfg.arch,
        "family": "demo" if cfg.arch == DEMO_ARCH else "custom",
        "description": ("Tiny ViT trained on the synthetic textured-shapes set by `attnprobe train`; a demo model, "
                        "not an ImageNet model." if cfg.data is None
                        else f"Trained by `attnprobe train` on {cfg.data}."),
        "kwargs": kwargs,
        "checkpoint": {"file": weights_file, "sha256": sha256},
        "preprocessing": pre,
        "hparams": {"num_scales": int(cfg.tap or 1), "adl_weight": float(cfg.adl_weight),
                    "adl_tau": float(cfg.adl_tau)},
        "data": {"dataset": "synthetic-shapes" if cfg.data is None else str(cfg.data),
                 "classes": list(classes)},
        "training": {"command": cfg.command or cfg.to_command(), "seed": cfg.seed, "data_seed": cfg.data_seed,
                     "epochs": cfg.epochs,
                     "batch_size": cfg.batch_size, "lr": cfg.lr, "weight_decay": cfg.weight_decay,
                     "adl_variant": cfg.adl_variant, "world_size": world_size, "threads": cfg.threads or 0,
                     "torch": torch.__version__},
        "results": metrics,
    }
    card.update(extra or {})
    card["method"] = _method(card)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(_toml(card), encoding="utf-8")
    os.replace(tmp, path)


def install_model(run_dir: str | Path, models_dir: str | Path, subdir: str = "demo", half: bool = False) -> Path:
    """Copy a finished run's weights to ``models_dir/subdir/`` and its card to ``models_dir/`` (zoo layout).

    Args:
        run_dir: the run folder (``--out`` of `train`).
        models_dir: the zoo folder (``models/``).
        subdir: folder for the weights, relative to ``models_dir``.
        half: store the weights as float16 (halves the size).

    Returns:
        Path of the installed card.
    """
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    from safetensors.torch import load_file, save_file

    from attnprobe.checkpoints import file_sha256

    run_dir, models_dir = Path(run_dir), Path(models_dir)
    cards = sorted(run_dir.glob("*.toml"))
    if not cards:
        raise UserError(f"{run_dir} has no model card; the run has not finished (rerun `attnprobe train --resume`)")
    with open(cards[0], "rb") as f:
        card = tomllib.load(f)
    name = card["name"]
    state = load_file(str(run_dir / card["checkpoint"]["file"]))
    if half:
        state = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}
    (models_dir / subdir).mkdir(parents=True, exist_ok=True)
    dest = models_dir / subdir / f"{name}.safetensors"
    save_file(state, str(dest), metadata={"name": name})
    os.chmod(dest, 0o644)
    card["checkpoint"] = {"file": f"{subdir}/{name}.safetensors", "sha256": file_sha256(dest)}
    if (run_dir / CHECKPOINT).is_file():  # the canonical command, whatever command line or script started the run
        run_cfg = stored_config(run_dir)
        card.setdefault("training", {})["command"] = run_cfg.to_command()
        card["title"] = card["label"] = _title(run_cfg, name)
        card["training"].setdefault("world_size", 1)
        card["training"].setdefault("threads", run_cfg.threads or 0)
    card.setdefault("label", card.get("title", name))
    card.setdefault("method", _method(card))
    out = models_dir / f"{name}.toml"
    out.write_text(_toml(card), encoding="utf-8")
    return out


# --------------------------------------------------------------------------------------------------------------
# Tasks: what differs between classification and segmentation (data, batches, loss, validation, card)
# --------------------------------------------------------------------------------------------------------------


class _ClassificationTask:
    """Image classification: the synthetic shapes or an ImageFolder, CE with label smoothing, top-1 accuracy."""

    kind = "classification"

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.train_ds, self.val_ds = load_images(cfg)
        self.classes = self.train_ds.classes

    def model_kwargs(self) -> dict[str, Any]:
        return _model_kwargs(self.cfg, len(self.classes))

    def build(self) -> nn.Module:
        return _build_model(self.cfg, len(self.classes))

    def preprocessing(self, model: nn.Module) -> dict[str, Any]:
        return _preprocessing(model, self.cfg)

    def batch(self, idx: Sequence[int], gen: torch.Generator, pre: dict[str, Any], device: torch.device
              ) -> tuple[torch.Tensor, torch.Tensor]:
        ds = self.train_ds
        x = torch.stack([ds[i][0] for i in idx]) if ds.images is None else ds.images[idx]
        y = torch.tensor([ds.targets[i] for i in idx]).to(device)
        return _normalize(_augment(x.float() / 255.0, gen), pre["mean"], pre["std"]).to(device), y

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y, label_smoothing=self.cfg.label_smoothing)

    def evaluate(self, model: nn.Module, pre: dict[str, Any], device: torch.device) -> dict[str, float]:
        return evaluate_split(model, self.val_ds, pre, self.cfg.adl_tau, self.cfg.adl_variant, device=device)

    def card_fields(self) -> dict[str, Any]:
        return {}


def resolve_task(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with `task` decided: "auto" becomes "segmentation" for a segmentation architecture."""
    if cfg.task not in ("auto", "classification", "segmentation"):
        raise UserError(f"unknown task {cfg.task!r}; choose one of: auto, classification, segmentation")
    if cfg.task != "auto":
        return cfg
    from attnprobe.segmentation.training import is_segmentation_arch

    return dataclasses.replace(cfg, task="segmentation" if is_segmentation_arch(cfg.arch) else "classification")


def _make_task(cfg: TrainConfig) -> Any:
    if cfg.task == "segmentation":
        from attnprobe.segmentation.training import SegmentationTask

        return SegmentationTask(cfg)
    return _ClassificationTask(cfg)


# --------------------------------------------------------------------------------------------------------------
# The training loop
# --------------------------------------------------------------------------------------------------------------


def _epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Global batches of epoch ``epoch`` (the last incomplete batch is dropped)."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    return [perm[i:i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]


def _check_config(cfg: TrainConfig) -> None:
    if cfg.epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {cfg.epochs}")
    if cfg.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {cfg.batch_size}")
    if cfg.adl_weight < 0:
        raise UserError(f"--adl-weight must be >= 0, got {cfg.adl_weight}")
    if cfg.adl_tau <= 0:
        raise UserError(f"--adl-tau must be positive, got {cfg.adl_tau}")
    if cfg.tap is not None and cfg.tap < 0:
        raise UserError(f"--tap K must be >= 0 (0 or 1: no TAP), got {cfg.tap}")
    if cfg.adl_variant not in ("official", "paper"):
        raise UserError(f"unknown ADL variant {cfg.adl_variant!r}; choose one of: official, paper")
    if cfg.init and not Path(cfg.init).expanduser().is_file():
        raise UserError(f"--init {cfg.init}: no such file; pass the checkpoint to fine-tune from")
    if cfg.save_every < 0:
        raise UserError(f"--save-every must be >= 0 (0: only at the end of each epoch), got {cfg.save_every}")
    if cfg.img_size % 8:
        raise UserError(f"--img-size must be a multiple of 8, got {cfg.img_size}")


def train(cfg: TrainConfig, resume: bool = False, progress: Callable[[dict[str, Any]], None] | None = None,
          stop_after_steps: int | None = None) -> TrainResult:
    """Train (or resume) a run; see the module docstring.

    Args:
        cfg: the run's configuration.
        resume: continue the run in ``cfg.out`` from its checkpoint (a finished run is returned as is); a folder
            without a checkpoint is refused. Without it, a folder that already holds a run is refused, so no run is
            ever overwritten. `stored_config` reads the settings of a run to resume.
        progress: called with a dict after every optimizer step (``kind="step"``) and epoch (``kind="epoch"``).
        stop_after_steps: stop (after checkpointing) once this many optimizer steps of the run are done, as if
            interrupted; for tests and time-boxed jobs.

    Returns:
        The run's result; ``finished`` is False when it stopped early.
    """
    _check_config(cfg)
    cfg = resolve_task(cfg)
    check_output_folder(cfg.out)
    ctx = D.init_from_env(device=cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out).expanduser()
    state = _saved_state(cfg, out, resume)
    trainer = _Trainer(cfg, ctx, out, progress, stop_after_steps)  # reads data and --init: bad input fails here
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
    if state is not None:
        trainer.restore(state)
    with trainer.recording():
        while trainer.epoch < cfg.epochs and not trainer.stopped:
            if not trainer.run_epoch():
                break
            trainer.end_epoch()
    return trainer.result()


def _saved_state(cfg: TrainConfig, out: Path, resume: bool) -> dict[str, Any] | None:
    """The checkpoint of the run in ``out`` when resuming it (its settings must match ``cfg``), else None."""
    ckpt_path = out / CHECKPOINT
    if not ckpt_path.exists():
        if resume:
            raise UserError(_nothing_to_resume(out))
        return None
    if not resume:
        raise UserError(f"{out} already holds a training run; pass --resume to continue it, or choose another --out")
    state = _read_checkpoint(ckpt_path)
    old = state["config"]
    diff = {k: (old.get(k), v) for k, v in cfg.identity().items() if old.get(k) != v}
    if diff:
        first = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(diff.items())[:3])
        raise UserError(f"--resume with different settings than the run in {out} ({first}); use the original "
                        "options or another --out")
    return state


def _nothing_to_resume(out: Path) -> str:
    what = ("does not exist" if not out.exists() else "is a file, not a run folder" if not out.is_dir()
            else f"holds no {CHECKPOINT}")
    return (f"nothing to resume: {out} {what}; check --out, or start the run without --resume")


def _read_checkpoint(path: Path) -> dict[str, Any]:
    """A training checkpoint written by `_Trainer.save` (a one-line error for anything else)."""
    try:
        # NOTE: mmap: reading the config of a large run does not load its weights and optimizer state
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file fails in many ways inside torch
        raise UserError(f"cannot read {path} ({type(e).__name__}); it is not a complete checkpoint of "
                        f"`attnprobe train`; restore it or start a new run in another --out") from None
    if not isinstance(state, dict) or not isinstance(state.get("config"), dict) or "model" not in state:
        raise UserError(f"{path} is not a checkpoint of `attnprobe train`; choose another --out")
    return state


def stored_config(out: str | Path) -> TrainConfig:
    """The configuration of the run in ``out``, read from its checkpoint (what ``train --resume`` reuses).

    Raises:
        UserError: ``out`` holds no run, or an unreadable checkpoint.
    """
    out = Path(out).expanduser()
    path = out / CHECKPOINT
    if not path.is_file():
        raise UserError(_nothing_to_resume(out))
    saved = _read_checkpoint(path)["config"]
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in saved.items() if k in known})


class _Trainer:
    """One training run: model, optimizer, schedule and position, advanced an epoch at a time."""

    def __init__(self, cfg: TrainConfig, ctx: Any, out: Path, progress: Callable[[dict[str, Any]], None] | None,
                 stop_after_steps: int | None) -> None:
        self.cfg, self.ctx, self.out = cfg, ctx, out
        self.progress, self.stop_after_steps = progress, stop_after_steps
        self.name = cfg.name or default_run_name(cfg.arch, cfg.tap, cfg.adl_weight)
        self.task = _make_task(cfg)
        self.train_ds, self.val_ds = self.task.train_ds, self.task.val_ds
        torch.manual_seed(cfg.seed)
        self.model = self.task.build().to(ctx.device)
        self.pre = self.task.preprocessing(self.model)
        self.opt = torch.optim.AdamW(_param_groups(self.model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.999))
        self.steps_per_epoch = len(self.train_ds) // cfg.batch_size
        if self.steps_per_epoch < 1:
            raise UserError(f"the training set has {len(self.train_ds)} images, fewer than one batch of "
                            f"{cfg.batch_size}; lower --batch-size")
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, _lr_lambda(self.total_steps, int(cfg.warmup_epochs * self.steps_per_epoch)))
        self.history: list[dict[str, Any]] = []
        self.epoch, self.step_in_epoch, self.elapsed = 0, 0, 0.0
        self.sums = torch.zeros(4, dtype=torch.float64)  # loss, ce, adl, samples of this epoch (this rank)
        self._resumed_sums: torch.Tensor | None = None
        self._ddp: nn.Module | None = None
        self.recorder = AttentionRecorder(self.model) if cfg.adl_weight > 0 else None
        self.stopped = False  # `stop_after_steps` was reached
        self.t0 = time.monotonic()

    # -- state ---------------------------------------------------------------------------------------------------
    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint written by `save` (bit-identical continuation on the same machine)."""
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and self.ctx.device.type == "cuda":
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self.history, self.elapsed = state["history"], state["seconds"]
        if self.step_in_epoch > 0 and "epoch_sums" in state and self.ctx.world_size == 1:  # the sums are rank 0's
            self._resumed_sums = state["epoch_sums"]

    def save(self) -> None:
        """Atomically replace the run's checkpoint (rank 0), then wait for every rank."""
        if self.ctx.is_main:
            cuda = self.ctx.device.type == "cuda"
            _atomic_save({"config": asdict(self.cfg), "model": self.model.state_dict(),
                          "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                          "torch_rng": torch.get_rng_state(),
                          "cuda_rng": torch.cuda.get_rng_state_all() if cuda else None, "epoch": self.epoch,
                          "step_in_epoch": self.step_in_epoch, "history": self.history,
                          "epoch_sums": self.sums.clone(), "seconds": self.seconds()}, self.out / CHECKPOINT)
        D.barrier()

    def seconds(self) -> float:
        return self.elapsed + time.monotonic() - self.t0

    @contextmanager
    def recording(self) -> Iterator[None]:
        """Keep the attention maps of every forward pass while training with ADL."""
        if self.recorder is None:
            yield
            return
        with self.recorder:
            yield

    @property
    def ddp(self) -> nn.Module:
        """The model as trained: wrapped in DDP under torchrun (created after `restore`, so every rank starts from
        the checkpoint's weights)."""
        if self._ddp is None:
            self._ddp = self.model
            if self.ctx.distributed:
                dev = self.ctx.device
                self._ddp = nn.parallel.DistributedDataParallel(
                    self.model, device_ids=[dev.index] if dev.type == "cuda" else None)
        return self._ddp

    # -- one epoch -----------------------------------------------------------------------------------------------
    def run_epoch(self) -> bool:
        """Train the rest of the current epoch; False if the run was stopped early (after a checkpoint)."""
        self.model.train()
        batches = _epoch_batches(len(self.train_ds), self.cfg.batch_size, self.cfg.seed, self.epoch)
        if self._resumed_sums is not None:
            self.sums, self._resumed_sums = self._resumed_sums, None
        else:
            self.sums = torch.zeros(4, dtype=torch.float64)
        for step in range(self.step_in_epoch, self.steps_per_epoch):
            loss = self._step(batches[step], step)
            self.step_in_epoch = step + 1
            global_step = self.epoch * self.steps_per_epoch + self.step_in_epoch
            if self.progress is not None and self.ctx.is_main:
                self.progress({"kind": "step", "epoch": self.epoch, "step": self.step_in_epoch,
                               "steps": self.steps_per_epoch, "global_step": global_step,
                               "total_steps": self.total_steps, "loss": loss})
            self.stopped = self.stop_after_steps is not None and global_step >= self.stop_after_steps
            if self.stopped and self.step_in_epoch < self.steps_per_epoch:
                self.save()
                return False
            if (self.cfg.save_every and global_step % self.cfg.save_every == 0
                    and self.step_in_epoch < self.steps_per_epoch):
                self.save()
        return True

    def _step(self, batch: list[int], step: int) -> float:
        """One optimizer step on this rank's share of a global batch; returns the loss."""
        from attnprobe.archs.adl import adl_loss

        cfg, ctx = self.cfg, self.ctx
        idx = batch[ctx.rank::ctx.world_size]
        gen = torch.Generator().manual_seed(((cfg.seed * 1009 + self.epoch) * 100_003 + step) * 257 + ctx.rank)
        x, y = self.task.batch(idx, gen, self.pre, ctx.device)
        ce = self.task.loss(self.ddp(x), y)
        if self.recorder is not None:
            adl = adl_loss(self.recorder.pop(), cfg.adl_tau, cfg.adl_variant)
            loss = ce + cfg.adl_weight * adl
        else:
            adl, loss = torch.zeros(()), ce
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        self.sums += torch.tensor([loss.item() * len(idx), ce.item() * len(idx), adl.item() * len(idx), len(idx)],
                                  dtype=torch.float64)
        return loss.item()

    def end_epoch(self) -> None:
        """Evaluate on the validation split, log the epoch, checkpoint."""
        sums = D.all_reduce_sum(self.sums)
        val = self.task.evaluate(self.model, self.pre, self.ctx.device)
        if self.recorder is not None:
            self.recorder.pop()  # drop the maps the evaluation left in the training recorder
        n = max(sums[3].item(), 1.0)
        record = {"epoch": self.epoch + 1, "train_loss": sums[0].item() / n, "train_ce": sums[1].item() / n,
                  "train_adl": sums[2].item() / n if self.cfg.adl_weight > 0 else float("nan"),
                  "val_loss": val["loss"], "val_accuracy": val["accuracy"],
                  **({"val_miou": val["miou"]} if "miou" in val else {}), "val_adl": val["adl"],
                  "lr": self.opt.param_groups[0]["lr"], "seconds": round(self.seconds(), 1)}
        self.history.append(record)
        self.epoch, self.step_in_epoch = self.epoch + 1, 0
        self.save()
        if self.ctx.is_main:
            with open(self.out / LOG, "a", encoding="utf-8") as f:
                f.write(dumps(record) + "\n")  # strict JSON: no NaN (train_adl without ADL is null)
        if self.progress is not None and self.ctx.is_main:
            self.progress({"kind": "epoch", **record})

    # -- the end -------------------------------------------------------------------------------------------------
    def result(self) -> TrainResult:
        """The run's result; a finished run also gets its weights file and model card (written once)."""
        last = self.history[-1] if self.history else {}
        nan = float("nan")
        result = TrainResult(name=self.name, out=str(self.out), finished=self.epoch >= self.cfg.epochs,
                             epoch=self.epoch, step=self.epoch * self.steps_per_epoch + self.step_in_epoch,
                             val_accuracy=last.get("val_accuracy", nan), val_loss=last.get("val_loss", nan),
                             val_adl=last.get("val_adl", nan), train_loss=last.get("train_loss", nan),
                             train_ce=last.get("train_ce", nan), train_adl=last.get("train_adl", nan),
                             seconds=round(self.seconds(), 1), history=self.history, val_miou=last.get("val_miou"))
        if result.finished:
            weights, card = self.out / f"{self.name}.safetensors", self.out / f"{self.name}.toml"
            if self.ctx.is_main and not (weights.exists() and card.exists()):
                _finish(self.model, self.task, self.name, self.out, self.pre, result, self.ctx.world_size)
            D.barrier()
            result.weights, result.card = str(weights), str(card)
        return result


def _finish(model: nn.Module, task: Any, name: str, out: Path, pre: dict[str, Any], result: TrainResult,
            world_size: int = 1) -> None:
    from safetensors.torch import save_file

    from attnprobe.checkpoints import file_sha256

    weights = out / f"{name}.safetensors"
    tmp = weights.with_name(weights.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp),
              metadata={"name": name})
    os.replace(tmp, weights)
    metrics = {"val_accuracy": round(result.val_accuracy, 4), "val_loss": round(result.val_loss, 4),
               **({"val_miou": round(result.val_miou, 4)} if result.val_miou is not None else {}),
               "val_adl": round(result.val_adl, 4), "train_loss": round(result.train_loss, 4),
               "train_seconds": result.seconds}
    write_card(out / f"{name}.toml", task.cfg, name, weights.name, file_sha256(weights), task.model_kwargs(), pre,
               task.classes, metrics, world_size, extra=task.card_fields())
