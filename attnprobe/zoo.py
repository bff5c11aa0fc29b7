"""The model zoo: model cards (`models/*.toml`) → ready models, plus pass-through for official and timm names.

A card names an architecture registered in timm (our FAN/TAP-FAN/RVT variants register under the official names
when `attnprobe.archs` is imported), its constructor kwargs, where its weights are (a bundled file, or a public URL
with sha256), its preprocessing, and the numbers its paper reports. Names resolve in this order: zoo card, then any
timm model name (which includes the official names).

Weights: `create_model(..., checkpoint=PATH)` loads a file strictly; `pretrained=True` uses the card's bundled file
or downloads its URL into the cache (timm names use timm's own pretrained weights); with neither, weights are random.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from attnprobe.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RANDOM_INIT = "random-init"

# Modules that register architectures into timm on import (optional ones may be absent in a trimmed install).
_ARCH_MODULES = ("attnprobe.archs", "attnprobe.archs_demo", "attnprobe.segmentation.model")


@dataclass(frozen=True)
class Preprocessing:
    """How images are prepared for a model at evaluation time."""

    input_size: int = 224
    interpolation: str = "bicubic"
    crop_pct: float = 0.9
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def key(self) -> str:
        """Canonical string for the results store (equal preprocessing ⇔ equal key)."""
        mean = ",".join(f"{m:.4f}" for m in self.mean)
        std = ",".join(f"{s:.4f}" for s in self.std)
        return f"size={self.input_size};interp={self.interpolation};crop={self.crop_pct:.4f};mean={mean};std={std}"

    @classmethod
    def from_mapping(cls, d: dict[str, Any]) -> Preprocessing:
        known = {k: d[k] for k in ("input_size", "interpolation", "crop_pct", "mean", "std") if k in d}
        if isinstance(known.get("input_size"), (list, tuple)):
            known["input_size"] = int(known["input_size"][-1])
        for k in ("mean", "std"):
            if k in known:
                known[k] = tuple(float(v) for v in known[k])
        return cls(**known)


@dataclass
class LoadedModel:
    """A model ready for evaluation, with what the results store needs to identify it."""

    model: Any
    name: str
    arch: str
    checkpoint_sha256: str
    checkpoint_path: str | None
    preprocessing: Preprocessing
    card: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"model": self.name, "arch": self.arch, "checkpoint": self.checkpoint_path,
                "checkpoint_sha256": self.checkpoint_sha256, "preprocessing": asdict(self.preprocessing)}


# -- cards --------------------------------------------------------------------------------------------------------
def models_dir() -> Path:
    """The folder of model cards: `$ATTNPROBE_MODELS_DIR`, else `models/` of this checkout."""
    env = os.environ.get("ATTNPROBE_MODELS_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "models"


@lru_cache(maxsize=None)
def _cards(root: str) -> dict[str, dict[str, Any]]:
    cards: dict[str, dict[str, Any]] = {}
    for path in sorted(Path(root).glob("*.toml")):
        with open(path, "rb") as f:
            card = tomllib.load(f)
        card.setdefault("name", path.stem)
        card["_path"] = str(path)
        cards[card["name"]] = card
    return cards


def list_cards() -> dict[str, dict[str, Any]]:
    """All zoo cards by name (a copy; safe to modify)."""
    return {k: dict(v) for k, v in _cards(str(models_dir())).items()}


def list_models() -> list[str]:
    """Zoo model names, sorted."""
    return sorted(_cards(str(models_dir())))


def load_card(name: str) -> dict[str, Any] | None:
    """The card of zoo model `name`, or None when `name` is not a zoo name."""
    card = _cards(str(models_dir())).get(name)
    return dict(card) if card is not None else None


def bundled_checkpoint(card: dict[str, Any]) -> Path | None:
    """Path of a card's bundled weights file, if it has one and it exists."""
    rel = card.get("checkpoint", {}).get("file")
    if not rel:
        return None
    path = Path(card["_path"]).parent / rel
    return path if path.is_file() else None


# -- building -----------------------------------------------------------------------------------------------------
def _ensure_registered() -> None:
    for mod in _ARCH_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise


def _resolve(name: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """name → (timm architecture name, card kwargs, card or {})."""
    card = load_card(name)
    if card is not None:
        return card["arch"], dict(card.get("kwargs", {})), card
    return name, {}, {}


def _build(arch: str, kwargs: dict[str, Any], pretrained_timm: bool = False) -> Any:
    import timm

    _ensure_registered()
    if not timm.is_model(arch):
        suggestions = [n for n in list_models() + timm.list_models() if arch.split("_")[0] in n][:5]
        hint = f" (did you mean: {', '.join(suggestions)}?)" if suggestions else ""
        raise UserError(f"unknown model {arch!r}{hint}; see `attnprobe models` for zoo names, or use any timm name")
    try:
        return timm.create_model(arch, pretrained=pretrained_timm, **kwargs)
    except TypeError as e:
        raise UserError(f"cannot build {arch!r} with {kwargs}: {e}") from None
    except (OSError, RuntimeError, ValueError) as e:
        if pretrained_timm:
            raise UserError(f"cannot fetch timm's pretrained weights for {arch!r} ({type(e).__name__}; offline?); "
                            "download them elsewhere and pass --ckpt PATH") from None
        raise


def _preprocessing(card: dict[str, Any], model: Any, kwargs: dict[str, Any]) -> Preprocessing:
    if card.get("preprocessing"):
        pre = Preprocessing.from_mapping(card["preprocessing"])
    else:
        cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
        pre = Preprocessing.from_mapping(dict(cfg)) if cfg else Preprocessing()
    if "img_size" in kwargs:  # NOTE: timm keeps the pretrained cfg's 224 when a model is built at another size
        size = kwargs["img_size"]
        pre = replace(pre, input_size=int(size[-1] if isinstance(size, (list, tuple)) else size))
    return pre


def load_model(name: str, checkpoint: str | Path | None = None, pretrained: bool | None = False,
               use_ema: bool = False, **kwargs: Any) -> LoadedModel:
    """Build `name` and load its weights.

    Args:
        name: zoo name (`fan_b_tapadl`), official name (`tap_fan_base_16_p4_hybrid`) or any timm name.
        checkpoint: a weights file; loaded strictly (a mismatch raises one clear error).
        pretrained: True → the card's bundled file or URL (downloaded and cached), or timm's pretrained weights;
            None → "auto": like True when weights are available without a download (bundled or cached),
            otherwise the same as True; False → random initialisation (only meaningful for smoke tests).
        use_ema: take the checkpoint's EMA weights.
        **kwargs: constructor overrides (e.g. `num_classes=10`), merged over the card's kwargs.
    """
    from attnprobe import checkpoints

    arch, card_kwargs, card = _resolve(name)
    model_kwargs = {**card_kwargs, **kwargs}
    ckpt_path: Path | None = Path(checkpoint).expanduser() if checkpoint else None
    want_weights = ckpt_path is None and pretrained is not False
    use_timm_pretrained = False
    if want_weights:
        if card and (bundled := bundled_checkpoint(card)) is not None:
            ckpt_path = bundled
        elif card and card.get("checkpoint", {}).get("url"):
            ckpt_path = checkpoints.fetch_checkpoint(card["checkpoint"]["url"], card["checkpoint"].get("sha256"))
        elif card and card.get("checkpoint", {}).get("timm_pretrained"):
            arch, use_timm_pretrained = card["checkpoint"]["timm_pretrained"], True
        elif not card:
            use_timm_pretrained = True
        else:
            raise UserError(f"no public weights are known for {name!r}; pass your checkpoint with --ckpt PATH")
    model = _build(arch, model_kwargs, pretrained_timm=use_timm_pretrained)
    if ckpt_path is not None:
        state = checkpoints.read_state_dict(ckpt_path, use_ema=use_ema)
        checkpoints.load_weights(model, state, arch=arch, source=str(ckpt_path))
        sha = checkpoints.file_sha256(ckpt_path)
    elif use_timm_pretrained:
        sha = f"timm-pretrained:{getattr(model, 'pretrained_cfg', {}).get('hf_hub_id') or arch}"
    else:
        sha = RANDOM_INIT
    model.eval()
    return LoadedModel(model=model, name=name, arch=arch, checkpoint_sha256=sha,
                       checkpoint_path=str(ckpt_path) if ckpt_path else None,
                       preprocessing=_preprocessing(card, model, model_kwargs), card=card)


def create_model(name: str, checkpoint: str | Path | None = None, pretrained: bool = False, **kwargs: Any) -> Any:
    """Build a model in eval mode: zoo name, official name or any timm name (see `load_model`)."""
    return load_model(name, checkpoint=checkpoint, pretrained=pretrained, **kwargs).model


def build_from_config(config: dict[str, Any]) -> Any:
    """Build one of our architectures from a config dict such as the official fixtures' `config`."""
    _ensure_registered()
    from attnprobe.archs import build_from_config as _build_from_config

    return _build_from_config(config)
