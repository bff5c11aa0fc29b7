"""Segmentation inference: whole-image and the official sliding-window ("slide") mode, memory-lean.

    logits = infer(model, x)                                           # the model's test_cfg (official: slide)
    logits = infer(model, x, mode="slide", crop=(1024, 1024), stride=(768, 768))
    logits = infer(model, x, mode="whole")
    pred = logits.argmax(1)                                            # = the official simple_test prediction

Slide mode follows mmseg 0.13 ``EncoderDecoder.slide_inference`` exactly: windows of ``crop`` start every ``stride``
pixels, the last row / column of windows is shifted back to end at the image border, every window is run through
the model (logits upsampled to the window), and each pixel gets the mean of the window logits covering it. Windows
are enumerated row by row and summed in that order, so the result is the official one bit for bit (adding the
official zero padding changes no float sum).

Memory: the official loop pads every window's logits to a full image-size tensor before adding it; here each window
is added in place into its region of one output tensor. Peak memory is the input, the output logits and one
window (batch) of activations. ``batch_windows`` > 1 runs several windows per forward pass (faster on a GPU, more
memory). ``output_size`` resizes the logits bilinearly afterwards (the official ``rescale`` to the original image
size). Gradients are off unless ``enable_grad=True``.

The model is called once per window batch through its ``__call__``, so ``AttentionCapture`` sees one forward pass per
window batch (a ``reduce`` callback gets every window's maps; ``cap.maps`` keeps the last window batch's).
"""

from collections.abc import Sequence
from typing import Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from attnprobe.errors import UserError

__all__ = ["infer", "slide_inference", "whole_inference", "slide_windows", "slide_count", "Window"]

Window = Tuple[int, int, int, int]  # (y1, y2, x1, x2)


def _pair(value: object, name: str) -> Tuple[int, int]:
    if isinstance(value, int):
        return value, value
    if isinstance(value, Sequence) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value):
        return int(value[0]), int(value[1])
    raise UserError(f"{name} must be (height, width) in pixels, got {value!r}")


def slide_windows(height: int, width: int, crop: Tuple[int, int], stride: Tuple[int, int]) -> List[Window]:
    """The official window grid, as ``(y1, y2, x1, x2)`` in the official enumeration order (rows, then columns).

    A window never leaves the image: the last ones are shifted back to end at the border, and a crop larger than
    the image is clipped to the image.
    """
    (h_crop, w_crop), (h_stride, w_stride) = crop, stride
    h_grids = max(height - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(width - w_crop + w_stride - 1, 0) // w_stride + 1
    windows = []
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y2 = min(h_idx * h_stride + h_crop, height)
            x2 = min(w_idx * w_stride + w_crop, width)
            windows.append((max(y2 - h_crop, 0), y2, max(x2 - w_crop, 0), x2))
    return windows


def slide_count(height: int, width: int, crop: Tuple[int, int], stride: Tuple[int, int],
                device: Optional[torch.device] = None) -> torch.Tensor:
    """How many windows cover each pixel: (1, 1, height, width), the official ``count_mat``."""
    count = torch.zeros(1, 1, height, width, device=device)
    for y1, y2, x1, x2 in slide_windows(height, width, crop, stride):
        count[..., y1:y2, x1:x2] += 1
    return count


def _chunks(windows: List[Window], size: int) -> Iterator[List[Window]]:
    for i in range(0, len(windows), size):
        yield windows[i:i + size]


def _to_size(logits: torch.Tensor, size: Tuple[int, int], align_corners: bool) -> torch.Tensor:
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=align_corners)


def whole_inference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits of the whole image (B, classes, H, W): one forward pass, upsampled to the input size if needed."""
    return _to_size(model(x), tuple(x.shape[-2:]), bool(getattr(model, "align_corners", False)))


def slide_inference(model: nn.Module, x: torch.Tensor, crop: Tuple[int, int], stride: Tuple[int, int],
                    batch_windows: int = 1) -> torch.Tensor:
    """The official sliding-window inference (see the module docstring): logits (B, classes, H, W)."""
    B, _, H, W = x.shape
    windows = slide_windows(H, W, crop, stride)
    align_corners = bool(getattr(model, "align_corners", False))
    out: Optional[torch.Tensor] = None
    for chunk in _chunks(windows, max(1, int(batch_windows))):
        crops = [x[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in chunk]
        batch = crops[0] if len(crops) == 1 else torch.cat(crops, dim=0)  # (k * B, 3, h, w)
        logits = _to_size(model(batch), tuple(batch.shape[-2:]), align_corners)  # (k * B, classes, h, w)
        if out is None:
            out = x.new_zeros((B, logits.shape[1], H, W), dtype=torch.float32)
        for i, (y1, y2, x1, x2) in enumerate(chunk):
            out[:, :, y1:y2, x1:x2] += logits[i * B:(i + 1) * B]
        del logits, batch, crops
    return out.div_(slide_count(H, W, crop, stride, device=out.device))


def infer(model: nn.Module, x: torch.Tensor, mode: Optional[str] = None, crop: Optional[Sequence[int]] = None,
          stride: Optional[Sequence[int]] = None, batch_windows: int = 1,
          output_size: Optional[Sequence[int]] = None, enable_grad: bool = False) -> torch.Tensor:
    """Segmentation logits at the input's resolution, in whole or the official slide mode.

    Args:
        model: a segmentation model returning per-pixel logits (e.g. ``attnprobe.create_model("fan_b_tapadl_seg")``).
        x: normalised images (B, 3, H, W).
        mode: "slide" or "whole"; default: the model's ``test_cfg["mode"]`` (official Cityscapes models: slide).
        crop, stride: window size and step (height, width) for slide mode; default: the model's ``test_cfg``.
        batch_windows: windows per forward pass in slide mode.
        output_size: (height, width) to resize the logits to at the end (the official ``rescale`` to the original
            image size, bilinear); None keeps the input size.
        enable_grad: keep the autograd graph (off by default: inference keeps one window's activations at a time).

    Returns:
        Logits (B, classes, H, W) before the softmax; ``argmax(1)`` is the predicted label map.

    Raises:
        UserError: an unknown mode, or slide mode without a crop size.
    """
    cfg = getattr(model, "test_cfg", None) or {}
    mode = mode or cfg.get("mode", "whole")
    if mode not in ("slide", "whole"):
        raise UserError(f"unknown inference mode {mode!r}; use 'slide' or 'whole'")
    with torch.set_grad_enabled(enable_grad and torch.is_grad_enabled()):
        if mode == "whole":
            logits = whole_inference(model, x)
        else:
            crop = crop if crop is not None else cfg.get("crop_size")
            stride = stride if stride is not None else cfg.get("stride")
            if crop is None or stride is None:
                raise UserError("slide inference needs crop=(h, w) and stride=(h, w) (the model has no test_cfg)")
            logits = slide_inference(model, x, _pair(crop, "crop"), _pair(stride, "stride"), batch_windows)
        if output_size is not None:
            logits = _to_size(logits, _pair(tuple(output_size), "output_size"),
                              bool(getattr(model, "align_corners", False)))
    return logits
