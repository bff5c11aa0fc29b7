"""The model zoo: model cards (`models/*.toml`) → ready models, plus timm names and timm / Hugging Face folders.

A card names an architecture registered in timm (our FAN/TAP-FAN/RVT variants register under the official names
when `attnprobe.archs` is imported), its constructor kwargs, where its weights are (a bundled file, or a public URL
with sha256), its preprocessing, and the numbers its paper reports. Names resolve in this order: zoo card, then a
model folder (`hf-hub:org/name`, `local-dir:/path`, or a path to a folder with `config.json`), then any timm name
(which includes the official names).

Weights follow one rule, shared by the Python API and every command (`choose_weights`): a given checkpoint, else the
published weights (bundled, downloaded once into the cache, a folder's own, or timm's pretrained); random weights only
when asked for (`pretrained=False`, the CLI's `--ckpt -`), with a warning.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from attnprobe.errors import UserError
from attnprobe.model_folder import FolderModel, looks_like_folder, resolve_folder

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RANDOM_INIT = "random-init"
IMAGENET_CLASSES = 1000
#: Where a wheel carries the repository's `models/` (see setup.py).
PACKAGED_MODELS = "_models"


class RandomWeightsWarning(UserWarning):
    """A model was built with random weights (asked for explicitly); its numbers only test the pipeline."""

# Modules that register architectures into timm on import (optional ones may be absent in a trimmed install).
_ARCH_MODULES = ("attnprobe.archs", "attnprobe.segmentation.model")


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
    weights: str = ""  # the `Weights.kind` it was loaded with (file, bundled, timm, random, ...)

    def describe(self) -> dict[str, Any]:
        return {"model": self.name, "arch": self.arch, "checkpoint": self.checkpoint_path,
                "checkpoint_sha256": self.checkpoint_sha256, "weights": self.weights,
                "preprocessing": asdict(self.preprocessing)}


# -- cards --------------------------------------------------------------------------------------------------------
def models_dir() -> Path:
    """The folder of model cards and bundled weights.

    `$ATTNPROBE_MODELS_DIR` when set; else the cards inside the installed package (`attnprobe/_models/`, which
    `setup.py` copies from the repository's `models/` when a wheel is built); else `models/` of the checkout this
    package runs from (editable installs, `PYTHONPATH`).
    """
    env = os.environ.get("ATTNPROBE_MODELS_DIR")
    if env:
        return Path(env).expanduser()
    here = Path(__file__).resolve().parent
    packaged = here / PACKAGED_MODELS
    return packaged if packaged.is_dir() else here.parent / "models"


@lru_cache(maxsize=None)
def _cards(root: str) -> dict[str, dict[str, Any]]:
    if os.environ.get("ATTNPROBE_MODELS_DIR") and not Path(root).is_dir():
        raise UserError(f"ATTNPROBE_MODELS_DIR={root} is not a folder; point it at a folder of model cards (*.toml) "
                        "or unset it to use the bundled zoo")
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


# -- resolving names ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSource:
    """What a model name resolves to: a zoo card, a timm name, or a timm / Hugging Face model folder."""

    name: str
    arch: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    card: dict[str, Any] = field(default_factory=dict)
    folder: FolderModel | None = None


def _ensure_registered() -> None:
    for mod in _ARCH_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise


def _unknown_model(name: str) -> UserError:
    import timm

    suggestions = [n for n in list_models() + timm.list_models() if name.split("_")[0] in n][:5]
    hint = f" (did you mean: {', '.join(suggestions)}?)" if suggestions else ""
    return UserError(f"unknown model {name!r}{hint}; see `attnprobe models` for zoo names, or use any timm name, "
                     "hf-hub:ORG/NAME or local-dir:PATH")


def resolve(name: str) -> ModelSource:
    """Resolve a model name: zoo card, then `hf-hub:` / `local-dir:` / folder path, then any timm name.

    Raises:
        UserError: an unknown name, or a model folder that cannot be read.
    """
    card = load_card(name)
    if card is not None:
        return ModelSource(name, card["arch"], dict(card.get("kwargs", {})), card)
    import timm

    _ensure_registered()
    if looks_like_folder(name) or (not timm.is_model(name) and Path(name).is_dir()):
        folder = resolve_folder(name)
        kwargs = dict(folder.model_args)
        if folder.num_classes is not None:
            kwargs["num_classes"] = folder.num_classes
        return ModelSource(name, folder.arch, kwargs, folder=folder)
    if not timm.is_model(name):
        raise _unknown_model(name)
    return ModelSource(name, name)


def _timm_cfg(arch: str) -> Any:
    """timm's pretrained config of `arch` (with its tag, if any), or None."""
    try:
        from timm.models import get_pretrained_cfg

        return get_pretrained_cfg(arch)
    except (RuntimeError, ValueError, KeyError):
        return None


def classifier_names(arch: str) -> tuple[str, ...]:
    """The classifier module names of a timm architecture (`head`, `head.fc`, ...)."""
    _ensure_registered()
    cfg = _timm_cfg(arch)
    clf = getattr(cfg, "classifier", None) or "head"
    return tuple(clf) if isinstance(clf, (list, tuple)) else (clf,)


# -- weights: the one rule of the API and of every command --------------------------------------------------------
@dataclass(frozen=True)
class Weights:
    """Which weights a model gets.

    Attributes:
        kind: `file` (a checkpoint given by the user), `folder` (a model folder's weights), `bundled`, `cached` /
            `download` (a card's public URL), `timm` (timm's pretrained weights), `random`, or `not-loaded`
            (published weights exist but are not on this machine and downloading was not allowed).
        path: the weights file, for every kind that has one.
        timm_name: the timm name whose pretrained weights timm loads (kind `timm`).
    """

    kind: str
    path: Path | None = None
    timm_name: str | None = None


def _missing_checkpoint_hint(name: str, card: dict[str, Any], checkpoint: str | Path) -> str | None:
    url = card.get("checkpoint", {}).get("url")
    if url and Path(url).name == Path(checkpoint).name:
        return (f"it is the authors' release for {name}: leave --ckpt out to download it into the cache, or "
                f"download {url} yourself and give its path")
    return None


def checkpoint_file(name: str, checkpoint: str | Path) -> Path:
    """The weights file a user-given checkpoint names (a file, or a model folder's weights), checked to exist."""
    from attnprobe import checkpoints

    hint = _missing_checkpoint_hint(name, load_card(name) or {}, checkpoint)
    return checkpoints.weights_file(checkpoint, hint=hint)


def _timm_weights_cached(timm_name: str) -> bool:
    from attnprobe import hub

    cfg = _timm_cfg(timm_name)
    hf_id = getattr(cfg, "hf_hub_id", None)
    names = (cfg.hf_hub_filename,) if getattr(cfg, "hf_hub_filename", None) else hub.WEIGHTS_NAMES[:2]
    return bool(hf_id) and hub.cached_file(hf_id, names) is not None


def choose_weights(source: ModelSource, checkpoint: str | Path | None = None, pretrained: bool = True,
                   download: bool = True) -> Weights:
    """Decide a model's weights; `load_model` and every command follow this one rule.

    Args:
        source: the resolved model name.
        checkpoint: a checkpoint file or model folder given by the user; wins over everything else.
        pretrained: False asks for random weights (never chosen silently).
        download: False never downloads: published weights that are not on this machine (or none at all) give
            kind `not-loaded`.

    Raises:
        UserError: a missing checkpoint, a model without published weights, or a failed download.
    """
    from attnprobe import checkpoints

    if checkpoint is not None:
        hint = _missing_checkpoint_hint(source.name, source.card, checkpoint)
        return Weights("file", checkpoints.weights_file(checkpoint, hint=hint))
    if not pretrained:
        return Weights("random")
    if source.folder is not None:
        if source.folder.repo is not None and not download:
            from attnprobe import hub

            cached = hub.cached_file(source.folder.repo, hub.WEIGHTS_NAMES[:2])
            return Weights("folder", cached) if cached else Weights("not-loaded")
        return Weights("folder", source.folder.weights())
    card, name = source.card, source.name
    spec = card.get("checkpoint", {})
    if card:
        if (bundled := bundled_checkpoint(card)) is not None:
            return Weights("bundled", bundled)
        if spec.get("file"):
            raise UserError(f"the bundled weights of {name} ({spec['file']}) are missing from {models_dir()}; "
                            "reinstall attnprobe, or pass a checkpoint with --ckpt PATH")
        if spec.get("url"):
            if (cached := checkpoints.cached_checkpoint(spec["url"], spec.get("sha256"))) is not None:
                return Weights("cached", cached)
            if not download:
                return Weights("not-loaded")
            return Weights("download", checkpoints.fetch_checkpoint(spec["url"], spec.get("sha256")))
        if not spec.get("timm_pretrained"):
            if not download:
                return Weights("not-loaded")
            raise UserError(f"no public weights are known for {name!r}; pass your checkpoint with --ckpt PATH")
    timm_name = spec.get("timm_pretrained") or source.arch
    if not download and not _timm_weights_cached(timm_name):
        return Weights("not-loaded")
    return Weights("timm", timm_name=timm_name)


def _default_num_classes(source: ModelSource, weights: Weights) -> int | None:
    if "num_classes" in source.kwargs:
        return int(source.kwargs["num_classes"])
    cfg = _timm_cfg(weights.timm_name or source.arch)
    return int(cfg.num_classes) if getattr(cfg, "num_classes", None) is not None else None


def output_classes(name: str, checkpoint: str | Path | None = None, pretrained: bool = True, use_ema: bool = False,
                   **kwargs: Any) -> int | None:
    """How many logits `load_model` with the same arguments will give, found without building the model.

    Reads only the checkpoint's classifier shape (a safetensors header or a memory-mapped load) and never downloads.
    None when it cannot be told (e.g. a timm architecture without a classifier config).
    """
    from attnprobe import checkpoints

    if "num_classes" in kwargs:
        return int(kwargs["num_classes"])
    source = resolve(name)
    weights = choose_weights(source, checkpoint, pretrained, download=False)
    if weights.path is not None:
        shapes = checkpoints.peek_shapes(weights.path, use_ema)
        n = checkpoints.classifier_outputs(shapes, classifier_names(source.arch))
        if n is not None:
            return n
    return _default_num_classes(source, weights)


def _model_outputs(model: Any) -> int | None:
    n = getattr(model, "num_classes", None)
    return int(n) if isinstance(n, int) else None


def _output_space_error(name: str, n: int, expected: int, what: str) -> UserError:
    has = "has no classifier (a backbone)" if n == 0 else f"has {n} output classes"
    return UserError(f"{name} {has}, but {what} needs the {expected} ImageNet-1k logits; use a {expected}-class "
                     "ImageNet checkpoint (the attention diagnostics, e.g. `attnprobe stability`, take any head)")


def check_output_space(name: str, checkpoint: str | Path | None = None, pretrained: bool = True,
                       num_classes: int = IMAGENET_CLASSES, what: str = "this benchmark", **kwargs: Any) -> None:
    """Before any work: stop with one line when the model `load_model` would build has another output space."""
    n = output_classes(name, checkpoint=checkpoint, pretrained=pretrained, **kwargs)
    if n is not None and n != num_classes:
        if checkpoint is not None:  # NOTE: a segmentation checkpoint has no classifier; say what it is instead
            from attnprobe import checkpoints

            keys = list(checkpoints.peek_shapes(checkpoint))
            message = checkpoints.task_mismatch_message(["head.weight"], keys, str(checkpoint), name)
            if message is not None:
                raise UserError(message)
        raise _output_space_error(name, n, num_classes, what)


def require_output_space(loaded: LoadedModel, num_classes: int = IMAGENET_CLASSES,
                         what: str = "this benchmark") -> None:
    """Stop with one line when a loaded model's classifier does not give the `num_classes` logits a benchmark needs.

    Args:
        loaded: the model.
        num_classes: the logits the benchmark scores (1000 ImageNet-1k classes; ImageNet-A/R mask 200 of them).
        what: the benchmark, for the message (e.g. "ImageNet-C").
    """
    n = _model_outputs(loaded.model)
    if n is not None and n != num_classes:
        raise _output_space_error(loaded.name, n, num_classes, what)


# -- building -----------------------------------------------------------------------------------------------------
def _build(arch: str, kwargs: dict[str, Any], pretrained_timm: bool = False,
           pretrained_cfg: dict[str, Any] | None = None) -> Any:
    import timm

    _ensure_registered()
    if not timm.is_model(arch):
        raise _unknown_model(arch)
    extra = {"pretrained_cfg": dict(pretrained_cfg)} if pretrained_cfg else {}
    try:
        if pretrained_timm:
            return _build_timm_pretrained(arch, kwargs)
        return timm.create_model(arch, pretrained=False, **extra, **kwargs)
    except TypeError as e:
        raise UserError(f"cannot build {arch!r} with {kwargs}: {e}") from None


def _build_timm_pretrained(arch: str, kwargs: dict[str, Any]) -> Any:
    """timm's pretrained weights: from the local hub cache offline, downloaded when reachable, else one line at once."""
    import timm

    from attnprobe import hub

    fix = "download them elsewhere and pass --ckpt PATH (or --ckpt - for random weights, a smoke test only)"
    cfg = _timm_cfg(arch)
    if cfg is None or not (getattr(cfg, "hf_hub_id", None) or getattr(cfg, "url", None)):
        raise UserError(f"timm has no pretrained weights for {arch!r}; pass your checkpoint with --ckpt PATH")
    offline = _timm_weights_cached(arch)
    if not offline:
        if cfg.hf_hub_id:
            hub.require_online(f"timm's pretrained weights for {arch}", fix)
        elif not hub.reachable(cfg.url):
            raise UserError(f"cannot reach {cfg.url.split('/')[2]} to download timm's pretrained weights for {arch} "
                            f"(offline?); {fix}")
    try:
        with hub.offline() if offline else nullcontext():
            return timm.create_model(arch, pretrained=True, **kwargs)
    except (OSError, RuntimeError, ValueError) as e:
        raise UserError(f"cannot fetch timm's pretrained weights for {arch!r} ({type(e).__name__}); {fix}") from None


@contextmanager
def _seeded(seed: int = 0) -> Iterator[None]:
    """Random initialisation that is the same on every rank and every rerun ("random-init" names one set of weights),
    without touching the caller's random state."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _preprocessing(source: ModelSource, model: Any, kwargs: dict[str, Any]) -> Preprocessing:
    if source.card.get("preprocessing"):
        pre = Preprocessing.from_mapping(source.card["preprocessing"])
    elif source.folder is not None and source.folder.pretrained_cfg:
        pre = Preprocessing.from_mapping(source.folder.pretrained_cfg)
    else:
        cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
        pre = Preprocessing.from_mapping(dict(cfg)) if cfg else Preprocessing()
    if "img_size" in kwargs:  # NOTE: timm keeps the pretrained cfg's 224 when a model is built at another size
        size = kwargs["img_size"]
        pre = replace(pre, input_size=int(size[-1] if isinstance(size, (list, tuple)) else size))
    return pre


def load_model(name: str, checkpoint: str | Path | None = None, pretrained: bool = True, use_ema: bool = False,
               download: bool = True, **kwargs: Any) -> LoadedModel:
    """Build `name` with its weights, in eval mode.

    Weights (`choose_weights`, the same rule as the CLI): a given `checkpoint` (file or model folder, loaded
    strictly); else the published weights: a model folder's own weights, the card's bundled file or public URL
    (downloaded once into the cache), or timm's pretrained weights for timm names. A card without public weights is
    refused. `pretrained=False` (the CLI's `--ckpt -`) gives random weights, seeded so that they are the same every
    time, with a `RandomWeightsWarning`.

    A checkpoint whose classifier has another number of classes than the architecture's default (a model fine-tuned
    to 10 or 200 classes) is built with that head; pass `num_classes=N` to override.

    Args:
        name: zoo name (`fan_b_tapadl`), official or timm name, `hf-hub:org/name`, `local-dir:/path` or a folder.
        checkpoint: a weights file or model folder.
        pretrained: False → random weights (smoke tests only).
        use_ema: take the checkpoint's EMA weights.
        download: False never downloads; weights not on this machine are then not loaded (kind `not-loaded`, as
            random weights but without a warning), for inspecting an architecture.
        **kwargs: constructor overrides (e.g. `num_classes=10`), merged over the card's or folder's arguments.
    """
    from attnprobe import checkpoints

    source = resolve(name)
    weights = choose_weights(source, checkpoint, pretrained, download)
    model_kwargs = {**source.kwargs, **kwargs}
    state = None
    if weights.path is not None:
        state = checkpoints.read_state_dict(weights.path, use_ema=use_ema)
        if "num_classes" not in kwargs:
            n = checkpoints.classifier_outputs(state, classifier_names(source.arch))
            model_kwargs["num_classes"] = n if n is not None else model_kwargs.get("num_classes")
            if model_kwargs["num_classes"] is None:
                del model_kwargs["num_classes"]
    cfg = source.folder.pretrained_cfg if source.folder is not None else None
    if weights.kind in ("random", "not-loaded"):
        if weights.kind == "random":
            warnings.warn(f"{name} has random weights (pretrained=False / --ckpt -): its numbers only test the "
                          "pipeline", RandomWeightsWarning, stacklevel=2)
        with _seeded():
            model = _build(source.arch, model_kwargs, pretrained_cfg=cfg)
        sha = RANDOM_INIT
    elif weights.kind == "timm":
        model = _build(weights.timm_name or source.arch, model_kwargs, pretrained_timm=True)
        sha = f"timm-pretrained:{getattr(model, 'pretrained_cfg', {}).get('hf_hub_id') or weights.timm_name}"
    else:
        model = _build(source.arch, model_kwargs, pretrained_cfg=cfg)
        checkpoints.load_weights(model, state, arch=source.arch, source=str(weights.path))  # type: ignore[arg-type]
        sha = checkpoints.file_sha256(weights.path)  # type: ignore[arg-type]
    model.eval()
    return LoadedModel(model=model, name=name, arch=weights.timm_name or source.arch, checkpoint_sha256=sha,
                       checkpoint_path=str(weights.path) if weights.path else None,
                       preprocessing=_preprocessing(source, model, model_kwargs), card=source.card,
                       weights=weights.kind)


def create_model(name: str, checkpoint: str | Path | None = None, pretrained: bool = True, **kwargs: Any) -> Any:
    """Build a model in eval mode with its published weights (see `load_model`); `pretrained=False` for random ones.

    Examples:
        attnprobe.create_model("demo_vit_baseline")                   # the bundled weights
        attnprobe.create_model("fan_b_tapadl", checkpoint="tapadl_fan_base.pth.tar")
        attnprobe.create_model("vit_tiny_patch16_224", checkpoint="finetuned_10_classes.pth")  # head from the file
        attnprobe.create_model("local-dir:/models/my_vit")              # config.json + model.safetensors
        attnprobe.create_model("fan_b", pretrained=False)               # random weights, with a warning
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RandomWeightsWarning)
        model = load_model(name, checkpoint=checkpoint, pretrained=pretrained, **kwargs).model
    for w in caught:  # NOTE: re-issued so that the warning names the caller's line, not this one
        warnings.warn(w.message, w.category, stacklevel=2)
    return model


def build_from_config(config: dict[str, Any]) -> Any:
    """Build one of our architectures from a config dict such as the official fixtures' `config`."""
    _ensure_registered()
    from attnprobe.archs import build_from_config as _build_from_config

    return _build_from_config(config)
