"""Models saved the way timm and Hugging Face share them: a folder with `config.json` and the weights.

`--model` (and `attnprobe.create_model`) accept such a model by timm's names for it, `local-dir:/path/to/folder` and
`hf-hub:org/name[@revision]`, and as a plain folder path. The folder's `config.json` names the timm architecture, its
constructor arguments, the number of classes and the preprocessing (timm's `save_for_hf` writes it); the weights are
the folder's `model.safetensors` (or `pytorch_model.bin`, ...). Hub models come from the local Hugging Face cache when
they are there; otherwise they are downloaded, and an offline machine gets a one-line error at once (`attnprobe.hub`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnprobe.errors import UserError

HUB_PREFIX = "hf-hub:"
LOCAL_PREFIX = "local-dir:"
_HUB_ALIAS = "hf_hub:"  # timm's older spelling, still accepted by timm.create_model
_PATH_CHARS = ("/", "\\")
CONFIG_NAME = "config.json"


@dataclass(frozen=True)
class FolderModel:
    """A timm / Hugging Face model folder, local or on the hub.

    Attributes:
        spec: the name as the user gave it (`local-dir:...`, `hf-hub:...` or a path).
        arch: the timm architecture of `config.json`.
        model_args: constructor arguments saved with the model.
        num_classes: classifier outputs saved with the model (None when the config does not say).
        pretrained_cfg: timm's pretrained config of the saved model (preprocessing, classifier name).
        folder: the local folder holding `config.json` (for hub models, the snapshot in the cache).
        repo: the hub repository (`org/name[@rev]`) for `hf-hub:` models.
    """

    spec: str
    arch: str
    model_args: dict[str, Any] = field(default_factory=dict)
    num_classes: int | None = None
    pretrained_cfg: dict[str, Any] = field(default_factory=dict)
    folder: Path | None = None
    repo: str | None = None

    def weights(self) -> Path:
        """The weights file of the model (downloaded into the hub cache for `hf-hub:` models, fails fast offline)."""
        from attnprobe import checkpoints, hub

        if self.repo is not None:
            fix = ("download the model folder (config.json + model.safetensors) elsewhere and pass --model "
                   "local-dir:PATH, or pass the weights with --ckpt PATH")
            return hub.fetch(self.repo, hub.WEIGHTS_NAMES[:2], fix)
        return checkpoints.weights_file(self.folder)  # type: ignore[arg-type]


def looks_like_folder(name: str) -> bool:
    """Whether `name` names a model folder rather than a zoo or timm name (a prefix or a path separator)."""
    return name.startswith((HUB_PREFIX, _HUB_ALIAS, LOCAL_PREFIX, "~", ".")) or any(c in name for c in _PATH_CHARS)


def resolve_folder(spec: str) -> FolderModel:
    """Read the model folder that `spec` names (`local-dir:PATH`, `hf-hub:ORG/NAME`, or a path).

    Raises:
        UserError: no such folder, no `config.json`, an unreadable config, or a hub model that cannot be fetched.
    """
    if spec.startswith((HUB_PREFIX, _HUB_ALIAS)):
        repo = spec[len(HUB_PREFIX):].strip()
        if not repo:
            raise UserError("hf-hub: needs a repository, e.g. --model hf-hub:timm/vit_base_patch16_224.augreg_in1k")
        from attnprobe import hub

        fix = "download the model folder (config.json + model.safetensors) elsewhere and pass --model local-dir:PATH"
        config = hub.fetch(repo, (CONFIG_NAME,), fix)
        return _read_config(spec, config.parent, repo=repo)
    path = Path(spec[len(LOCAL_PREFIX):] if spec.startswith(LOCAL_PREFIX) else spec).expanduser()
    if path.is_file():
        raise UserError(f"{path} is a file, not a model folder; pass weights files with --ckpt and the architecture "
                        "with --model (a zoo or timm name)")
    if not path.is_dir():
        raise UserError(f"no model folder at {path}; --model takes a zoo name (`attnprobe models`), a timm name, "
                        "hf-hub:ORG/NAME, local-dir:PATH or a folder with config.json")
    if not (path / CONFIG_NAME).is_file():
        raise UserError(f"{path} has no {CONFIG_NAME}; save the model with timm.models.save_for_hf(model, folder) or "
                        "pass a zoo/timm name with --model and the weights with --ckpt")
    return _read_config(spec, path)


def _read_config(spec: str, folder: Path, repo: str | None = None) -> FolderModel:
    """Parse `folder/config.json` as timm does (timm's own parser when present)."""
    try:
        from timm.models._hub import load_model_config_from_path
    except ImportError:  # pragma: no cover - older timm: same format, parsed here
        load_model_config_from_path = None
    try:
        if load_model_config_from_path is not None:
            pretrained_cfg, arch, model_args = load_model_config_from_path(folder)
        else:  # pragma: no cover
            pretrained_cfg, arch, model_args = _parse_config(json.loads((folder / CONFIG_NAME).read_text("utf-8")))
    except (KeyError, TypeError, ValueError, OSError) as e:
        raise UserError(f"cannot read {folder / CONFIG_NAME} ({type(e).__name__}: {e}); is it a timm model config "
                        "(architecture, num_classes, pretrained_cfg)?") from None
    pretrained_cfg = dict(pretrained_cfg)
    for key in ("file", "source", "hf_hub_id"):  # NOTE: where timm found it; we load the weights ourselves
        pretrained_cfg.pop(key, None)
    num_classes = pretrained_cfg.get("num_classes")
    return FolderModel(spec=spec, arch=str(arch), model_args=dict(model_args or {}),
                       num_classes=int(num_classes) if num_classes is not None else None,
                       pretrained_cfg=pretrained_cfg, folder=folder, repo=repo)


def _parse_config(cfg: dict[str, Any]) -> tuple[dict[str, Any], str, dict[str, Any]]:  # pragma: no cover
    """timm's config.json layout: nested (`pretrained_cfg` + top-level overrides) or the legacy flat dict."""
    if "pretrained_cfg" not in cfg:
        flat = dict(cfg)
        cfg = {"architecture": flat.pop("architecture"), "pretrained_cfg": flat}
    pretrained_cfg = dict(cfg["pretrained_cfg"])
    if "num_classes" in cfg:
        pretrained_cfg["num_classes"] = cfg["num_classes"]
    return pretrained_cfg, cfg["architecture"], dict(cfg.get("model_args", {}))
