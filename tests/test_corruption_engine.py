"""The batched corruption engine: API, errors, seeding (batch and device independence), and the data layer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from attnprobe.corruptions import RECIPES, corrupt, engine_id
from attnprobe.data import corruptions as C
from attnprobe.errors import UserError

ALL = C.corruption_names()


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    """Three different 48x64 RGB images with structure (blurs and warps have something to move)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:64]
    base = np.stack([(xx * 4) % 256, (yy * 5) % 256, ((xx + yy) * 3) % 256], 0).astype(np.float64)
    imgs = [np.clip(base * (0.5 + 0.25 * k) + rng.normal(0, 12, base.shape), 0, 255) for k in range(3)]
    return torch.from_numpy(np.stack(imgs).astype(np.uint8))


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_corruption_changes_the_images_and_keeps_shape_and_dtype(batch: torch.Tensor, recipe: str) -> None:
    for name in ALL:
        for severity in (1, 5):
            out = corrupt(batch, name, severity, seed=[1, 2, 3], recipe=recipe)
            assert out.shape == batch.shape and out.dtype == torch.uint8 and out.device == batch.device, name
            assert not torch.equal(out, batch), (name, severity)


@pytest.mark.parametrize("recipe", RECIPES)
def test_a_batch_equals_its_images_corrupted_one_by_one(batch: torch.Tensor, recipe: str) -> None:
    seeds = [11, 22, 33]
    for name in ALL:
        together = corrupt(batch, name, 3, seed=seeds, recipe=recipe)
        alone = torch.stack([corrupt(batch[i:i + 1], name, 3, seed=[seeds[i]], recipe=recipe)[0] for i in range(3)])
        assert torch.equal(together, alone), name
        # an int seed mixes in each image's own pixels: still independent of the rest of the batch
        together = corrupt(batch, name, 3, seed=5, recipe=recipe)
        alone = torch.stack([corrupt(batch[i], name, 3, seed=5, recipe=recipe) for i in range(3)])
        assert torch.equal(together, alone), name


def test_seeds_decide_the_draws(batch: torch.Tensor) -> None:
    for name in ("gaussian_noise", "glass_blur", "snow", "frost", "elastic_transform", "spatter"):
        a = corrupt(batch, name, 2, seed=[1, 2, 3])
        assert torch.equal(a, corrupt(batch, name, 2, seed=[1, 2, 3])), name
        assert not torch.equal(a, corrupt(batch, name, 2, seed=[4, 5, 6])), name
    # an int seed: two different images get different noise, the same image the same noise
    same = batch[:1].repeat(2, 1, 1, 1)
    out = corrupt(same, "gaussian_noise", 3, seed=0)
    assert torch.equal(out[0], out[1])
    noise = corrupt(batch, "gaussian_noise", 3, seed=0).int() - batch.int()
    assert not torch.equal(noise[0], noise[1])
    # seeds as a tensor work like a list
    assert torch.equal(corrupt(batch, "shot_noise", 1, seed=torch.tensor([7, 8, 9])),
                       corrupt(batch, "shot_noise", 1, seed=[7, 8, 9]))


def test_deterministic_corruptions_ignore_the_seed(batch: torch.Tensor) -> None:
    for name in ("contrast", "brightness", "saturate", "pixelate", "jpeg_compression", "defocus_blur", "zoom_blur",
                 "gaussian_blur"):
        assert torch.equal(corrupt(batch, name, 4, seed=0), corrupt(batch, name, 4, seed=[9, 9, 9])), name


def test_single_image_and_empty_batch(batch: torch.Tensor) -> None:
    one = corrupt(batch[0], "fog", 3, seed=[4])
    assert one.shape == batch[0].shape
    assert torch.equal(one, corrupt(batch[:1], "fog", 3, seed=[4])[0])
    empty = batch[:0]
    assert corrupt(empty, "snow", 2).shape == empty.shape


def test_non_square_and_odd_sizes() -> None:
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.integers(0, 256, (2, 3, 33, 101), dtype=np.uint8))
    for recipe in RECIPES:
        for name in ALL:
            assert corrupt(x, name, 5, seed=[1, 2], recipe=recipe).shape == x.shape, name


@pytest.mark.parametrize("call, message", [
    (lambda x: corrupt(x, "gausian_noise", 1), "did you mean 'gaussian_noise'"),
    (lambda x: corrupt(x, "fog", 1, recipe="imagenet_c"), "did you mean 'imagenet-c'"),
    (lambda x: corrupt(x, "fog", 0), "severity 0"),
    (lambda x: corrupt(x, "fog", 6), "severity 6"),
    (lambda x: corrupt(x, "fog", 2.0), "severity 2.0"),
    (lambda x: corrupt(x, "fog", "3"), "severity '3'"),
    (lambda x: corrupt(x.float(), "fog", 1), "uint8"),
    (lambda x: corrupt(x[:, :1], "fog", 1), r"\(B, 3, H, W\)"),
    (lambda x: corrupt(x[0, 0], "fog", 1), r"\(B, 3, H, W\)"),
    (lambda x: corrupt(x[..., :20, :], "fog", 1), "too small"),
    (lambda x: corrupt(x.numpy(), "fog", 1), "torch.Tensor"),
    (lambda x: corrupt(x, "fog", 1, seed=[1, 2]), "2 seeds for 3 images"),
    (lambda x: corrupt(x, "fog", 1, seed=1.5), "seed must be"),
    (lambda x: corrupt(x, "fog", 1, seed=torch.zeros(3)), "seed must be"),
])
def test_bad_input_is_one_user_error_line(batch: torch.Tensor, call, message: str) -> None:  # noqa: ANN001
    with pytest.raises(UserError, match=message) as e:
        call(batch)
    assert "\n" not in str(e.value)


def test_engine_id_names_backend_recipe_and_version() -> None:
    from attnprobe.corruptions import ENGINE_VERSION

    assert engine_id() == f"torch-v{ENGINE_VERSION}/imagenet-c"
    assert engine_id("imagecorruptions") == f"torch-v{ENGINE_VERSION}/imagecorruptions"
    assert C.corruption_id("torch") == engine_id("imagenet-c")
    assert C.corruption_id("reference").startswith("reference-imagecorruptions-")
    assert len({C.corruption_id("torch", r) for r in RECIPES} | {C.corruption_id("reference")}) == 3
    with pytest.raises(UserError, match="only has the 'imagecorruptions' recipe"):
        C.corruption_id("reference", "imagenet-c")
    with pytest.raises(UserError, match="unknown corruption backend"):
        C.corruption_id("numpy")


def test_lazy_export() -> None:
    import attnprobe

    assert attnprobe.corrupt is corrupt


# --- the data layer ---------------------------------------------------------------------------------------------


def test_data_layer_corrupt_uses_the_engine_by_default_and_the_package_on_request(batch: torch.Tensor) -> None:
    img = np.ascontiguousarray(batch[0].permute(1, 2, 0).numpy())
    seed = C.image_seed("x", "gaussian_noise", 2)
    via_data = C.corrupt(img, "gaussian_noise", 2, seed=seed)
    via_engine = corrupt(batch[:1], "gaussian_noise", 2, seed=[seed])[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(via_data, via_engine)
    reference = C.corrupt(img, "gaussian_noise", 2, seed=seed, backend="reference")
    assert not np.array_equal(reference, via_data)  # the package draws from NumPy's stream
    np.random.seed(0)
    np.testing.assert_array_equal(reference, C.corrupt(img, "gaussian_noise", 2, seed=seed, backend="reference"))
    # batched, both backends: image for image what `corrupt` gives
    seeds = [C.image_seed(f"i{k}", "snow", 3) for k in range(3)]
    for backend in C.BACKENDS:
        out = C.corrupt_batch(batch, "snow", 3, seeds, backend=backend)
        for k in range(3):
            one = C.corrupt(np.ascontiguousarray(batch[k].permute(1, 2, 0).numpy()), "snow", 3, seeds[k],
                            backend=backend)
            np.testing.assert_array_equal(out[k].permute(1, 2, 0).numpy(), one)


def _folder(root: Path, n: int = 4) -> Path:
    from PIL import Image

    rng = np.random.default_rng(1)
    for i in range(n):
        d = root / "n01440764"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (70 + i, 90, 3), dtype=np.uint8)).save(d / f"img{i}.png")
    (root / "n01440764" / "broken.png").write_bytes(b"not an image")
    return root


@pytest.mark.parametrize("size", [224, 96])
def test_on_the_fly_dataset_three_paths_agree(tmp_path: Path, size: int) -> None:
    from attnprobe.data.imagenet_c import OnTheFlyCorruption
    from attnprobe.zoo import Preprocessing

    root = _folder(tmp_path / "val")
    pre = Preprocessing(input_size=size, crop_pct=1.0)
    ds = OnTheFlyCorruption(root, "glass_blur", 2, pre)
    items = [ds[i] for i in range(len(ds))]
    broken = [i for i, (_, _, ok) in enumerate(items) if not ok]
    assert len(broken) == 1 and items[0][0].shape == (3, size, size)
    batched = ds.__getitems__(list(range(len(ds))))
    for (a, la, oka), (b, lb, okb) in zip(items, batched):
        assert oka == okb and la == lb and torch.equal(a, b)
    dev = OnTheFlyCorruption(root, "glass_blur", 2, pre, device_corruption=True)
    good = [i for i in range(len(ds)) if i not in broken]
    crops = torch.stack([dev[i][0] for i in good])
    assert crops.dtype == torch.uint8 and crops.shape[1:] == (3, 224, 224)
    finished = dev.finish_batch(crops, good)
    for k, i in enumerate(good):
        assert torch.allclose(finished[k], items[i][0], atol=1e-6)
    assert dev.fingerprint == ds.fingerprint


def test_on_the_fly_fingerprint_follows_backend_and_recipe(tmp_path: Path) -> None:
    from attnprobe.data.imagenet_c import OnTheFlyCorruption, on_the_fly_cells
    from attnprobe.zoo import Preprocessing

    root = _folder(tmp_path / "val")
    pre = Preprocessing(input_size=224, crop_pct=1.0)
    prints = {OnTheFlyCorruption(root, "fog", 1, pre, backend=b, recipe=r).fingerprint
              for b, r in (("torch", "imagenet-c"), ("torch", "imagecorruptions"), ("reference", None))}
    assert len(prints) == 3
    ref = OnTheFlyCorruption(root, "fog", 1, pre, backend="reference")
    assert ref.recipe == "imagecorruptions" and ref.corruption_id.startswith("reference-")
    [cell] = on_the_fly_cells(root, pre, ["fog"], [1], recipe="imagecorruptions")
    assert cell.info["corruption_recipe"] == "imagecorruptions" and cell.info["corruption_backend"] == "torch"
    assert cell.info["corruption_id"] == engine_id("imagecorruptions")
    with pytest.raises(UserError, match="only has the 'imagecorruptions' recipe"):
        on_the_fly_cells(root, pre, ["fog"], [1], backend="reference", recipe="imagenet-c")


@pytest.mark.gpu
def test_cuda_gives_the_cpu_result() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from PIL import Image
    import skimage.data

    img = np.asarray(Image.fromarray(skimage.data.astronaut()).resize((224, 224)))
    x = torch.from_numpy(img).permute(2, 0, 1)[None].repeat(4, 1, 1, 1).contiguous()
    seeds = [1, 2, 3, 4]
    for recipe in RECIPES:
        for name in ALL:
            cpu = corrupt(x, name, 3, seed=seeds, recipe=recipe)
            gpu = corrupt(x.cuda(), name, 3, seed=seeds, recipe=recipe)
            assert gpu.device.type == "cuda"
            diff = (gpu.cpu().int() - cpu.int()).abs()
            # NOTE: same draws; float rounding on the two devices may move a value across a truncation step
            assert diff.float().le(1).float().mean() >= 0.995, (recipe, name, diff.float().mean())
            assert diff.float().mean() < 0.05, (recipe, name)


def test_draws_do_not_depend_on_threads() -> None:
    from attnprobe.corruptions.rng import ImageRNG

    keys = list(range(8))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ImageRNG(keys, "cpu").normal((3, 224, 224))
        torch.set_num_threads(2)
        two = ImageRNG(keys, "cpu").normal((3, 224, 224))  # 1.2M values: drawn in 2 threads
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)
    assert torch.equal(one[3], ImageRNG([3], "cpu").normal((3, 224, 224))[0])


def test_memory_layout_does_not_matter(batch: torch.Tensor) -> None:
    cl = batch.contiguous(memory_format=torch.channels_last)
    view = batch.permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)  # same values, transposed strides
    for name in ("glass_blur", "elastic_transform", "pixelate", "saturate", "motion_blur"):
        ref = corrupt(batch, name, 3, seed=5)
        assert torch.equal(corrupt(cl, name, 3, seed=5), ref), name
        assert torch.equal(corrupt(view, name, 3, seed=5), ref), name
