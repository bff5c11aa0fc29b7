"""Reading checkpoints: file formats, wrapper dicts, `module.` prefixes, strict loading with one clear error.

Accepted files: `.pth`, `.pth.tar`, `.pt`, `.bin` (torch pickles) and `.safetensors`, or a model folder as timm and
Hugging Face save them (`model.safetensors` / `pytorch_model.bin` beside `config.json`). A torch file may hold the
weights directly or wrapped as `state_dict` / `model` / `state_dict_ema` / `model_ema` (timm and DeiT training
scripts); EMA weights are used only when asked for.

Every command and the Python API report a missing or unusable checkpoint with the same wording (`weights_file`).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
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
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pth.tar", ".pt", ".bin")
MISSING_FIX = ("give --ckpt the path of a .pth/.pth.tar/.bin/.safetensors file or of a model folder, or leave --ckpt "
               "out to use the model's published weights")


def file_sha256(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            h.update(block)
    return h.hexdigest()


def _read_file(path: Path, mmap: bool = False) -> Any:
    if path.name.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    if mmap and zipfile.is_zipfile(path):  # NOTE: only torch's zip format can be memory-mapped
        return _torch_load(path, mmap=True)
    return _torch_load(path)


def _torch_load(path: Path, **kwargs: Any) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, **kwargs)
    except pickle.UnpicklingError:
        # NOTE: training checkpoints from timm scripts pickle the argparse Namespace and other objects, which the
        # safe loader refuses. The user handed us this file explicitly, so we trust it like the official code does.
        return torch.load(path, map_location="cpu", weights_only=False, **kwargs)


def _strip_prefixes(key: str) -> str:
    for prefix in _STRIP_PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key


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
        state[_strip_prefixes(k)] = v
    if not state:
        raise UserError(f"{source} contains no weights")
    return state


def weights_file(path: str | Path, hint: str | None = None) -> Path:
    """The weights file that `path` names: the file itself, or the weights file of a model folder.

    Args:
        path: a checkpoint file or a timm / Hugging Face model folder.
        hint: what to do when the path does not exist (default: the generic fix).

    Raises:
        UserError: missing path, empty file, or a folder without (or with several) weights files.
    """
    from attnprobe.hub import WEIGHTS_NAMES

    p = Path(path).expanduser()
    if p.is_dir():
        found = next((p / n for n in WEIGHTS_NAMES if (p / n).is_file()), None)
        if found is None:
            candidates = sorted(f for f in p.iterdir() if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES))
            if len(candidates) > 1:
                raise UserError(f"{p} holds several weights files ({', '.join(f.name for f in candidates[:4])}); "
                                "pass the one to load with --ckpt FILE")
            if not candidates:
                raise UserError(f"{p} is a folder without a weights file ({' / '.join(WEIGHTS_NAMES[:2])}); pass the "
                                "weights file itself with --ckpt FILE")
            found = candidates[0]
        p = found
    elif not p.is_file():
        raise UserError(f"checkpoint not found: {p}; {hint or MISSING_FIX}")
    if p.stat().st_size == 0:
        raise UserError(f"checkpoint {p} is empty (0 bytes), probably an interrupted download or copy; fetch it again")
    return p


def read_state_dict(path: str | Path, use_ema: bool = False) -> dict[str, torch.Tensor]:
    """Read a checkpoint file (or a model folder's weights) and return its unwrapped, prefix-stripped state dict."""
    p = weights_file(path)
    try:
        obj = _read_file(p)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - any reader failure means an unreadable file for the user
        raise UserError(f"cannot read checkpoint {p} ({_first_line(e)}); is it a complete "
                        ".pth/.pth.tar/.bin/.safetensors file?") from None
    return unwrap_state_dict(obj, use_ema=use_ema, source=str(p))


def _first_line(e: BaseException) -> str:
    """`Type: first line of the message` (some readers raise with an empty message)."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:120]}" if lines else type(e).__name__


def peek_shapes(path: str | Path, use_ema: bool = False) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of a checkpoint without reading its tensors (safetensors header or a memory-mapped load).

    Used to size a model's classifier before it is built, and to check a benchmark's output space before any work.
    """
    p = weights_file(path)
    if p.name.endswith(".safetensors"):
        from safetensors import safe_open

        try:
            with safe_open(str(p), framework="pt") as f:
                shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - not a dict
        except Exception as e:  # noqa: BLE001
            raise UserError(f"cannot read checkpoint {p} ({_first_line(e)}); is it a complete .safetensors file?") \
                from None
        return {_strip_prefixes(k): v for k, v in shapes.items()}
    try:
        obj = _read_file(p, mmap=True)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"cannot read checkpoint {p} ({_first_line(e)}); is it a complete "
                        ".pth/.pth.tar/.bin/.safetensors file?") from None
    return {k: tuple(v.shape) for k, v in unwrap_state_dict(obj, use_ema=use_ema, source=str(p)).items()}


def classifier_outputs(shapes: Mapping[str, Any], classifiers: tuple[str, ...]) -> int | None:
    """Number of classes of a checkpoint's classifier, from its weight's first dimension.

    Args:
        shapes: parameter name → shape (or tensor).
        classifiers: the architecture's classifier module names (timm's `pretrained_cfg["classifier"]`).

    Returns:
        The rows of the first classifier's weight; 0 when the checkpoint has none of the classifier's parameters
        (a backbone saved without its head); None when the classifier cannot be told apart.
    """
    for name in classifiers:
        weight = shapes.get(f"{name}.weight")
        if weight is not None:
            shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else tuple(weight)
            return int(shape[0]) if shape else None
    if classifiers and not any(k.startswith(f"{c}.") for c in classifiers for k in shapes):
        return 0
    return None


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


def load_checkpoint(model: nn.Module, path: str | Path, use_ema: bool = False) -> str:
    """Load a checkpoint file (or a model folder's weights) strictly into `model`; returns the file's sha256.

    `attnprobe.load_checkpoint(model, "finetuned.pth")` for a model built elsewhere; `attnprobe.create_model(name,
    checkpoint=...)` builds and loads in one step (and sizes the classifier from the checkpoint).
    """
    file = weights_file(path)
    load_weights(model, read_state_dict(file, use_ema=use_ema), arch=type(model).__name__, source=str(file))
    return file_sha256(file)


def cache_dir() -> Path:
    """Where downloaded checkpoints live: `$ATTNPROBE_CACHE` or `~/.cache/attnprobe/checkpoints`."""
    return Path(os.environ.get("ATTNPROBE_CACHE", Path.home() / ".cache" / "attnprobe" / "checkpoints"))


def cached_checkpoint(url: str, sha256: str | None = None) -> Path | None:
    """The cached download of `url` if it is there (and matches `sha256` when known), without any network access."""
    target = cache_dir() / Path(urllib.request.urlparse(url).path).name
    if target.is_file() and target.stat().st_size > 0 and (not sha256 or file_sha256(target) == sha256):
        return target
    return None


def fetch_checkpoint(url: str, sha256: str | None = None, timeout: float = 30.0) -> Path:
    """Download `url` into the cache once (verifying `sha256` when known) and return the local path.

    Raises:
        UserError: offline, download failure or checksum mismatch, with the fix (download elsewhere, pass --ckpt).
    """
    if (cached := cached_checkpoint(url, sha256)) is not None:
        return cached
    target = cache_dir() / Path(urllib.request.urlparse(url).path).name
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
