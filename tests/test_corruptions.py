"""On-the-fly corruptions: all 19 names work at 224x224 and on a small image, deterministic per seed, errors."""

from __future__ import annotations

import numpy as np
import pytest

from attnprobe.data import corruptions as C
from attnprobe.errors import UserError


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    from attnprobe.data.images import model_input_u8
    from attnprobe.data.samples import load_sample
    from attnprobe.zoo import Preprocessing

    return model_input_u8(load_sample("chelsea"), Preprocessing(input_size=224, crop_pct=0.875))


def test_names_are_the_15_benchmark_plus_4_extra() -> None:
    import imagecorruptions

    assert len(C.benchmark_names()) == 15 and len(C.extra_names()) == 4
    assert C.corruption_names() == C.benchmark_names() + C.extra_names()
    assert set(C.corruption_names()) == set(imagecorruptions.get_corruption_names("all"))


def test_all_corruptions_at_224(photo: np.ndarray) -> None:
    assert photo.shape == (224, 224, 3)
    for name in C.corruption_names():
        out = C.corrupt(photo, name, 3, seed=C.image_seed("chelsea", name, 3))
        assert out.shape == photo.shape and out.dtype == np.uint8, name
        assert not np.array_equal(out, photo), name


def test_all_corruptions_on_a_small_non_square_image() -> None:
    img = (np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8)
    for name in C.corruption_names():
        for severity in (1, 5):
            out = C.corrupt(img, name, severity, seed=1)
            assert out.shape == img.shape and out.dtype == np.uint8, (name, severity)


@pytest.mark.parametrize("name", ["gaussian_noise", "impulse_noise", "glass_blur", "frost", "snow", "spatter"])
def test_deterministic_per_seed(name: str) -> None:
    img = (np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8)
    a = C.corrupt(img, name, 2, seed=123)
    np.random.seed(999)  # whatever the caller's global state is, the draw is the same
    np.random.random(17)
    b = C.corrupt(img, name, 2, seed=123)
    np.testing.assert_array_equal(a, b)
    c = [C.corrupt(img, name, 2, seed=s) for s in (124, 125, 126)]
    assert any(not np.array_equal(a, x) for x in c)  # a different seed gives a different draw


def test_callers_random_state_is_restored() -> None:
    img = np.full((48, 48, 3), 128, np.uint8)
    np.random.seed(5)
    expected = np.random.random(3)
    np.random.seed(5)
    C.corrupt(img, "gaussian_noise", 1, seed=0)
    C.corrupt(img, "shot_noise", 1, seed=0)
    np.testing.assert_array_equal(np.random.random(3), expected)


def test_image_seed_is_stable_and_unsalted() -> None:
    # NOTE: fixed numbers: a change here changes every stored corrupted draw (bump SEED_SCHEME then).
    assert C.image_seed("chelsea", "gaussian_noise", 3) == 1959832167
    assert C.image_seed("chelsea") == 467401358
    assert C.image_seed("chelsea", "gaussian_noise", 3) != C.image_seed("chelsea", "gaussian_noise", 4)
    assert 0 <= C.image_seed("x" * 1000) < 2**32


def test_unknown_corruption_suggests_the_closest_name() -> None:
    with pytest.raises(UserError, match="did you mean 'gaussian_noise'") as e:
        C.corrupt(np.zeros((32, 32, 3), np.uint8), "gausian_noise", 1, seed=0)
    assert "choose one of" in str(e.value)


@pytest.mark.parametrize("bad", [0, 6, "three", 2.5, None])
def test_invalid_severity(bad: object) -> None:
    with pytest.raises(UserError, match="severity"):
        C.validate_severity(bad)  # type: ignore[arg-type]


def test_parse_severities() -> None:
    assert C.parse_severities(None) == [3]
    assert C.parse_severities("all") == [1, 2, 3, 4, 5]
    assert C.parse_severities("5,1,1") == [1, 5]
    with pytest.raises(UserError):
        C.parse_severities("1,9")


def test_too_small_or_wrong_dtype_image() -> None:
    with pytest.raises(UserError, match="too small"):
        C.corrupt(np.zeros((16, 64, 3), np.uint8), "fog", 1, seed=0)
    with pytest.raises(UserError, match="uint8"):
        C.corrupt(np.zeros((64, 64, 3), np.float32), "fog", 1, seed=0)
    with pytest.raises(UserError, match=r"\(H, W, 3\)"):
        C.corrupt(np.zeros((64, 64, 5), np.uint8), "fog", 1, seed=0)
    with pytest.raises(UserError, match="unknown corruption backend"):
        C.corrupt(np.zeros((64, 64, 3), np.uint8), "fog", 1, seed=0, backend="gpu")


def test_grey_image_is_stacked_to_rgb() -> None:
    out = C.corrupt(np.full((40, 40), 100, np.uint8), "contrast", 2, seed=0)
    assert out.shape == (40, 40, 3)
