"""On-the-fly common corruptions, deterministic per image, with two backends.

Generic on purpose: the attention diagnostics (`attnprobe stability`) and the on-the-fly ImageNet-C benchmark both
call `corrupt` on a centre-cropped uint8 image and get the same pixels for the same seed, whatever ran before.

    seed = image_seed("n01440764/ILSVRC2012_val_00000293.JPEG", "gaussian_noise", 3)
    noisy = corrupt(crop_u8, "gaussian_noise", 3, seed=seed)   # (H, W, 3) uint8
    batch = corrupt_batch(crops_u8, "gaussian_noise", 3, seeds)  # (B, 3, H, W) uint8 tensor, on its device

Backends (`BACKENDS`):

* ``"torch"`` (the default): `attnprobe.corruptions`, the batched engine, with recipe ``"imagenet-c"`` (the code
  that generated the released ImageNet-C; the default) or ``"imagecorruptions"``.
* ``"reference"``: the `imagecorruptions` package itself, one image at a time (recipe ``"imagecorruptions"`` only).
  It draws from NumPy's *global* random state, so `corrupt` seeds that state for the call only and restores it
  afterwards (under a lock, so threads do not interleave draws); `impulse_noise` and `glass_blur` also get the seed
  through their own `seed` argument, since they do not use the global state. Caller's random state is never
  changed.

`corruption_id(backend, recipe)` names the pixels a backend and recipe make (e.g. ``torch-v2/imagenet-c``); it goes
into dataset fingerprints and cell keys, so results of different backends or recipes never mix in a store.

Seeds come from SHA-256 of the image id (not Python's salted `hash()`), so they are identical across processes,
machines and reruns: baseline and TAP/ADL models see the same corrupted inputs.
"""

from __future__ import annotations

import difflib
import hashlib
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from attnprobe.errors import UserError

__all__ = [
    "BACKENDS", "DEFAULT_BACKEND", "DEFAULT_RECIPE", "SEED_SCHEME", "SEVERITIES", "benchmark_names", "choose_backend",
    "corrupt",
    "corrupt_batch", "corruption_id", "corruption_names", "extra_names", "image_seed", "parse_severities",
    "resolve_recipe", "tag_corruption", "tagged_corruption", "untag_corruption", "validate_backend",
    "validate_corruption", "validate_severity",
]

#: Identifies how seeds are derived; stored with results so a change of scheme is never mixed with old results.
SEED_SCHEME = "sha256(image|corruption|severity|base)-v1"
SEVERITIES = (1, 2, 3, 4, 5)
#: imagecorruptions rejects images smaller than this (pixels per side); so does the torch engine.
MIN_SIDE = 32
BACKENDS = ("torch", "reference")
DEFAULT_BACKEND = "torch"
DEFAULT_RECIPE = "imagenet-c"
#: the one recipe of the reference backend
REFERENCE_RECIPE = "imagecorruptions"

# NOTE: imagecorruptions uses the process-wide NumPy RNG; one lock serialises the seed-draw-restore sequence.
_RNG_LOCK = threading.Lock()
_OWN_SEED_ARG = frozenset({"impulse_noise", "glass_blur"})


def benchmark_names() -> list[str]:
    """The 15 ImageNet-C benchmark corruptions (the mCE set), in the canonical order."""
    from attnprobe.protocol import benchmark_corruptions

    return benchmark_corruptions()


def extra_names() -> list[str]:
    """The 4 extra (validation) corruptions: speckle_noise, gaussian_blur, spatter, saturate."""
    from attnprobe.protocol import extra_corruptions

    return extra_corruptions()


def corruption_names() -> list[str]:
    """All 19 corruption names: the 15 benchmark ones, then the 4 extra ones."""
    return benchmark_names() + extra_names()


def validate_corruption(name: str) -> str:
    """Return `name` if it is a known corruption, else raise `UserError` with a "did you mean" hint."""
    names = corruption_names()
    if name in names:
        return name
    close = difflib.get_close_matches(str(name), names, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise UserError(f"unknown corruption {name!r}; {hint}choose one of: {', '.join(names)}")


def validate_severity(severity: int | str) -> int:
    """Return the severity as an int in 1..5, else raise `UserError`."""
    try:
        s = int(severity)
        ok = str(severity).strip().lstrip("+").isdigit() if isinstance(severity, str) else s == severity
    except (TypeError, ValueError):
        ok = False
    if not ok or s not in SEVERITIES:
        raise UserError(f"invalid severity {severity!r}; use an integer from 1 to 5, or 'all'")
    return s


def parse_severities(value: str | int | None, default: int = 3) -> list[int]:
    """Parse a CLI severity: `None` → `[default]`, `"all"` → `[1..5]`, `"2"` or `"1,3"` → those severities."""
    if value is None:
        return [validate_severity(default)]
    text = str(value).strip().lower()
    if text == "all":
        return list(SEVERITIES)
    out = [validate_severity(part.strip()) for part in text.split(",") if part.strip()]
    if not out:
        raise UserError(f"invalid severity {value!r}; use an integer from 1 to 5, a list like 1,3, or 'all'")
    return sorted(set(out))


def image_seed(image_id: str, corruption: str = "", severity: int = 0, base_seed: int = 0) -> int:
    """A stable 32-bit seed for one image (and corruption/severity): equal on every machine and run.

    Args:
        image_id: the image's stable id (path relative to the data root, or a sample name).
        corruption: corruption name (different corruptions draw independently).
        severity: severity (different severities draw independently, as in ImageNet-C).
        base_seed: changes every draw at once (e.g. for a second repetition of an experiment).
    """
    text = f"{image_id}|{corruption}|{int(severity)}|{int(base_seed)}"
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:4], "little")


def validate_backend(backend: str) -> str:
    """Return `backend` if it is one of `BACKENDS`, else raise `UserError`."""
    if backend in BACKENDS:
        return backend
    raise UserError(f"unknown corruption backend {backend!r}; choose one of: {', '.join(BACKENDS)}")


def resolve_recipe(backend: str = DEFAULT_BACKEND, recipe: str | None = None) -> str:
    """The recipe a backend will use: `recipe`, or the backend's default; `UserError` if it cannot."""
    from attnprobe.corruptions.params import get_recipe

    backend = validate_backend(backend)
    if backend == "reference":
        if recipe not in (None, REFERENCE_RECIPE):
            raise UserError(f"the reference corruption backend (the imagecorruptions package) only has the "
                            f"{REFERENCE_RECIPE!r} recipe, not {recipe!r}; use the torch backend for {recipe!r}")
        return REFERENCE_RECIPE
    return get_recipe(DEFAULT_RECIPE if recipe is None else recipe).name


def choose_backend(backend: str | None = None, recipe: str | None = None,
                   default_recipe: str = DEFAULT_RECIPE) -> tuple[str, str]:
    """The (backend, recipe) of user options that may be unset: the torch backend, and `default_recipe` for it
    (the dataset's own: imagenet-c for ImageNet, imagecorruptions for Cityscapes); `UserError` for bad names."""
    backend = validate_backend(DEFAULT_BACKEND if backend is None else backend)
    if recipe is None and backend == DEFAULT_BACKEND:
        recipe = default_recipe
    return backend, resolve_recipe(backend, recipe)


def corruption_id(backend: str = DEFAULT_BACKEND, recipe: str | None = None) -> str:
    """A stable name for the pixels a backend and recipe make, for dataset fingerprints and cell keys.

    ``torch-v<ENGINE_VERSION>/<recipe>`` for the engine; ``reference-imagecorruptions-<version>`` for the package
    (its version, since its pixels can change with it).
    """
    recipe = resolve_recipe(backend, recipe)
    if backend == "reference":
        from importlib.metadata import PackageNotFoundError, version

        try:
            ver = version("imagecorruptions-imaug")
        except PackageNotFoundError:
            try:
                ver = version("imagecorruptions")
            except PackageNotFoundError:
                ver = "unknown"
        return f"reference-imagecorruptions-{ver}"
    from attnprobe.corruptions import engine_id

    return engine_id(recipe)


#: Appended to a dataset id by `tag_corruption` (after any `;precision=` tag).
CORRUPTION_TAG = ";corruption="


def tag_corruption(dataset: str, corruption_id_: str) -> str:
    """The dataset id of images corrupted by `corruption_id_` (e.g. ``images:ab12;corruption=torch-v2/imagenet-c``).

    Diagnostics store corrupted series under it, so values of two backends or recipes are two series, never one.
    """
    return f"{untag_corruption(dataset)}{CORRUPTION_TAG}{corruption_id_}"


def tagged_corruption(dataset: str) -> str | None:
    """The corruption id a dataset id was tagged with by `tag_corruption` (None: untagged)."""
    _, sep, tail = str(dataset).partition(CORRUPTION_TAG)
    return tail.split(";")[0] if sep else None


def untag_corruption(dataset: str) -> str:
    """`dataset` without its corruption tag (the id of the clean images)."""
    head, sep, tail = str(dataset).partition(CORRUPTION_TAG)
    rest = tail.split(";", 1)[1] if sep and ";" in tail else ""
    return head + (f";{rest}" if rest else "")


@contextmanager
def _seeded_global_rng(seed: int) -> Iterator[None]:
    """Seed NumPy's global RNG for the block and restore the caller's state afterwards."""
    with _RNG_LOCK:
        saved = np.random.get_state()
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            np.random.set_state(saved)


def _reference(arr: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    """One image through the imagecorruptions package (HWC uint8 in and out)."""
    from imagecorruptions import corrupt as _ic_corrupt

    h, w = arr.shape[:2]
    kwargs = {"seed": int(seed) % 2**32} if name in _OWN_SEED_ARG else {}
    with _seeded_global_rng(int(seed)):
        out = _ic_corrupt(arr, severity=severity, corruption_name=name, **kwargs)
    out = np.asarray(out)
    if out.ndim == 2:
        out = np.stack([out] * 3, axis=-1)
    if out.shape[:2] != (h, w):
        # NOTE: a few corruptions can come back a pixel off for odd sizes; crop/pad to the input size.
        fixed = np.zeros((h, w, 3), dtype=np.uint8)
        hh, ww = min(h, out.shape[0]), min(w, out.shape[1])
        fixed[:hh, :ww] = out[:hh, :ww, :3]
        out = fixed
    return np.ascontiguousarray(out[..., :3].astype(np.uint8, copy=False))


def corrupt(image: np.ndarray, name: str, severity: int, seed: int, *, backend: str = DEFAULT_BACKEND,
            recipe: str | None = None) -> np.ndarray:
    """Apply one ImageNet-C corruption to an image, deterministically for a given seed.

    Corrupt *after* resizing and centre-cropping to the model's input size (the ImageNet-C recipe), then normalise.

    Args:
        image: (H, W, 3) uint8 RGB (a (H, W) grey image is stacked to 3 channels); both sides >= 32 pixels.
        name: corruption name (see `corruption_names`).
        severity: 1..5.
        seed: e.g. `image_seed(image_id, name, severity)`.
        backend: "torch" (the engine) or "reference" (the imagecorruptions package).
        recipe: "imagenet-c" or "imagecorruptions" (default: the backend's, see `resolve_recipe`).

    Returns:
        (H, W, 3) uint8, the same size as the input.
    """
    name = validate_corruption(name)
    severity = validate_severity(severity)
    recipe = resolve_recipe(backend, recipe)
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise UserError(f"corrupt() expects a uint8 image with values 0-255, got dtype {arr.dtype}; convert it "
                        f"first, e.g. (x * 255).round().astype(np.uint8)")
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise UserError(f"corrupt() expects an (H, W, 3) or (H, W) image, got shape {arr.shape}")
    arr = np.ascontiguousarray(arr[..., :3])
    h, w = arr.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise UserError(f"image of {w}x{h} pixels is too small to corrupt; both sides must be >= {MIN_SIDE} pixels")
    if backend == "reference":
        return _reference(arr, name, severity, seed)
    import torch

    from attnprobe.corruptions import corrupt as engine

    batch = torch.from_numpy(arr if arr.flags.writeable else arr.copy()).permute(2, 0, 1)[None].contiguous()
    return np.ascontiguousarray(engine(batch, name, severity, seed=[int(seed)], recipe=recipe)[0].permute(1, 2, 0)
                                .numpy())


def corrupt_batch(images: Any, name: str, severity: int, seeds: Sequence[int], *,
                  backend: str = DEFAULT_BACKEND, recipe: str | None = None) -> Any:
    """Corrupt a uint8 (B, 3, H, W) tensor with one seed per image; the torch backend runs on its device.

    The reference backend corrupts the images one by one on the CPU (and returns them on the input's device).
    Both give, image for image, exactly what `corrupt` gives with the same seed.
    """
    import torch

    recipe = resolve_recipe(backend, recipe)
    if backend == "torch":
        from attnprobe.corruptions import corrupt as engine

        return engine(images, name, severity, seed=[int(s) for s in seeds], recipe=recipe)
    name = validate_corruption(name)
    severity = validate_severity(severity)
    if len(seeds) != len(images):
        raise UserError(f"got {len(seeds)} seeds for {len(images)} images; pass one seed per image")
    hwc = images.detach().to("cpu").permute(0, 2, 3, 1).numpy()
    out = [torch.from_numpy(_reference(np.ascontiguousarray(im), name, severity, s)) for im, s in zip(hwc, seeds)]
    if not out:
        return images.clone()
    return torch.stack(out).permute(0, 3, 1, 2).contiguous().to(images.device)
