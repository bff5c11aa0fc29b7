"""Helpers for the ImageNet-C tests: tiny synthetic ImageNet-style trees and a tiny zoo card (no downloads)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
from PIL import Image

#: Three real ImageNet-1k wnids far apart in the canonical order (labels 0, 1 and 999).
WNIDS = ("n01440764", "n01443537", "n15075141")

TINY_CARD = """
name = "tiny_vit"
title = "tiny test ViT"
arch = "test_vit"
family = "timm"

[kwargs]
img_size = 32
patch_size = 8

[checkpoint]
file = "tiny_vit.pth"  # bundled weights: commands without --ckpt use them

[preprocessing]
input_size = 32
interpolation = "bilinear"
crop_pct = 1.0
mean = [0.5, 0.5, 0.5]
std = [0.5, 0.5, 0.5]
"""


def write_image(path: Path, rng: np.random.Generator, size: int = 32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, quality=85)


def make_class_tree(root: Path, wnids: tuple[str, ...] = WNIDS, per_class: int = 3, size: int = 32,
                    seed: int = 0) -> Path:
    """`<root>/<wnid>/ILSVRC2012_val_<k>.JPEG` with random pixels."""
    rng = np.random.default_rng(seed)
    k = 0
    for w in wnids:
        for _ in range(per_class):
            k += 1
            write_image(root / w / f"ILSVRC2012_val_{k:08d}.JPEG", rng, size)
    return root


def make_imagenet_c_tree(root: Path, corruptions: tuple[str, ...] = ("gaussian_noise", "fog"),
                         severities: tuple[int, ...] = (1, 2), per_class: int = 3, size: int = 32) -> Path:
    """A miniature released ImageNet-C tree `<root>/<corruption>/<severity>/<wnid>/*.JPEG`."""
    for i, c in enumerate(corruptions):
        for s in severities:
            make_class_tree(root / c / str(s), per_class=per_class, size=size, seed=100 * i + s)
    return root


def make_models_dir(root: Path) -> Path:
    """A zoo folder with one card, `tiny_vit` (timm's test_vit at 32 px, bundled weights), for ATTNPROBE_MODELS_DIR."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "tiny_vit.toml").write_text(TINY_CARD)
    save_tiny_checkpoint(root / "tiny_vit.pth")
    return root


def save_tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """Deterministic random weights for `tiny_vit`, saved as a plain state dict.

    The head's bias favours the logits of `WNIDS` (0, 1, 999), so the model picks among the classes present and gets
    some images right and others wrong: counts that can actually differ between two ways of computing them.
    """
    import timm
    import torch

    from attnprobe.protocol import imagenet_wnids

    torch.manual_seed(seed)
    model = timm.create_model("test_vit", img_size=32, patch_size=8)
    order = imagenet_wnids()
    with torch.no_grad():
        model.head.weight.mul_(20.0)
        for w in WNIDS:
            model.head.bias[order.index(w)] += 50.0
    torch.save(model.state_dict(), path)
    return path


def committed_chunks(out: Path) -> int:
    """Chunks committed to the store in `out` so far (0 before it exists), read without locking out the writer."""
    db = out / "results.sqlite"
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            return int(con.execute("SELECT COUNT(*) FROM chunks").fetchone()[0])
    except sqlite3.OperationalError:  # NOTE: the store may not have its tables yet
        return 0
