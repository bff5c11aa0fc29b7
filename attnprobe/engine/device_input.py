"""The device input path: JPEG decoding, resize, crop and normalisation on the compute device.

On a GPU, PIL decoding, resizing and float conversion in the loader workers (a few hundred full-size images per core
and second) cannot keep up with a model that runs thousands of images per second. Two device paths (`--decode`):

* `workers`: the workers only decode (PIL, as the CPU path) and ship uint8 pixels; resize, crop and normalisation
  run on the device (`attnprobe.data.tensor_transforms`: Pillow's resampling reimplemented exactly). Bit-identical
  to the CPU path on every device, so it is the default on CUDA.
* `device` (`gpu`): the workers only read files (`attnprobe.data.encoded`); `DeviceInput` also decodes each batch
  with `torchvision.io.decode_jpeg` on the device. On CPU that is libjpeg-turbo, bit-identical to PIL (tested), so
  the whole path is tested here and the CUDA path is the same code with `device="cuda"`. On CUDA it is nvJPEG,
  whose IDCT and chroma upsampling are not libjpeg's (torchvision's own tests allow a mean difference of 2 levels),
  so results decoded with nvJPEG are stored under their own preprocessing key (`;decode=nvjpeg`, `decoder_tag`).

Files the device cannot decode like PIL (PNG, CMYK JPEGs, truncated files) are decoded by PIL in the worker; a batch
that nvJPEG rejects is retried image by image, then with PIL, so an unreadable image is skipped exactly as on the
CPU path.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Sequence

import torch

from attnprobe.data.encoded import EncodedBatch
from attnprobe.data.tensor_transforms import TensorRecipe
from attnprobe.errors import UserError

__all__ = ["AUTO_ON_CUDA", "DECODE_CHOICES", "DeviceInput", "U8Stage", "decode_jpegs", "decoder_name", "decoder_tag",
           "resolve_decode"]

#: `--decode` values: auto (workers on CUDA, else cpu), cpu (decode and transform in the loader workers), workers
#: (decode in the workers, transform on the device), device (both on the compute device: nvJPEG on CUDA,
#: libjpeg-turbo in the main process on CPU), gpu (device, but insist on CUDA).
DECODE_CHOICES = ("auto", "cpu", "workers", "device", "gpu")

#: What `auto` picks on CUDA: the exact path. nvJPEG (`gpu`) is faster per CPU core but not bit-identical.
AUTO_ON_CUDA = "workers"

#: A stage on decoded, resized uint8 batches before normalisation, e.g. a torch corruption engine that keeps images on
#: the device: `stage(images_u8 (B, 3, S, S), batch) -> (B, 3, S, S) uint8`; `batch.index` names the samples.
U8Stage = Callable[[torch.Tensor, EncodedBatch], torch.Tensor]


def resolve_decode(requested: str | None, device: torch.device) -> str:
    """"cpu", "workers" or "device" for a `--decode` value on `device` ("auto": `AUTO_ON_CUDA` on CUDA, else cpu)."""
    r = (requested or "auto").strip().lower()
    if r not in DECODE_CHOICES:
        raise UserError(f"unknown --decode {requested!r}; use one of {', '.join(DECODE_CHOICES)}")
    if r == "gpu":
        if device.type != "cuda":
            raise UserError(f"--decode gpu needs a CUDA device, but the run is on {device}; use --decode device "
                            f"(decode in the main process) or --decode cpu")
        return "device"
    if r == "auto":
        return AUTO_ON_CUDA if device.type == "cuda" else "cpu"
    return r


def decoder_tag(decode: str, device: torch.device) -> str:
    """The preprocessing-key suffix of cells read with `decode` on `device`: "" where the pixels equal PIL's (every
    path but nvJPEG), else the decoder's name."""
    return ";decode=nvjpeg" if decode == "device" and device.type == "cuda" else ""


def decoder_name(decode: str, device: torch.device) -> str:
    """What decoded and transformed a cell's images (stored in the cell's info)."""
    if decode == "cpu":
        return "pil"
    if decode == "workers":
        return f"pil (workers) + {device.type} transform"
    return "nvjpeg" if device.type == "cuda" else "libjpeg-turbo (main process) + cpu transform"


def decode_jpegs(data: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Decode JPEG files (1-D uint8 CPU tensors) to (3, H, W) uint8 RGB on `device`, in one batched call.

    Raises:
        RuntimeError: any of the files cannot be decoded (the whole batch fails).
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        # NOTE: torchvision 0.29 deprecates its image codecs in favour of TorchCodec; they still work
        warnings.filterwarnings("ignore", message=".*image decoding and encoding capabilities.*")
        try:
            out = decode_jpeg(list(data), mode=ImageReadMode.RGB, device=device)
        except TypeError:  # NOTE: torchvision < 0.19 decodes one tensor per call
            out = [decode_jpeg(d, mode=ImageReadMode.RGB, device=device) for d in data]
    return list(out)


def _pil_decode(data: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    """The CPU path's decoder for one file; None if PIL cannot read it either."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data.numpy().tobytes())) as im:
            im.load()
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError):
        return None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).to(device)


class DeviceInput:
    """Turns an `EncodedBatch` into the model input on `device`, with the transform `recipe` of its cell.

    Args:
        recipe: the tensor version of the cell's CPU transform.
        device: where to decode and transform.
        stages: optional uint8 stages between the geometry and the normalisation (see `U8Stage`).
    """

    def __init__(self, recipe: TensorRecipe, device: torch.device, stages: Sequence[U8Stage] = ()) -> None:
        self.recipe, self.device, self.stages = recipe, torch.device(device), list(stages)

    def decode(self, batch: EncodedBatch) -> list[torch.Tensor | None]:
        """Every image of the batch as (3, H, W) uint8 on the device; None where no decoder can read it."""
        out: list[torch.Tensor | None] = [None] * len(batch)
        jpeg = [i for i, im in enumerate(batch.images) if im.data is not None]
        for i, im in enumerate(batch.images):
            if im.pixels is not None:
                out[i] = im.pixels.to(self.device, non_blocking=True)
        if jpeg:
            files = [batch.images[i].data for i in jpeg]
            try:
                decoded: list[torch.Tensor | None] = list(decode_jpegs(files, self.device))
            except RuntimeError:  # one bad file fails the whole batch: retry one by one, then with PIL
                decoded = [self._decode_one(f) for f in files]
            for i, img in zip(jpeg, decoded):
                out[i] = img
        return out

    def _decode_one(self, data: torch.Tensor) -> torch.Tensor | None:
        try:
            return decode_jpegs([data], self.device)[0]
        except RuntimeError:
            return _pil_decode(data, self.device)

    def __call__(self, batch: EncodedBatch, ok: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(model input (B, 3, S, S) float32 on the device, readable flags (B,) bool on CPU).

        Unreadable samples get a zero image (the engine leaves them out of the scoring)."""
        images = self.decode(batch)
        readable = torch.tensor([img is not None for img in images], dtype=torch.bool)
        if ok is not None:
            readable &= ok.reshape(-1).bool()
        shaped = [self.recipe.geometry(img) if r else None for img, r in zip(images, readable.tolist())]
        like = next((img for img in shaped if img is not None), None)
        if like is None:
            side = self.recipe.fit or self.recipe.crop or 1
            like = torch.zeros((3, side, side), dtype=torch.uint8, device=self.device)
        u8 = torch.stack([img if img is not None else torch.zeros_like(like) for img in shaped])  # (B, 3, S, S)
        for stage in self.stages:
            u8 = stage(u8, batch)
        return self.recipe.finish(u8), readable
