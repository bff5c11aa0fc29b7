"""The official segmentation test pipeline (TAP/ADL, MMSegmentation 0.13), and reading images and label maps.

Steps (`attnprobe/protocol/cityscapes.json -> test_pipeline`):

1. decode the image as BGR uint8 with OpenCV (what `mmcv.imread` does);
2. keep-ratio resize to fit 2048 x 1024 (`mmcv.imrescale`): s = min(2048 / long side, 1024 / short side), new size
   `int(side * s + 0.5)`, `cv2.resize(..., INTER_LINEAR)`. Cityscapes 2048 x 1024 stays as it is (OpenCV copies an
   image resized to its own size); ACDC 1920 x 1080 becomes 1820 x 1024;
3. BGR -> RGB, `(x - mean) / std` in float32 with mean (123.675, 116.28, 103.53), std (58.395, 57.12, 57.375);
   no flip, no padding;
4. the label map stays at its original size: the model's logits are resized to it before the argmax.

We call OpenCV itself for decoding and resizing, so the network input is bit-identical to the official one; the
normalisation matches `mmcv.imnormalize` exactly (checked on the reference fixture). For a device-side pipeline
(`output="uint8"` or `"native"` datasets) `normalize_on_device` and `resize_uint8` do steps 2-3 on a batch in torch
(`resize_uint8` is within one grey level of OpenCV; identity when the size does not change).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "MEAN",
    "STD",
    "SegTestPipeline",
    "label_id_lut",
    "normalize_on_device",
    "probe_image",
    "read_bgr",
    "read_label",
    "rescale_size",
    "resize_uint8",
]

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
#: PIL modes accepted for label maps: 8-bit grey or palette (palette PNGs keep their indices, as mmcv/PIL read them).
LABEL_MODES = ("L", "P")


def rescale_size(height: int, width: int, scale: Sequence[int] = (2048, 1024)) -> tuple[int, int]:
    """The (height, width) `mmcv.imrescale` gives an image resized with keep_ratio to fit `scale`.

    Args:
        height: image height.
        width: image width.
        scale: (long edge, short edge) bounds, in any order (mmcv uses max/min of the pair).
    """
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * float(factor) + 0.5), int(width * float(factor) + 0.5)


def read_bgr(path: str | Path) -> np.ndarray:
    """Decode an image file as BGR uint8 (H, W, 3), as `mmcv.imread(flag="color")` does.

    Raises:
        OSError: the file is missing or unreadable.
        ValueError: the bytes are not a decodable image (truncated or corrupt).
    """
    import cv2

    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise ValueError(f"cannot decode image {path}")
    return img


def read_label(path: str | Path, lut: np.ndarray | None = None) -> np.ndarray:
    """Read a label PNG as uint8 (H, W), as `mmcv.imread(flag="unchanged", backend="pillow")`; `lut` maps values.

    Raises:
        OSError / ValueError: unreadable, truncated, or not an 8-bit single-channel image.
    """
    from PIL import Image

    with Image.open(path) as im:
        if im.mode not in LABEL_MODES:
            raise ValueError(f"label map {path} is a {im.mode} image, not an 8-bit label PNG")
        im.load()
        arr = np.array(im, dtype=np.uint8)
    return lut[arr] if lut is not None else arr


def probe_image(path: str | Path) -> tuple[tuple[int, int], str] | None:
    """(height, width) and PIL mode from the file header only, or None when the header is unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return (int(im.height), int(im.width)), str(im.mode)
    except (OSError, ValueError, SyntaxError):
        return None


@lru_cache(maxsize=1)
def label_id_lut() -> np.ndarray:
    """uint8 table (256,) mapping Cityscapes labelIds to trainIds (255 for everything without a trainId)."""
    from attnprobe.protocol import cityscapes_label_id_to_train_id

    lut = np.full(256, 255, dtype=np.uint8)
    for label_id, train_id in cityscapes_label_id_to_train_id().items():
        if 0 <= label_id < 256:
            lut[label_id] = train_id
    lut.setflags(write=False)
    return lut


@dataclass(frozen=True)
class SegTestPipeline:
    """BGR uint8 image -> network input, the official test pipeline (see the module docstring).

    Attributes:
        scale: keep-ratio bounds (long, short), (2048, 1024) for Cityscapes, Cityscapes-C and ACDC.
        mean: per-channel mean, RGB order.
        std: per-channel std, RGB order.
    """

    scale: tuple[int, int] = (2048, 1024)
    mean: tuple[float, float, float] = MEAN
    std: tuple[float, float, float] = STD

    def key(self) -> str:
        """Identifies the preprocessing in the results store."""
        m = ",".join(f"{v:g}" for v in self.mean)
        s = ",".join(f"{v:g}" for v in self.std)
        return f"seg-test:rescale{self.scale[0]}x{self.scale[1]}-cv2linear:bgr2rgb:mean={m}:std={s}"

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Network input (height, width) for an image of this size."""
        return rescale_size(height, width, self.scale)

    def resize(self, bgr: np.ndarray) -> np.ndarray:
        """Keep-ratio resize with OpenCV's bilinear filter (`mmcv.imrescale`)."""
        import cv2

        h, w = self.output_size(*bgr.shape[:2])
        if (h, w) == bgr.shape[:2]:
            return bgr  # NOTE: cv2.resize to the same size is an exact copy; skip it
        return cv2.resize(bgr, (w, h), interpolation=cv2.INTER_LINEAR)

    def normalize(self, rgb_uint8_chw: torch.Tensor) -> torch.Tensor:
        """(3, H, W) or (B, 3, H, W) uint8 RGB -> float32, `(x - mean) / std` (bit-identical to mmcv.imnormalize)."""
        return normalize_on_device(rgb_uint8_chw, self.mean, self.std)

    def to_uint8_rgb(self, bgr: np.ndarray, resize: bool = True) -> torch.Tensor:
        """BGR (H, W, 3) -> resized RGB uint8 tensor (3, H', W') (no resize with `resize=False`)."""
        img = self.resize(bgr) if resize else bgr
        return torch.from_numpy(np.ascontiguousarray(img[..., ::-1].transpose(2, 0, 1)))

    def __call__(self, bgr: np.ndarray) -> torch.Tensor:
        """BGR uint8 (H, W, 3) -> normalised float32 RGB tensor (3, H', W')."""
        return self.normalize(self.to_uint8_rgb(bgr))


def normalize_on_device(x: torch.Tensor, mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> torch.Tensor:
    """uint8 RGB (…, 3, H, W) -> float32 `(x - mean) / std` on x's device (what the official Normalize computes)."""
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(3, 1, 1)
    return (x.float() - m) / s


def resize_uint8(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of uint8 images (B, C, H, W) on their device, like `cv2.resize(INTER_LINEAR)`.

    Half-pixel centres and no antialiasing, as OpenCV; OpenCV's 11-bit fixed-point weights make a few pixels differ
    by one grey level. The identity when `size` is the input size (the Cityscapes case).
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    out = torch.nn.functional.interpolate(x.float(), size=size, mode="bilinear", align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)
