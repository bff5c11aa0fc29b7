"""The clean and ImageNet-C drivers (attnprobe.benchmarks.clean / .imagenet_c) on image folders with canonical
labels, and the folder datasets they read."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from attnprobe.benchmarks.clean import evaluate_clean
from attnprobe.benchmarks.imagenet_c import evaluate_imagenet_c, imagenet_c_tables
from attnprobe.data.folders import ImageFolderDataset, limit_samples, scan_class_folders
from attnprobe.errors import UserError
from attnprobe.store import ResultsStore
from attnprobe.zoo import Preprocessing


# -- image folders, canonical labels, drivers ---------------------------------------------------------------------
WNIDS = {"n01440764": 0, "n01443537": 1, "n15075141": 999}  # canonical indices 0, 1 and 999
LEVELS = {"n01440764": 40, "n01443537": 120, "n15075141": 200}  # grey level of each class's images


class GreyOracle(nn.Module):
    """Reads an image's grey level and predicts its class's *canonical* logit: always right iff the labels are the
    canonical wnid indices (a folder-order labelling would put class n15075141 at 2, not 999)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        level = (x[:, 0].mean(dim=(1, 2)) * 0.5 + 0.5) * 255  # undo mean/std 0.5
        logits = torch.full((len(x), 1000), -1e4)
        for wnid, idx in WNIDS.items():
            logits[:, idx] = -(level - LEVELS[wnid]).abs()
        return logits


@dataclass
class Loaded:
    model: nn.Module
    name: str = "grey_oracle"
    checkpoint_sha256: str = "oracle"
    checkpoint_path: str | None = None
    preprocessing: Preprocessing = Preprocessing(input_size=32, interpolation="bilinear", crop_pct=1.0,
                                                 mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    card: dict = field(default_factory=dict)


def grey_tree(root: Path, per_class: int = 2, size: int = 32, wnids: tuple[str, ...] = tuple(WNIDS)) -> Path:
    k = 0
    for w in wnids:
        (root / w).mkdir(parents=True, exist_ok=True)
        for _ in range(per_class):
            k += 1
            Image.fromarray(np.full((size, size, 3), LEVELS[w], np.uint8)).save(root / w / f"img_{k:04d}.JPEG")
    return root


def test_folder_labels_come_from_the_canonical_wnid_order(tmp_path: Path) -> None:
    samples = scan_class_folders(grey_tree(tmp_path / "val"))
    assert sorted({label for _, label in samples}) == [0, 1, 999]
    assert [rel for rel, _ in samples] == sorted(rel for rel, _ in samples)
    (tmp_path / "val" / "not_a_wnid").mkdir()
    with pytest.raises(UserError, match="not_a_wnid"):
        scan_class_folders(tmp_path / "val")
    with pytest.raises(UserError, match="no images"):
        scan_class_folders((tmp_path / "empty").mkdir() or tmp_path / "empty")


def test_limit_is_evenly_spaced_and_deterministic() -> None:
    samples = [(f"n/{i:03d}", i // 10) for i in range(100)]
    sub = limit_samples(samples, 10)
    assert [s[1] for s in sub] == list(range(10))
    assert limit_samples(samples, 10) == sub and limit_samples(samples, 1000) == samples


def test_clean_and_imagenet_c_with_a_subset_of_classes(tmp_path: Path) -> None:
    # two of the three classes only (0 and 999): still scored against the right logits
    val = grey_tree(tmp_path / "val", wnids=("n01440764", "n15075141"))
    tree = tmp_path / "inc"
    for c in ("gaussian_noise", "fog"):
        for s in (1, 2):
            grey_tree(tree / c / str(s), wnids=("n01440764", "n15075141"))
    loaded = Loaded(GreyOracle())
    with ResultsStore(tmp_path / "out") as store:
        clean = evaluate_clean(loaded, val, store, batch_size=3, workers=0)
        assert (clean.n, clean.correct) == (4, 4)
        report = evaluate_imagenet_c(loaded, store, data=tree, clean=val, corruptions=["gaussian_noise", "fog"],
                                     severities=[1, 2], batch_size=3, workers=0)
    assert [(r.key.condition, r.key.severity, r.n, r.correct) for r in report.cells] == [
        ("gaussian_noise", 1, 4, 4), ("gaussian_noise", 2, 4, 4), ("fog", 1, 4, 4), ("fog", 2, 4, 4)]
    d = report.as_dict()
    assert d["mce"] is None and d["complete"] is False and d["clean_error"] == 0.0
    assert report.clean is not None and report.clean.cached  # the clean cell was already in the store
    # every cell of one tree shares one dataset id, and the store gives the table back
    assert len({r.key.dataset for r in report.cells}) == 1
    with ResultsStore(tmp_path / "out", readonly=True) as store:
        [table] = imagenet_c_tables(store)
    assert table["errors"] == {"gaussian_noise": {1: 0.0, 2: 0.0}, "fog": {1: 0.0, 2: 0.0}}
    assert table["n"]["fog"] == {1: 4, 2: 4} and table["mce"] is None and not table["complete"]


def test_on_the_fly_corruption_is_deterministic(tmp_path: Path) -> None:
    from attnprobe.data.imagenet_c import OnTheFlyCorruption

    val = grey_tree(tmp_path / "val", size=40)
    pre = Loaded(nn.Identity()).preprocessing
    a = OnTheFlyCorruption(val, "gaussian_noise", 3, pre)
    b = OnTheFlyCorruption(val, "gaussian_noise", 3, pre)
    x0, y0, ok = a[0]
    assert ok and x0.shape == (3, 32, 32) and y0 == 0
    assert torch.equal(x0, b[0][0])
    assert torch.equal(a[3][0], b[3][0])
    assert not torch.equal(x0, OnTheFlyCorruption(val, "gaussian_noise", 5, pre)[0][0])
    assert a.fingerprint == b.fingerprint
    assert a.fingerprint != OnTheFlyCorruption(val, "gaussian_noise", 3, pre, jpeg_quality=None).fingerprint


def test_bad_inputs_are_rejected_before_compute(tmp_path: Path) -> None:
    loaded = Loaded(GreyOracle())
    tree = tmp_path / "inc"
    grey_tree(tree / "fog" / "1")
    with pytest.raises(UserError, match="not an ImageNet-C tree"):
        evaluate_imagenet_c(loaded, None, data=grey_tree(tmp_path / "val"))
    with pytest.raises(UserError, match="gausian_noise"):
        evaluate_imagenet_c(loaded, None, data=tree, corruptions=["gausian_noise"])
    with pytest.raises(UserError, match="missing severity folder"):
        evaluate_imagenet_c(loaded, None, data=tree, corruptions=["fog"], severities=[1, 2])
    (tree / "fog" / "2").mkdir()
    with pytest.raises(UserError, match="no images"):
        evaluate_imagenet_c(loaded, None, data=tree, corruptions=["fog"], severities=[1, 2])
    with pytest.raises(UserError, match="corruption folder"):
        evaluate_imagenet_c(loaded, None, data=tree, corruptions=["snow"])
    with pytest.raises(UserError, match="severit"):
        evaluate_imagenet_c(loaded, None, data=tree, corruptions=["fog"], severities=[6])
    with pytest.raises(UserError, match="--clean"):
        evaluate_imagenet_c(loaded, None, on_the_fly=True)


def test_unreadable_image_in_a_folder_is_skipped(tmp_path: Path) -> None:
    val = grey_tree(tmp_path / "val")
    (val / "n01443537" / "img_9999.JPEG").write_bytes(b"not a jpeg")
    loaded = Loaded(GreyOracle())
    res = evaluate_clean(loaded, val, None, batch_size=4, workers=0)
    assert (res.n, res.correct, res.skipped) == (6, 6, 1)
    assert res.skipped_samples[0].endswith("img_9999.JPEG")
    with pytest.raises(UserError, match="img_9999"):
        evaluate_clean(loaded, val, None, batch_size=4, workers=0, strict=True)


def test_samples_of_an_image_folder_dataset_are_named(tmp_path: Path) -> None:
    ds = ImageFolderDataset(grey_tree(tmp_path / "v"), lambda im: torch.zeros(1))
    assert ds.sample_name(0).endswith("n01440764/img_0001.JPEG") and len(ds) == 6
