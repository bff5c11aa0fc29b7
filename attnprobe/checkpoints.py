"""Reading checkpoints: file formats, wrapper dicts, `module.` prefixes, strict loading with one clear error.

Accepted files: `.pth`, `.pth.tar`, `.pt`, `.bin` (torch pickles) and `.safetensors`. A torch file may hold the
weights directly or wrapped as `state_dict` / `model` / `state_dict_ema` / `model_ema` (timm and DeiT training
scripts); EMA weights are used only when asked for.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attnprobe.errors import CheckpointMismatchError, UserError

_WRAPPER_KEYS = ("state_dict", "model")
_EMA_KEYS = ("state_dict_ema", "model_ema")
# Prefixes added by DataParallel/DistributedDataParallel and torch.compile.
_STRIP_PREFIXES = ("module.", "_orig_mod.")


def file_sha256(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            h.update(block)
    return h.hexdigest()


def _read_file(path: Path) -> Any:
    if path.name.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # NOTE: training checkpoints from timm scripts pickle the argparse Namespace and other objects, which the
        # safe loader refuses. The user handed us this file explicitly, so we trust it like the official code does.
        return torch.load(path, map_location="cpu", weights_only=False)


def unwrap_state_dict(obj: Any, use_ema: bool = False, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Find the weights inside a loaded checkpoint object and strip `module.`-style prefixes.

    Args:
        obj: what `torch.load` or safetensors returned.
        use_ema: take the EMA weights (`state_dict_ema` / `model_ema`); an error if there are none.
        source: name used in error messages.
    """
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, Mapping):
        raise UserError(f"{source} holds a {type(obj).__name__}, not a state dict; save model.state_dict() instead")
    if use_ema:
        key = next((k for k in _EMA_KEYS if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            raise UserError(f"{source} has no EMA weights (no {' / '.join(_EMA_KEYS)} entry); drop --ema")
        obj = obj[key]
    else:
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    state = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            raise UserError(f"{source}: entry {k!r} is a {type(v).__name__}, not a tensor; is this a weights file?")
        for prefix in _STRIP_PREFIXES:
            if k.startswith(prefix):
                k = k[len(prefix):]
        state[k] = v
    if not state:
        raise UserError(f"{source} contains no weights")
    return state


def read_state_dict(path: str | Path, use_ema: bool = False) -> dict[str, torch.Tensor]:
    """Read a checkpoint file and return its (unwrapped, prefix-stripped) state dict."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"checkpoint not found: {p}; check the path given to --ckpt")
    try:
        obj = _read_file(p)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - any reader failure means an unreadable file for the user
        raise UserError(f"cannot read checkpoint {p} ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                        "is it a complete .pth/.pth.tar/.bin/.safetensors file?") from None
    return unwrap_state_dict(obj, use_ema=use_ema, source=str(p))


def compare_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> tuple[list[str], list[str], list[str]]:
    """Return (missing, unexpected, mis-shaped) keys of `state` against `model.state_dict()`."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshaped = [f"{k} {tuple(state[k].shape)}≠{tuple(v.shape)}" for k, v in expected.items()
                 if k in state and tuple(state[k].shape) != tuple(v.shape)]
    return missing, unexpected, misshaped


def load_weights(model: nn.Module, state: Mapping[str, torch.Tensor], arch: str, source: str = "checkpoint") -> None:
    """Load `state` strictly into `model`, or raise one `CheckpointMismatchError` that explains the mismatch."""
    missing, unexpected, misshaped = compare_state_dict(model, state)
    if missing or unexpected or misshaped:
        if (task_error := task_mismatch_message(list(model.state_dict()), list(state), source, arch)) is not None:
            raise CheckpointMismatchError(task_error)

        def first(keys: list[str]) -> str:
            return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "") if keys else "-"

        raise CheckpointMismatchError(
            f"{source} does not fit architecture {arch!r}: {len(missing)} missing ({first(missing)}), "
            f"{len(unexpected)} unexpected ({first(unexpected)}), {len(misshaped)} mis-shaped ({first(misshaped)}); "
            "pass the --model this checkpoint was trained as (see `attnprobe models`)")
    model.load_state_dict(state, strict=True)


def cache_dir() -> Path:
    """Where downloaded checkpoints live: `$ATTNPROBE_CACHE` or `~/.cache/attnprobe/checkpoints`."""
    return Path(os.environ.get("ATTNPROBE_CACHE", Path.home() / ".cache" / "attnprobe" / "checkpoints"))


def fetch_checkpoint(url: str, sha256: str | None = None, timeout: float = 30.0) -> Path:
    """Download `url` into the cache once (verifying `sha256` when known) and return the local path.

    Raises:
        UserError: offline, download failure or checksum mismatch, with the fix (download elsewhere, pass --ckpt).
    """
    target = cache_dir() / Path(urllib.request.urlparse(url).path).name
    if target.is_file() and (not sha256 or file_sha256(target) == sha256):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    hint = f"download {url} on a machine with internet access and pass it with --ckpt PATH"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, tempfile.NamedTemporaryFile(
                dir=target.parent, delete=False, suffix=".part") as tmp:
            shutil.copyfileobj(response, tmp)
            tmp_path = Path(tmp.name)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        raise UserError(f"cannot download checkpoint ({getattr(e, 'reason', e)}); {hint}") from None
    if sha256 and (got := file_sha256(tmp_path)) != sha256:
        tmp_path.unlink(missing_ok=True)
        raise UserError(f"checksum mismatch for {url}: expected sha256 {sha256[:12]}…, got {got[:12]}…; {hint}")
    tmp_path.replace(target)  # atomic: a killed download never leaves a half file under the final name
    return target


# -- classification vs segmentation checkpoints --------------------------------------------------------------------
_SEG_HEAD = "decode_head."


def task_mismatch_message(model_keys: list[str], state_keys: list[str], source: str, arch: str) -> str | None:
    """A one-line error when a classification checkpoint meets a segmentation model or the other way round.

    Segmentation models (mmseg ``EncoderDecoder`` layout) have ``backbone.*`` and ``decode_head.*`` weights;
    classifiers have no ``decode_head.*``. Returns None when the mismatch is of another kind.
    """
    model_head = [k for k in model_keys if k.startswith(_SEG_HEAD)]
    state_has_head = any(k.startswith(_SEG_HEAD) for k in state_keys)
    if model_head and not state_has_head:
        names = ", ".join(model_head[:3]) + (", ..." if len(model_head) > 3 else "")
        return (f"{source} is not a segmentation checkpoint: the segmentation model {arch!r} needs its decode head "
                f"weights, and all {len(model_head)} decode_head.* keys are missing ({names}); pass the segmentation "
                "checkpoint (e.g. tapadl_fan_base_segmentation.pth), not the ImageNet classifier")
    if state_has_head and not model_head:
        return (f"{source} is a segmentation checkpoint (backbone.* and decode_head.* weights) and {arch!r} is a "
                "classifier; load it as a segmentation model (e.g. --model fan_b_tapadl_seg)")
    return None
