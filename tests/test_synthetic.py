"""The synthetic textured-shapes set: deterministic, balanced, split-disjoint, exportable as an ImageFolder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnprobe.data.synthetic import CLASSES, SyntheticShapes, render_image, write_image_folder
from attnprobe.errors import UserError


def test_render_is_a_pure_function_of_seed_split_index() -> None:
    a, la = render_image(0, "val", 7)
    b, lb = render_image(0, "val", 7)
    assert a.dtype == np.uint8 and a.shape == (64, 64, 3)
    assert la == lb == 7 % len(CLASSES)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, render_image(1, "val", 7)[0])  # another seed
    assert not np.array_equal(a, render_image(0, "train", 7)[0])  # another split
    assert not np.array_equal(a, render_image(0, "val", 17)[0])  # same class, another image


def test_dataset_order_does_not_matter_and_tensors_match_images() -> None:
    ds = SyntheticShapes("val", num_images=12, size=64, seed=3)
    late_first = ds.array(11)
    x, y = ds.tensors()
    assert x.shape == (12, 3, 64, 64) and x.dtype == torch.uint8
    assert y.tolist() == [i % 10 for i in range(12)]
    np.testing.assert_array_equal(x[11].permute(1, 2, 0).numpy(), late_first)
    img, label = ds[4]
    assert img.size == (64, 64) and label == 4
    np.testing.assert_array_equal(np.asarray(img), x[4].permute(1, 2, 0).numpy())


def test_sizes_classes_and_fingerprint() -> None:
    ds = SyntheticShapes("train", num_images=20, size=96)
    assert len(ds) == 20 and ds.array(0).shape == (96, 96, 3)
    assert len(CLASSES) == 10 and len(set(CLASSES)) == 10
    assert np.bincount(ds.targets).tolist() == [2] * 10
    fps = {SyntheticShapes("train", 20, 96).fingerprint, SyntheticShapes("train", 20, 64).fingerprint,
           SyntheticShapes("train", 21, 96).fingerprint, SyntheticShapes("train", 20, 96, seed=1).fingerprint,
           SyntheticShapes("val", 20, 96).fingerprint}
    assert len(fps) == 5


def test_images_are_not_trivial() -> None:
    # Every image has an object (strong local contrast) and a varied background: no two classes share a mean image.
    x, y = SyntheticShapes("val", num_images=40).tensors()
    xf = x.float()
    assert xf.std(dim=(1, 2, 3)).min() > 15  # not flat
    assert (xf.mean(dim=(1, 2, 3)) - 127.5).abs().max() < 100  # not saturated
    class_means = torch.stack([xf[y == c].mean(0) for c in range(10)])
    assert torch.cdist(class_means.flatten(1), class_means.flatten(1)).fill_diagonal_(1e9).min() > 1.0


def test_bad_arguments_are_user_errors() -> None:
    with pytest.raises(UserError, match="unknown split"):
        SyntheticShapes("test")
    with pytest.raises(UserError, match="too small"):
        SyntheticShapes("val", size=8)
    with pytest.raises(IndexError):
        SyntheticShapes("val", num_images=3).array(3)


def test_write_image_folder_round_trips(tmp_path) -> None:
    from torchvision.datasets import ImageFolder

    ds = SyntheticShapes("val", num_images=10)
    write_image_folder(ds, tmp_path / "val")
    folder = ImageFolder(str(tmp_path / "val"))
    assert sorted(folder.classes) == sorted(CLASSES)
    for path, target in folder.samples:
        index = int(path.rsplit("/", 1)[-1].split(".")[0])
        assert folder.classes[target] == CLASSES[ds.targets[index]]
        np.testing.assert_array_equal(np.asarray(folder.loader(path)), ds.array(index))
