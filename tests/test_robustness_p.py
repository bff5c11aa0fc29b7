"""Known-answer tests for the ImageNet-P formulas (flip probability, top-5 distance, FR, mFR)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnprobe import protocol
from attnprobe.errors import UserError
from attnprobe.robustness import (
    flip_probability,
    flip_rates,
    frame_pairs,
    is_noise_perturbation,
    mean_top5_distance,
    mfr,
    top5_distance,
    top5_lists,
    top5_pair_distance,
    video_flip_probabilities,
    video_top5_distances,
)

# the worked example of the module docstring
SEQ = [3, 3, 5, 5, 3, 5, 5]


def test_frame_pairs_chains_and_noise() -> None:
    assert frame_pairs(4, noise=False, difficulty=1) == [(0, 1), (1, 2), (2, 3)]
    assert frame_pairs(7, noise=False, difficulty=2) == [(0, 2), (2, 4), (4, 6), (1, 3), (3, 5)]
    assert frame_pairs(7, noise=False, difficulty=3) == [(0, 3), (3, 6), (1, 4), (2, 5)]
    assert frame_pairs(4, noise=True, difficulty=1) == [(0, 1), (0, 2), (0, 3)]
    # the difficulty picks other videos for noise, not other pairs
    assert frame_pairs(4, noise=True, difficulty=3) == frame_pairs(4, noise=True, difficulty=1)
    # n - d pairs for non-noise, n - 1 for noise (31 frames: 30 / 29 / 28; translate has 41)
    assert [len(frame_pairs(31, False, d)) for d in (1, 2, 3)] == [30, 29, 28]
    assert len(frame_pairs(41, True, 2)) == 40


@pytest.mark.parametrize("noise,difficulty,expected", [
    (False, 1, 3 / 6), (False, 2, 4 / 5), (False, 3, 1 / 4), (True, 1, 4 / 6), (True, 2, 4 / 6), (True, 3, 4 / 6),
])
def test_flip_probability_worked_example(noise: bool, difficulty: int, expected: float) -> None:
    assert flip_probability([SEQ], noise, difficulty) == pytest.approx(expected)


def test_flip_probability_averages_per_video_then_over_videos() -> None:
    preds = [[1, 1, 1, 1, 1], [1, 2, 1, 2, 1]]  # 0/4 and 4/4 flips
    assert video_flip_probabilities(preds, noise=False).tolist() == [0.0, 1.0]
    assert flip_probability(preds, noise=False) == pytest.approx(0.5)
    # noise: compared with frame 0 -> [1,2,1,2,1] flips at 2 of 4 pairs
    assert flip_probability(preds, noise=True) == pytest.approx((0 + 0.5) / 2)
    # a 1-D input is one video; tensors and arrays work too
    assert flip_probability(torch.tensor(SEQ), False, 2) == pytest.approx(0.8)
    assert flip_probability(np.array([SEQ]), False, 3) == pytest.approx(0.25)


def _official_flip_prob(predictions: np.ndarray, noise: bool, difficulty: int) -> float:
    """Independent loop version of the ImageNet-P test.py semantics, used as an oracle."""
    total = 0.0
    step = 1 if noise else difficulty
    for vid in predictions:
        flips = []
        for start in range(step):
            prev = vid[start]
            for cur in vid[start::step][1:]:
                flips.append(int(prev != cur))
                if not noise:
                    prev = cur
        total += np.mean(flips) / len(predictions)
    return total


@pytest.mark.parametrize("noise", [False, True])
@pytest.mark.parametrize("difficulty", [1, 2, 3])
def test_flip_probability_matches_loop_oracle(noise: bool, difficulty: int) -> None:
    rng = np.random.default_rng(difficulty + 10 * noise)
    preds = rng.integers(0, 3, size=(6, 31))
    assert flip_probability(preds, noise, difficulty) == pytest.approx(_official_flip_prob(preds, noise, difficulty))


def test_bad_difficulty_and_too_short_videos() -> None:
    with pytest.raises(UserError, match="difficulty"):
        flip_probability([SEQ], False, 4)
    with pytest.raises(UserError, match="more than 3 frame"):
        flip_probability([[1, 2]], False, 3)


def test_is_noise_perturbation() -> None:
    assert [is_noise_perturbation(p) for p in ("gaussian_noise", "shot_noise", "speckle_noise")] == [True] * 3
    assert not any(is_noise_perturbation(p) for p in ("motion_blur", "translate", "snow", "scale"))


# -- top-5 distance --------------------------------------------------------------------------------------------

def _d(a: list[int], b: list[int]) -> int:
    return int(top5_pair_distance(torch.tensor(a), torch.tensor(b)))


def test_top5_pair_distance_known_answers() -> None:
    assert _d([0, 1, 2, 3, 4], [0, 1, 2, 3, 4]) == 0
    assert _d([0, 1, 2, 3, 4], [1, 0, 2, 3, 4]) == 2            # ranks 1 and 2 swapped
    assert _d([0, 1, 2, 3, 4], [5, 6, 7, 8, 9]) == 15           # 5+4+3+2+1
    assert _d([0, 1, 2, 3, 4], [1, 2, 3, 4, 9]) == 5 + 1 + 1 + 1 + 1  # top class drops out, others move up
    assert _d([0, 1, 2, 3, 4], [0, 1, 2, 3, 9]) == 1            # rank-5 class drops out (5 -> 6)
    assert _d([0, 1, 2, 3, 4], [4, 3, 2, 1, 0]) == 4 + 2 + 0 + 2 + 4  # reversed
    # the distance is defined from A's top-5: not symmetric in general
    assert _d([0, 1, 2, 3, 4], [9, 0, 1, 2, 3]) == 1 + 1 + 1 + 1 + 1
    assert _d([9, 0, 1, 2, 3], [0, 1, 2, 3, 4]) == 5 + 1 + 1 + 1 + 1


def _official_top5(rank_a: np.ndarray, rank_b: np.ndarray) -> int:
    """Paper definition with the explicit double sum; ranks 1-based (rank_x[c] = rank of class c)."""
    sigma = rank_b[np.argsort(rank_a)]  # sigma[i-1] = rank in B of A's rank-i class
    result = 0
    for i in range(1, 6):
        for j in range(min(sigma[i - 1], i) + 1, max(sigma[i - 1], i) + 1):
            if 1 <= j - 1 <= 5:
                result += 1
    return result


def test_top5_pair_distance_matches_paper_double_sum() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        la, lb = rng.normal(size=12), rng.normal(size=12)
        if rng.random() < 0.5:  # make B a small perturbation of A so that ranks overlap
            lb = la + 0.3 * rng.normal(size=12)
        rank_a, rank_b = (np.argsort(np.argsort(-v, kind="stable"), kind="stable") + 1 for v in (la, lb))
        got = _d(top5_lists(torch.tensor(la)).tolist(), top5_lists(torch.tensor(lb)).tolist())
        assert got == _official_top5(rank_a, rank_b)


def test_top5_lists_ties_go_to_lower_index() -> None:
    assert top5_lists(torch.zeros(10)).tolist() == [0, 1, 2, 3, 4]
    assert top5_lists(torch.tensor([0.0, 1, 1, 0, 1, 1, 1, 2])).tolist() == [7, 1, 2, 4, 5]


def _logits_for_ranking(order: list[int], classes: int = 8) -> torch.Tensor:
    """Logits whose descending order starts with `order`."""
    out = torch.zeros(classes)
    for r, c in enumerate(order):
        out[c] = 10.0 - r
    return out


def test_top5_distance_pairing_noise_and_difficulty() -> None:
    base = [0, 1, 2, 3, 4]
    swap = [1, 0, 2, 3, 4]   # distance 2 from base
    new = [5, 6, 7, 0, 1]    # from base: 0->4, 1->5, 2,3,4 -> 6: |1-4|+|2-5|+|3-6|+|4-6|+|5-6| = 12
    assert _d(base, new) == 12 and _d(new, base) == 5 + 4 + 3 + 3 + 3 and _d(swap, new) == 4 + 2 + 3 + 2 + 1
    frames = [base, swap, base, new]
    logits = torch.stack([_logits_for_ranking(o) for o in frames]).unsqueeze(0)  # (1, 4, 8)
    # d=1: (0,1)=2, (1,2)=2, (2,3)=12
    assert top5_distance(logits, noise=False, difficulty=1) == pytest.approx((2 + 2 + 12) / 3)
    # d=2: (0,2)=0, (1,3)=12
    assert top5_distance(logits, noise=False, difficulty=2) == pytest.approx(6.0)
    # d=3: (0,3)=12
    assert top5_distance(logits, noise=False, difficulty=3) == pytest.approx(12.0)
    # noise: (0,1)=2, (0,2)=0, (0,3)=12
    assert top5_distance(logits, noise=True) == pytest.approx(14 / 3)
    # top-5 lists give the same answer as logits
    top5 = top5_lists(logits)
    assert video_top5_distances(top5, False, 1).tolist() == pytest.approx([16 / 3])
    # averaged per video, then over videos
    two = torch.cat([logits, logits[:, [0, 0, 0, 0]]])
    assert top5_distance(two, noise=False) == pytest.approx((16 / 3 + 0) / 2)


# -- FR and mFR ------------------------------------------------------------------------------------------------

def test_alexnet_gives_mfr_one() -> None:
    fp = protocol.alexnet_flip_probabilities()
    assert mfr(fp) == pytest.approx(1.0)
    assert all(v == pytest.approx(1.0) for v in flip_rates(fp).values())
    assert mfr({p: 0.5 * v for p, v in fp.items()}) == pytest.approx(0.5)


def test_mfr_uses_the_ten_test_perturbations_only() -> None:
    fp = protocol.alexnet_flip_probabilities()
    tests = protocol.test_perturbations()
    assert len(tests) == 10 and "spatter" not in tests and "snow" in tests
    skewed = dict(fp)
    for p in ("spatter", "speckle_noise", "gaussian_blur", "shear"):  # validation perturbations are ignored
        skewed[p] = 10 * fp[p]
    assert mfr(skewed) == pytest.approx(1.0)
    one = dict(fp, gaussian_noise=fp["gaussian_noise"] * 3)  # FR 3 for one of ten -> mean (9 + 3) / 10
    assert mfr(one) == pytest.approx(1.2)


def test_mfr_missing_and_unknown() -> None:
    fp = protocol.alexnet_flip_probabilities()
    del fp["rotate"]
    with pytest.raises(UserError, match="rotate"):
        mfr(fp)
    with pytest.raises(UserError, match="no AlexNet"):
        flip_rates({"pixelate": 0.1})


def test_mean_top5_distance_is_plain_mean() -> None:
    t5 = {p: float(i) for i, p in enumerate(protocol.test_perturbations())}
    assert mean_top5_distance(t5) == pytest.approx(4.5)
    with pytest.raises(UserError, match="missing"):
        mean_top5_distance({"translate": 1.0})
