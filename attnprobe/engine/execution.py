"""How the model runs: numeric precision (autocast), channels_last, torch.compile, and how they mark stored results.

    ex = Execution(precision="bf16", compile=True)
    ex.check(device)                       # UserError (one line) if the device cannot autocast to bf16
    model = ex.prepare(model, device)      # channels_last where it helps, then torch.compile
    with ex.autocast(device):
        logits = model(x)

Precision changes predictions (a few per thousand images in bf16, see the README), so results computed in reduced
precision are stored under their own key: `tag_preprocessing` appends `;precision=bf16` to the cell's preprocessing
key (fp32 keeps the plain key, so stores written before this option stay valid). channels_last and compile change
only the order of floating-point operations, like another GPU would; they are recorded in the cell's info, not in its
key.
"""

from __future__ import annotations

import warnings
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from attnprobe.errors import UserError

__all__ = ["PRECISIONS", "Execution", "autocast_dtype", "parse_precision", "precision_of", "tag_preprocessing"]

#: Precision names, fp32 first (the default, for paper numbers).
PRECISIONS = ("fp32", "bf16", "fp16")
_ALIASES = {"fp32": "fp32", "float32": "fp32", "float": "fp32", "32": "fp32",
            "bf16": "bf16", "bfloat16": "bf16",
            "fp16": "fp16", "float16": "fp16", "half": "fp16", "16": "fp16"}
_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_TAG = ";precision="


def parse_precision(value: str | torch.dtype | None) -> str:
    """A precision name ("fp32", "bf16", "fp16") from a name, an alias or a torch dtype; None means fp32."""
    if value is None:
        return "fp32"
    if isinstance(value, torch.dtype):
        for name, dt in _DTYPES.items():
            if dt == value or (dt is None and value == torch.float32):
                return name
        raise UserError(f"unsupported precision {value}; use one of {', '.join(PRECISIONS)}")
    name = _ALIASES.get(str(value).strip().lower())
    if name is None:
        raise UserError(f"unknown precision {value!r}; use one of {', '.join(PRECISIONS)}")
    return name


def autocast_dtype(precision: str | torch.dtype | None) -> torch.dtype | None:
    """The autocast dtype of a precision (None for fp32: no autocast)."""
    return _DTYPES[parse_precision(precision)]


def tag_preprocessing(key: str, precision: str | torch.dtype | None) -> str:
    """The preprocessing key of results computed in `precision` (unchanged for fp32)."""
    name = parse_precision(precision)
    return key if name == "fp32" else f"{key}{_TAG}{name}"


def precision_of(preprocessing_key: str) -> str:
    """The precision a stored cell was computed in, read back from its preprocessing key."""
    head, sep, tail = preprocessing_key.rpartition(_TAG)
    return tail.split(";")[0] if sep else "fp32"


def _has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, (nn.Conv2d, nn.Conv3d)) for m in model.modules())


@dataclass(frozen=True)
class Execution:
    """How to run a model: `precision` ("fp32", "bf16", "fp16": autocast), `channels_last` (None: on CUDA for
    models with convolutions, where cuDNN prefers NHWC; off on CPU), `compile` (`torch.compile` the model)."""

    precision: str = "fp32"
    channels_last: bool | None = None
    compile: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "precision", parse_precision(self.precision))

    @property
    def dtype(self) -> torch.dtype | None:
        return _DTYPES[self.precision]

    def check(self, device: torch.device) -> None:
        """Raise `UserError` (one line) if `device` cannot run this precision."""
        dt = self.dtype
        if dt is None:
            return
        if device.type == "cuda" and dt == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            raise UserError(f"this GPU ({torch.cuda.get_device_name(device)}) has no bf16 support; use --precision "
                            f"fp16 or fp32")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                with torch.autocast(device.type, dtype=dt):
                    enabled = _autocast_enabled(device.type)
            except RuntimeError as e:
                raise UserError(f"--precision {self.precision} is not supported on {device.type} ({e}); use "
                                f"--precision fp32") from None
        if not enabled or any("not supported" in str(w.message) for w in caught):
            raise UserError(f"--precision {self.precision} is not supported on {device.type} by this torch "
                            f"{torch.__version__}; use --precision fp32 or another device")

    def autocast(self, device: torch.device) -> AbstractContextManager:
        """The autocast context of this precision on `device` (a no-op for fp32)."""
        dt = self.dtype
        return nullcontext() if dt is None else torch.autocast(device.type, dtype=dt)

    def uses_channels_last(self, model: nn.Module, device: torch.device) -> bool:
        if self.channels_last is not None:
            return bool(self.channels_last)
        return device.type == "cuda" and _has_conv(model)

    def prepare(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The model to call: converted to channels_last when it helps, then compiled if asked (once per run)."""
        if self.uses_channels_last(model, device):
            model = model.to(memory_format=torch.channels_last)
        if self.compile:
            model = torch.compile(model)  # NOTE: compiled lazily, at the first batch
        return model

    def info(self, model: nn.Module, device: torch.device) -> dict[str, Any]:
        """What is stored with each cell."""
        return {"precision": self.precision, "channels_last": self.uses_channels_last(model, device),
                "compile": self.compile, "device_type": device.type}


def _autocast_enabled(device_type: str) -> bool:
    try:
        return bool(torch.is_autocast_enabled(device_type))
    except TypeError:  # NOTE: torch < 2.4 has no device argument
        return bool(torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled())
