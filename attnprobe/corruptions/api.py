"""`corrupt`: the 19 ImageNet-C corruptions on a uint8 batch, on its own device, seeded per image."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from attnprobe.corruptions import blur, digital, noise, spatter, weather
from attnprobe.corruptions.params import RECIPES, Recipe, get_recipe
from attnprobe.corruptions.rng import ImageRNG, image_keys
from attnprobe.corruptions.threads import map_chunks
from attnprobe.errors import UserError

__all__ = ["ENGINE_VERSION", "RECIPES", "corrupt", "engine_id"]

#: Bumped whenever any output pixel of any corruption may change (algorithms, draw order, seeding); it is part of
#: `engine_id`, which the data layer puts into dataset fingerprints, so stored results of two versions never mix.
#: 2: compiled CPU loops (float32 sums in another order than v1: at most 1 grey level apart, on < 0.5 % of pixels)
#: and glass blur's shifts drawn 15 to a 31-bit draw.
ENGINE_VERSION = 2
MIN_SIDE = 32
# NOTE: on the CPU, elementwise chains are memory-bound: a few images at a time stay in cache (2x faster for the
# float64 colour conversions), and the chunks run side by side (`threads.map_chunks`). Spatter's row sweeps pay per
# call instead, so it takes more images at once.
_CPU_CHUNK_PIXELS = 4 * 224 * 224
_CPU_CHUNK_FACTOR = {"spatter": 8}
# NOTE: frost is one multiply-add of the whole batch and a crop per image: torch's threads beat chunks there
_NO_CHUNKS = frozenset({"frost"})

# name -> fn(x float [0, 1], x uint8, severity, rng, recipe) -> 0-255 float (truncated by `corrupt`) or uint8
_Fn = Callable[[torch.Tensor, torch.Tensor, int, ImageRNG, Recipe], torch.Tensor]
_CORRUPTIONS: dict[str, _Fn] = {
    "gaussian_noise": lambda x, u, s, r, rc: noise.gaussian_noise(u, s, r),
    "shot_noise": lambda x, u, s, r, rc: noise.shot_noise(u, s, r),
    "impulse_noise": lambda x, u, s, r, rc: noise.impulse_noise(u, s, r),
    "defocus_blur": lambda x, u, s, r, rc: blur.defocus_blur(x, s),
    "glass_blur": lambda x, u, s, r, rc: blur.glass_blur(u, s, r),
    "motion_blur": lambda x, u, s, r, rc: blur.motion_blur(x, s, r, rc),
    "zoom_blur": lambda x, u, s, r, rc: blur.zoom_blur(u, s, rc),
    "snow": lambda x, u, s, r, rc: weather.snow(u, s, r, rc),
    "frost": lambda x, u, s, r, rc: weather.frost(u, s, r, rc),
    "fog": lambda x, u, s, r, rc: weather.fog(u, s, r),
    "brightness": lambda x, u, s, r, rc: digital.brightness(u, s),
    "contrast": lambda x, u, s, r, rc: digital.contrast(x, s),
    "elastic_transform": lambda x, u, s, r, rc: digital.elastic_transform(u, s, r, rc),
    "pixelate": lambda x, u, s, r, rc: digital.pixelate(u, s, rc),
    "jpeg_compression": lambda x, u, s, r, rc: digital.jpeg_compression(u, s),
    "speckle_noise": lambda x, u, s, r, rc: noise.speckle_noise(x, s, r),
    "gaussian_blur": lambda x, u, s, r, rc: blur.gaussian_blur(x, s),
    "spatter": lambda x, u, s, r, rc: spatter.spatter(x, s, r),
    "saturate": lambda x, u, s, r, rc: digital.saturate(u, s),
}
# NOTE: these never look at the float copy; skip making it.
_UINT8_ONLY = frozenset({"brightness", "elastic_transform", "fog", "frost", "gaussian_noise", "glass_blur",
                         "impulse_noise", "jpeg_compression", "pixelate", "saturate", "shot_noise", "snow",
                         "zoom_blur"})


def engine_id(recipe: str = "imagenet-c") -> str:
    """The identifier of this engine and recipe (e.g. ``torch-v2/imagenet-c``), for dataset fingerprints."""
    return f"torch-v{ENGINE_VERSION}/{get_recipe(recipe).name}"


def _check_images(images: object) -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise UserError(f"corrupt() expects a torch.Tensor of uint8 images (B, 3, H, W), got {type(images).__name__}"
                        f"; convert with torch.from_numpy(array).permute(0, 3, 1, 2)")
    if images.dtype != torch.uint8:
        raise UserError(f"corrupt() expects uint8 images with values 0-255, got dtype {images.dtype}; convert "
                        f"with (x * 255).round().to(torch.uint8)")
    if images.dim() not in (3, 4) or images.shape[-3] != 3:
        raise UserError(f"corrupt() expects images of shape (B, 3, H, W) or (3, H, W), got {tuple(images.shape)}")
    h, w = images.shape[-2:]
    if min(h, w) < MIN_SIDE:
        raise UserError(f"images of {w}x{h} pixels are too small to corrupt; both sides must be >= {MIN_SIDE}")
    return images


def _check_severity(severity: object) -> int:
    if isinstance(severity, bool) or not isinstance(severity, int) or not 1 <= severity <= 5:
        raise UserError(f"invalid severity {severity!r}; use an integer from 1 to 5")
    return int(severity)


def corrupt(images: torch.Tensor, name: str, severity: int, *, seed: int | Sequence[int] | torch.Tensor = 0,
            recipe: str = "imagenet-c") -> torch.Tensor:
    """Apply one ImageNet-C corruption to a batch of images, on their device.

    The image before any JPEG save: the released ImageNet-C files were additionally saved as JPEG quality 85
    (`attnprobe.corruptions.jpeg_roundtrip` does that round trip).

    Args:
        images: uint8 (B, 3, H, W) (or one (3, H, W) image), RGB, on the CPU or a GPU; both sides >= 32 pixels.
        name: one of the 15 benchmark or 4 extra corruption names (`attnprobe.data.corruptions.corruption_names`).
        severity: 1 .. 5.
        seed: an int: each image's draws come from this seed and the image's own pixels; or one seed per image
            (a sequence or 1-D integer tensor), e.g. `attnprobe.data.corruptions.image_seed(image_id, name, s)`.
            Either way an image's result does not depend on the rest of the batch or on the device.
        recipe: "imagenet-c" (the code that generated the released ImageNet-C) or "imagecorruptions" (the
            `imagecorruptions` package: Cityscapes-C, FAN's scripts). See `attnprobe.corruptions.params`.

    Returns:
        uint8 tensor of the same shape and device.

    Raises:
        UserError: unknown name or recipe, severity outside 1..5, images that are not uint8 (B, 3, H, W).
    """
    from attnprobe.data.corruptions import validate_corruption

    name = validate_corruption(name)
    rc = get_recipe(recipe)
    severity = _check_severity(severity)
    images = _check_images(images)
    single = images.dim() == 3
    batch = images[None] if single else images
    if batch.shape[0] == 0:
        return images.clone()
    with torch.no_grad():
        keys = image_keys(batch, seed)
        b, _, h, w = batch.shape
        chunk = b
        if batch.device.type == "cpu" and name not in _NO_CHUNKS:
            chunk = max(1, _CPU_CHUNK_FACTOR.get(name, 1) * _CPU_CHUNK_PIXELS // (h * w))
        parts = map_chunks(lambda i: _corrupt_chunk(batch[i:i + chunk], name, severity, keys[i:i + chunk], rc),
                           range(0, b, chunk), batch.device)
        out = parts[0] if len(parts) == 1 else torch.cat(parts)
    return out[0] if single else out


def _corrupt_chunk(batch: torch.Tensor, name: str, severity: int, keys: list[int], rc: Recipe) -> torch.Tensor:
    rng = ImageRNG(keys, batch.device)
    x = None if name in _UINT8_ONLY else batch.to(torch.float32).div_(255)
    out = _CORRUPTIONS[name](x, batch, severity, rng, rc)
    if out.dtype != torch.uint8:
        out = out.nan_to_num_(0.0).clamp_(0, 255).to(torch.uint8)  # NOTE: truncates, as NumPy's np.uint8
    return out

