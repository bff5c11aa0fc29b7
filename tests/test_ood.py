"""ImageNet-A/R: labels are positions in the set's 200 canonical wnids and logits are restricted to those 200."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from attnprobe import protocol
from attnprobe.errors import UserError
from attnprobe.benchmarks.imagenet_ar import evaluate_subset, subset_samples
from attnprobe.store import ResultsStore
from attnprobe.zoo import Preprocessing


def _tree(root: Path, wnids: list[str], per_class: int = 2) -> Path:
    rng = np.random.default_rng(0)
    for w in wnids:
        (root / w).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / w / f"{k}.jpg")
    return root


class FixedNet(nn.Module):
    """Always ranks class `top` first and class `second` second among all 1000 logits."""

    def __init__(self, top: int, second: int) -> None:
        super().__init__()
        self.top, self.second = top, second

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], 1000)
        logits[:, self.top], logits[:, self.second] = 10.0, 5.0
        return logits


def _loaded(model: nn.Module) -> SimpleNamespace:
    return SimpleNamespace(model=model, name="fixed", checkpoint_sha256="test",
                           preprocessing=Preprocessing(input_size=32, crop_pct=1.0))


@pytest.mark.parametrize("set_name", ["a", "r"])
def test_indices_are_200_sorted_and_match_wnids(set_name: str) -> None:
    idx = protocol.subset_indices(set_name)
    assert len(idx) == 200 and idx == sorted(idx) and len(set(idx)) == 200
    wnids = protocol.imagenet_wnids()
    assert [wnids[i] for i in idx] == protocol.load(f"imagenet_{set_name}_indices")["wnids"]


@pytest.mark.parametrize("set_name", ["a", "r"])
def test_labels_are_positions_in_the_set(tmp_path: Path, set_name: str) -> None:
    wnids = protocol.load(f"imagenet_{set_name}_indices")["wnids"]
    _tree(tmp_path, [wnids[3], wnids[150]], per_class=1)
    samples, indices = subset_samples(tmp_path, set_name)
    assert [label for _, label in samples] == [3, 150]
    assert len(indices) == 200


def test_restricted_logits_give_the_right_answer(tmp_path: Path) -> None:
    """The model's global top-1 is a class outside ImageNet-A; its best class inside the 200 is A's 6th."""
    idx = protocol.subset_indices("a")
    wnids = protocol.load("imagenet_a_indices")["wnids"]
    outside = next(i for i in range(1000) if i not in set(idx))
    data = _tree(tmp_path / "imagenet-a", [wnids[0], wnids[5], wnids[7]], per_class=2)
    net = FixedNet(top=outside, second=idx[5])
    with ResultsStore(tmp_path / "out") as store:
        res = evaluate_subset(_loaded(net), "a", data, store, batch_size=4, workers=0)
        assert (res.n, res.correct) == (6, 2)  # only the two images of wnids[5]
        assert res.accuracy == pytest.approx(1 / 3)
        [cell] = store.cells(task="imagenet_a")
        assert cell["condition"] == "imagenet_a" and cell["severity"] == 0 and cell["correct"] == 2
        again = evaluate_subset(_loaded(net), "a", data, store, batch_size=4, workers=0)
        assert again.cached and again.correct == 2
    # without the mask the same model would be right on none of them
    assert outside not in idx


def test_imagenet_r_mask(tmp_path: Path) -> None:
    idx = protocol.subset_indices("r")
    wnids = protocol.load("imagenet_r_indices")["wnids"]
    _tree(tmp_path, [wnids[10], wnids[199]], per_class=1)
    res = evaluate_subset(_loaded(FixedNet(top=idx[199], second=idx[10])), "r", tmp_path, None, workers=0)
    assert (res.n, res.correct) == (2, 1)


def test_errors(tmp_path: Path) -> None:
    a_wnids = protocol.load("imagenet_a_indices")["wnids"]
    not_in_a = next(w for w in protocol.imagenet_wnids() if w not in set(a_wnids))
    _tree(tmp_path / "x", [a_wnids[0], not_in_a], per_class=1)
    with pytest.raises(UserError, match="not one of the 200 ImageNet-A classes"):
        subset_samples(tmp_path / "x", "a")
    with pytest.raises(UserError, match="--set a"):
        subset_samples(tmp_path / "x", "c")
    with pytest.raises(UserError, match="does not exist"):
        subset_samples(tmp_path / "missing", "r")
