"""A deterministic synthetic street-scene segmentation set, generated in code (no download): "synthetic streets".

Small non-square images (64 x 128 by default, the 1:2 shape of Cityscapes) of a road scene: sky with clouds, a
skyline of buildings with window grids, trees, a road in perspective with lane marks, sidewalks with tiles, cars,
pedestrians and poles; in half of the images the bottom rows show the ego vehicle's bonnet, labelled 255 (ignore)
as Cityscapes does. Labels are Cityscapes trainIds (`CLASSES`), so the 19-class models, the mIoU and the real
Cityscapes/ACDC readers apply unchanged: `write_cityscapes_tree` and `write_acdc_tree` lay the set out as tiny
Cityscapes and ACDC trees (ACDC: the four adverse conditions rendered on top, 54 x 96 images = 1920 x 1080 / 20).

Every image is a pure function of `(seed, split, index)` (and the condition): it does not depend on what was drawn
before it, on workers or on the machine. About 1 ms per image.

    ds = SyntheticStreets("val", num_images=100)
    rgb, label = ds[0]                                   # uint8 (64, 128, 3) RGB, uint8 (64, 128) trainIds
    root = write_cityscapes_tree("data/synth-cityscapes", num_train=200, num_val=50)
    val = CityscapesDataset(root, pipeline=DEMO_PIPELINE)  # the real reader, demo-size pipeline
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from attnprobe.data.seg_transforms import SegTestPipeline
from attnprobe.errors import UserError

__all__ = [
    "ACDC_SIZE",
    "CLASSES",
    "CONDITIONS",
    "DEMO_PIPELINE",
    "SPLITS",
    "SyntheticStreets",
    "apply_condition",
    "render_scene",
    "write_acdc_tree",
    "write_cityscapes_tree",
]

#: trainId -> name of the classes that appear (the other Cityscapes classes never do, so their IoU is NaN).
CLASSES = {0: "road", 1: "sidewalk", 2: "building", 5: "pole", 8: "vegetation", 10: "sky", 11: "person", 13: "car"}
IGNORE = 255
#: Split ids mixed into the seed, so that train, val and test never share an image.
SPLITS = {"train": 1, "val": 2, "test": 3}
CONDITIONS = ("fog", "night", "rain", "snow")
#: Synthetic ACDC image size (height, width): 1080 x 1920 / 20, so the test pipeline resizes it like real ACDC.
ACDC_SIZE = (54, 96)
#: The official pipeline scaled to the synthetic set: (128, 64) instead of (2048, 1024) keeps 64 x 128 images as
#: they are and resizes 54 x 96 ACDC-like images to 64 x 114, as 1080 x 1920 becomes 1024 x 1820.
DEMO_PIPELINE = SegTestPipeline(scale=(128, 64))
GENERATOR_VERSION = 1
_CITIES = ("pixelton", "voxelburg")


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1] (bilinear upsampling of a coarse random grid), shape (h, w)."""
    gh, gw = max(2, cells * h // max(h, w) + 2), max(2, cells * w // max(h, w) + 2)
    grid = rng.uniform(-1.0, 1.0, size=(gh, gw))
    ys, xs = np.linspace(0, gh - 1.001, h), np.linspace(0, gw - 1.001, w)
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _box(h: int, w: int, y0: float, y1: float, x0: float, x1: float) -> tuple[slice, slice] | None:
    """Integer slices of the pixel box [y0, y1) x [x0, x1), clipped to the image; None when empty."""
    ys, ye = max(0, int(np.floor(y0))), min(h, int(np.ceil(y1)))
    xs, xe = max(0, int(np.floor(x0))), min(w, int(np.ceil(x1)))
    return (slice(ys, ye), slice(xs, xe)) if ys < ye and xs < xe else None


def _paint(img: np.ndarray, label: np.ndarray, box: tuple[slice, slice], mask: np.ndarray | None,
           colour: np.ndarray, cls: int) -> None:
    """Paint `colour` ((3,) or per pixel (bh, bw, 3)) and class `cls` where `mask` (bh, bw) is set inside `box`
    (everywhere in it when `mask` is None)."""
    sub_img, sub_label = img[box], label[box]
    if mask is None:
        sub_img[...] = colour
        sub_label[...] = cls
        return
    sub_img[mask] = colour[mask] if colour.ndim == 3 else colour
    sub_label[mask] = cls


def render_scene(seed: int, split: str, index: int, height: int = 64,
                 width: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Render one street scene.

    Returns:
        (uint8 RGB (height, width, 3), uint8 trainId label map (height, width)).
    """
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    h, w = int(height), int(width)
    rng = np.random.default_rng([GENERATOR_VERSION, seed, SPLITS[split], index])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    label = np.full((h, w), 10, np.uint8)

    horizon = rng.uniform(0.35, 0.5) * h
    # sky: vertical gradient plus clouds
    top = rng.uniform([0.25, 0.4, 0.7], [0.45, 0.6, 0.95]).astype(np.float32)
    low = rng.uniform([0.65, 0.75, 0.85], [0.8, 0.88, 0.98]).astype(np.float32)
    t = np.clip(yy[:, :1] / max(horizon, 1.0), 0, 1)[..., None]  # (h, 1, 1)
    clouds = (np.clip(_smooth_noise(rng, h, w, 6), 0, 1) * rng.uniform(0.2, 0.5)).astype(np.float32)[..., None]
    img = top * (1 - t) + low * t + clouds

    # buildings: a skyline of boxes with window grids, reaching down to the ground
    x = -rng.uniform(0, 10)
    while x < w:
        bw, top_y = rng.uniform(0.12, 0.3) * w, horizon - rng.uniform(0.05, 0.35) * h
        base = (rng.uniform(0.25, 0.6, 3) * np.array([1.0, rng.uniform(0.85, 1.0), rng.uniform(0.75, 1.0)]))
        period, win = rng.uniform(4, 7), rng.uniform(0.35, 0.6)
        shade = rng.uniform(0.45, 0.7)
        box = _box(h, w, top_y, h, x, x + bw)
        if box is not None:
            by, bx = yy[box] - top_y, xx[box] - x
            windows = ((bx % period) < period * win) & ((by % period) < period * win)
            colour = base.astype(np.float32) * np.where(windows, shade, 1.0).astype(np.float32)[..., None]
            _paint(img, label, box, None, colour, 2)
        x += bw + rng.uniform(0, 0.06) * w

    # trees: textured green blobs around the horizon
    for _ in range(int(rng.integers(1, 4))):
        cy, cx = horizon - rng.uniform(0, 0.15) * h, rng.uniform(0, w)
        ry, rx = rng.uniform(0.08, 0.18) * h, rng.uniform(0.05, 0.14) * w
        leaves = rng.uniform([0.1, 0.35, 0.05], [0.3, 0.6, 0.2]).astype(np.float32)
        box = _box(h, w, cy - 1.2 * ry, cy + 1.2 * ry, cx - 1.2 * rx, cx + 1.2 * rx)
        if box is not None:
            by, bx = yy[box], xx[box]
            wobble = _smooth_noise(rng, by.shape[0], by.shape[1], 4)
            m = ((by - cy) / ry) ** 2 + ((bx - cx) / rx) ** 2 < 1 + 0.3 * wobble
            colour = leaves * (0.8 + 0.4 * rng.random(m.shape + (1,), dtype=np.float32))
            _paint(img, label, box, m, colour, 8)

    # ground: road between two lines through the vanishing point, sidewalks beside it
    vx = rng.uniform(0.35, 0.65) * w
    road_half, walk_half = rng.uniform(0.35, 0.6) * w, rng.uniform(0.7, 1.1) * w
    lane_phase, grey, paving = rng.uniform(), rng.uniform(0.22, 0.38), rng.uniform(0.55, 0.75, 3).astype(np.float32)
    gbox = _box(h, w, horizon, h, 0, w)
    if gbox is not None:
        gy, gx = yy[gbox], xx[gbox]
        depth = (gy - horizon) / max(h - horizon, 1.0)  # 0 at the horizon, 1 at the bottom row
        ground = gy > horizon
        road = ground & (np.abs(gx - vx) < road_half * depth)
        walk = ground & ~road & (np.abs(gx - vx) < walk_half * depth)
        asphalt = np.repeat(grey * (0.9 + 0.2 * rng.random(gy.shape + (1,), dtype=np.float32)), 3, axis=2)
        lane = road & (np.abs(gx - vx) < 0.02 * w * depth + 0.3) & ((depth * 12 + lane_phase) % 1 < 0.5)
        asphalt[lane] = 0.9
        _paint(img, label, gbox, road, asphalt, 0)
        tiles = (((gx + gy * 0.5) % 5) < 0.8) | ((gy % 4) < 0.7)
        _paint(img, label, gbox, walk, paving * np.where(tiles, 0.8, 1.0).astype(np.float32)[..., None], 1)

    # poles and pedestrians on the sidewalks, cars on the road (nearer = lower and bigger)
    for _ in range(int(rng.integers(0, 3))):
        d = rng.uniform(0.3, 0.9)
        py = horizon + d * (h - horizon)
        px = vx + rng.choice([-1, 1]) * rng.uniform(0.65, 0.95) * walk_half * d
        half, tall = max(0.6, 0.8 * d), rng.uniform(0.5, 0.8) * h * d + 4
        box = _box(h, w, py - tall, py, px - half, px + half)
        if box is not None:
            _paint(img, label, box, None, np.full(3, rng.uniform(0.4, 0.6), np.float32), 5)
    for _ in range(int(rng.integers(0, 3))):
        d = rng.uniform(0.3, 0.95)
        py = horizon + d * (h - horizon)
        px = vx + rng.choice([-1, 1]) * rng.uniform(0.55, 0.85) * walk_half * d
        ph = (0.25 + 0.25 * d) * h
        clothes = rng.uniform(0.1, 0.9, 3).astype(np.float32)
        box = _box(h, w, py - ph, py, px - 0.1 * ph, px + 0.1 * ph)
        if box is not None:
            by, bx = yy[box], xx[box]
            body = ((bx - px) / (0.06 * ph)) ** 2 + ((by - (py - 0.4 * ph)) / (0.4 * ph)) ** 2 < 1
            head = ((bx - px) ** 2 + (by - (py - 0.88 * ph)) ** 2) < (0.1 * ph) ** 2
            _paint(img, label, box, body, clothes, 11)
            _paint(img, label, box, head, np.array([0.85, 0.65, 0.5], np.float32), 11)
    for _ in range(int(rng.integers(0, 4))):
        d = rng.uniform(0.35, 1.0)
        cy = horizon + d * (h - horizon)
        cx = vx + rng.uniform(-0.8, 0.8) * road_half * d
        cw, ch = (0.18 + 0.2 * d) * w * 0.5, (0.1 + 0.15 * d) * h
        paint = rng.uniform(0.05, 0.95, 3).astype(np.float32)
        box = _box(h, w, cy - ch, cy, cx - cw, cx + cw)
        if box is not None:
            by, bx = yy[box], xx[box]
            colour = np.broadcast_to(paint, by.shape + (3,)).copy()
            colour[by < cy - 0.6 * ch] *= 0.35  # windows
            colour[(by > cy - 0.2 * ch) & (np.abs(bx - cx) > 0.5 * cw)] = 0.05  # wheels
            _paint(img, label, box, None, colour, 13)

    # ego vehicle bonnet in half of the images: not a class (labelId 1 "ego vehicle" -> ignore)
    if rng.random() < 0.5:
        rise = rng.uniform(0.06, 0.12) * h
        box = _box(h, w, h - rise - 1, h, 0, w)
        if box is not None:
            m = yy[box] > h - rise - 2.0 * ((xx[box] - w / 2) / w) ** 2 * h * 0.1
            _paint(img, label, box, m, np.full(3, rng.uniform(0.05, 0.2), np.float32), IGNORE)

    img += 0.02 * rng.standard_normal(img.shape, dtype=np.float32)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), label


def apply_condition(rgb: np.ndarray, label: np.ndarray, condition: str, seed: int) -> np.ndarray:
    """Render an ACDC-like adverse condition (fog, night, rain, snow) on a clean scene; the labels do not change."""
    if condition not in CONDITIONS:
        raise UserError(f"unknown ACDC condition {condition!r}; choose from: {', '.join(CONDITIONS)}")
    rng = np.random.default_rng([GENERATOR_VERSION, seed, CONDITIONS.index(condition)])
    h, w = label.shape
    x = rgb.astype(np.float32) / 255
    yy = np.mgrid[0:h, 0:w][0].astype(np.float32) / h
    if condition == "fog":
        veil = (rng.uniform(0.5, 0.75) * (1.0 - 0.6 * yy) + 0.15 * _smooth_noise(rng, h, w, 4))[..., None]
        x = x * (1 - veil) + np.clip(veil, 0, 1) * rng.uniform(0.7, 0.85)
    elif condition == "night":
        x = x * rng.uniform(0.15, 0.3) * np.array([0.8, 0.9, 1.2], np.float32)
        lights = (rng.random((h, w)) < 0.004) & (label != 10)
        x[lights] = [1.0, 0.9, 0.6]
        x += rng.normal(0, 0.03, x.shape)
    elif condition == "rain":
        x = x * rng.uniform(0.65, 0.8)
        streaks = np.zeros((h, w), np.float32)
        starts = rng.integers(0, w, size=max(1, w // 4))
        for sx in starts:
            sy, length = rng.integers(0, h), rng.integers(3, 8)
            ys = np.clip(sy + np.arange(length), 0, h - 1)
            xs = np.clip(sx + np.arange(length) // 3, 0, w - 1)
            streaks[ys, xs] = 1
        x = x * (1 - 0.5 * streaks[..., None]) + 0.5 * streaks[..., None] * 0.85
    else:  # snow
        x = np.clip(x * 0.8 + 0.25, 0, 1)
        flakes = rng.random((h, w)) < 0.05
        x[flakes] = 0.97
        ground = (label == 0) | (label == 1)
        cover = ground & (_smooth_noise(rng, h, w, 10) > 0.1)
        x[cover] = x[cover] * 0.3 + 0.65
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


class SyntheticStreets:
    """The synthetic street-scene set (see the module docstring): `ds[i] -> (rgb (H, W, 3), label (H, W))`.

    Args:
        split: "train", "val" or "test".
        num_images: images in the split.
        height: image height (>= 32).
        width: image width (>= 32).
        seed: dataset seed; the same seed always gives the same images.
        condition: None (clear weather) or an ACDC condition rendered on top.
    """

    def __init__(self, split: str = "train", num_images: int = 200, height: int = 64, width: int = 128,
                 seed: int = 0, condition: str | None = None) -> None:
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
        if min(height, width) < 32:
            raise UserError(f"synthetic images of {width}x{height} are too small; use at least 32 pixels per side")
        if condition is not None and condition not in CONDITIONS:
            raise UserError(f"unknown ACDC condition {condition!r}; choose from: {', '.join(CONDITIONS)}")
        if num_images < 1:
            raise UserError(f"num_images must be positive, got {num_images}")
        self.split, self.num_images, self.seed, self.condition = split, int(num_images), int(seed), condition
        self.height, self.width = int(height), int(width)

    @property
    def fingerprint(self) -> str:
        cond = f":{self.condition}" if self.condition else ""
        return (f"synthetic-streets-v{GENERATOR_VERSION}:seed={self.seed}:{self.split}{cond}:n={self.num_images}:"
                f"{self.height}x{self.width}")

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} is outside a split of {self.num_images} images")
        rgb, label = render_scene(self.seed, self.split, index, self.height, self.width)
        if self.condition is not None:
            cond_seed = self.seed * 1_000_003 + index * 7 + SPLITS[self.split]
            rgb = apply_condition(rgb, label, self.condition, seed=cond_seed)
        return rgb, label

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """All images (N, H, W, 3) uint8 RGB and labels (N, H, W) uint8."""
        pairs = [self[i] for i in range(self.num_images)]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def _save(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(arr)).save(path, format="PNG")


def _check_new(root: Path) -> None:
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise UserError(f"{root} exists and is not empty; write the synthetic tree into a new or empty folder")


def _to_label_ids(label: np.ndarray) -> np.ndarray:
    from attnprobe.protocol import cityscapes_classes

    lut = np.zeros(256, np.uint8)  # ignore -> labelId 0 (unlabeled); the ego vehicle bonnet -> 1
    lut[IGNORE] = 1
    for c in cityscapes_classes():
        lut[c["trainId"]] = c["labelId"]
    return lut[label]


def write_cityscapes_tree(root: str | Path, num_train: int = 200, num_val: int = 50, *, height: int = 64,
                          width: int = 128, seed: int = 0, label_format: str = "trainIds") -> Path:
    """Write the set as a tiny Cityscapes tree: `leftImg8bit/{train,val}/<city>/<city>_000000_NNNNNN_leftImg8bit.png`
    and `gtFine/{train,val}/<city>/..._gtFine_labelTrainIds.png` (`label_format="labelIds"`: `_gtFine_labelIds.png`
    instead; `"both"`: both files).

    Returns:
        The root (a new or empty folder).
    """
    if label_format not in ("trainIds", "labelIds", "both"):
        raise UserError(f"unknown label format {label_format!r}; choose trainIds, labelIds or both")
    base = Path(root).expanduser()
    _check_new(base)
    for split, n in (("train", num_train), ("val", num_val)):
        if n <= 0:
            continue
        ds = SyntheticStreets(split, n, height, width, seed)
        for i in range(n):
            rgb, label = ds[i]
            city = _CITIES[i % len(_CITIES)]
            stem = f"{city}/{city}_000000_{i:06d}"
            _save(base / "leftImg8bit" / split / f"{stem}_leftImg8bit.png", rgb)
            if label_format in ("trainIds", "both"):
                _save(base / "gtFine" / split / f"{stem}_gtFine_labelTrainIds.png", label)
            if label_format in ("labelIds", "both"):
                _save(base / "gtFine" / split / f"{stem}_gtFine_labelIds.png", _to_label_ids(label))
    return base


def write_acdc_tree(root: str | Path, num_per_condition: dict[str, int] | None = None, *,
                    conditions: Sequence[str] = CONDITIONS, height: int = ACDC_SIZE[0], width: int = ACDC_SIZE[1],
                    seed: int = 0) -> Path:
    """Write the set as a tiny ACDC tree: `rgb_anon/<condition>/<split>/<seq>/<seq>_frame_NNNNNN_rgb_anon.png` and,
    for train/val, `gt/<condition>/<split>/<seq>/..._gt_labelTrainIds.png` (test labels are hidden, as in ACDC).

    Args:
        root: a new or empty folder.
        num_per_condition: images per split for every condition (default `{"val": 8, "test": 8}`).
        conditions: which conditions to write.
        height, width: image size (default 54 x 96, ACDC's 1080 x 1920 / 20).
        seed: dataset seed.
    """
    counts = num_per_condition or {"val": 8, "test": 8}
    base = Path(root).expanduser()
    _check_new(base)
    for ci, cond in enumerate(conditions):
        for split, n in counts.items():
            ds = SyntheticStreets(split, n, height, width, seed=seed * 10 + ci, condition=cond)
            for i in range(n):
                rgb, label = ds[i]
                seq = f"GOPR{ci:02d}{i % 2:02d}"
                stem = f"{seq}/{seq}_frame_{SPLITS[split] * 1000 + i:06d}"
                _save(base / "rgb_anon" / cond / split / f"{stem}_rgb_anon.png", rgb)
                if split != "test":
                    _save(base / "gt" / cond / split / f"{stem}_gt_labelTrainIds.png", label)
    return base
