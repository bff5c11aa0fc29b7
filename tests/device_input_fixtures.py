"""Image folders for the device-input tests: real photos as JPEGs of many kinds, plus files the device cannot
decode (PNG, CMYK JPEG) and files nobody can (truncated, garbage)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

#: Two canonical ImageNet wnids (labels 0 and 1).
WNIDS = ("n01440764", "n01443537")


def photo(name: str, size: tuple[int, int] | None = None) -> Image.Image:
    """A bundled scikit-image photo as RGB, optionally resized (width, height) first."""
    from attnprobe.data.samples import load_sample

    img = load_sample(name).convert("RGB")
    return img.resize(size, Image.BICUBIC) if size is not None else img


def write_mixed_folder(root: Path, small: bool = True) -> dict[str, str]:
    """`<root>/<wnid>/*`: baseline / 4:4:4 / progressive / grey JPEGs of real photos at several sizes, a PNG, a CMYK
    JPEG, a truncated JPEG and a garbage file. Returns {relative path: kind}."""
    sizes = [(150, 100), (97, 131), (64, 64), (200, 120)] if small else [None, (500, 375), (375, 500), (224, 224)]
    kinds: dict[str, str] = {}
    rng = np.random.default_rng(0)

    def put(rel: str, kind: str, save) -> None:  # noqa: ANN001
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        save(p)
        kinds[rel] = kind

    names = ["chelsea", "coffee", "astronaut", "rocket"]
    for k, (name, size) in enumerate(zip(names, sizes)):
        img = photo(name, size)
        w = WNIDS[k % 2]
        put(f"{w}/{name}_q85.JPEG", "jpeg", lambda p, im=img: im.save(p, "JPEG", quality=85))
        put(f"{w}/{name}_444.JPEG", "jpeg", lambda p, im=img: im.save(p, "JPEG", quality=95, subsampling=0))
        put(f"{w}/{name}_prog.JPEG", "progressive", lambda p, im=img: im.save(p, "JPEG", quality=80, progressive=True))
    noise = Image.fromarray(rng.integers(0, 256, (90, 110, 3), dtype=np.uint8))
    put(f"{WNIDS[0]}/noise.JPEG", "jpeg", lambda p: noise.save(p, "JPEG", quality=90))
    put(f"{WNIDS[1]}/grey.JPEG", "grey", lambda p: photo("coffee", (120, 80)).convert("L").save(p, "JPEG"))
    put(f"{WNIDS[1]}/png.png", "png", lambda p: photo("rocket", (90, 70)).save(p, "PNG"))
    put(f"{WNIDS[0]}/cmyk.JPEG", "cmyk", lambda p: photo("chelsea", (80, 60)).convert("CMYK").save(p, "JPEG"))

    def truncated(p: Path) -> None:
        photo("astronaut", (100, 100)).save(p, "JPEG", quality=90)
        p.write_bytes(p.read_bytes()[:900])

    put(f"{WNIDS[1]}/truncated.JPEG", "unreadable", truncated)
    put(f"{WNIDS[0]}/garbage.JPEG", "unreadable", lambda p: p.write_bytes(b"not an image at all" * 10))
    return kinds
