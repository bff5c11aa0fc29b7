"""The device input path (JPEG bytes -> decode, resize, crop, normalise on the device) against the CPU path (PIL).

Everything here runs the device path on the CPU: the same code as on CUDA, with `device="cpu"`. On CPU the two
paths give bit-identical tensors (measured: max difference 0, 99.9th percentile 0, on every file the CPU path can
read), so the tests assert equality, not a tolerance. The CUDA decoder (nvJPEG) is checked by the `gpu` tests.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from attnprobe.data.encoded import EncodedBatch, EncodedImages, collate, device_decodable_jpeg
from attnprobe.data.folders import ImageFolderDataset
from attnprobe.data.tensor_transforms import TensorRecipe, resize_like_pil, resize_shorter
from attnprobe.engine.device_input import DeviceInput, decode_jpegs, resolve_decode
from attnprobe.errors import UserError
from attnprobe.zoo import Preprocessing
from tests.device_input_fixtures import photo, write_mixed_folder

CPU = torch.device("cpu")
_MODES = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR,
          "lanczos": InterpolationMode.LANCZOS}


def as_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img.convert("RGB")).copy()).permute(2, 0, 1)


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear", "lanczos"])
def test_resize_like_pil_is_bit_identical_to_pillow(interpolation: str) -> None:
    rng = np.random.default_rng(1)
    images = [photo("chelsea"), photo("coffee", (301, 199)),
              Image.fromarray(rng.integers(0, 256, (57, 83, 3), dtype=np.uint8))]  # noise: worst bicubic overshoot
    for img in images:
        for size in (32, 73, 97):  # shrinking (antialiased) and, for the noise image, enlarging
            ref = as_tensor(TF.resize(img, size, interpolation=_MODES[interpolation]))
            out = resize_shorter(as_tensor(img), size, interpolation)
            assert out.shape == ref.shape and out.dtype == torch.uint8
            assert torch.equal(out, ref), (interpolation, img.size, size, int((out.int() - ref.int()).abs().max()))


def test_resize_like_pil_exact_sizes_and_refusals() -> None:
    img = as_tensor(photo("rocket", (120, 80)))
    assert torch.equal(resize_like_pil(img, (80, 120)), img)  # same size: untouched, as PIL
    ref = as_tensor(photo("rocket", (120, 80)).resize((50, 33), Image.BILINEAR))
    assert torch.equal(resize_like_pil(img, (33, 50), "bilinear"), ref)
    with pytest.raises(ValueError):
        resize_like_pil(img, (10, 10), "nearest")
    with pytest.raises(TypeError):
        resize_like_pil(img.float(), (10, 10))


@pytest.mark.parametrize("kw", [dict(quality=85), dict(quality=95, subsampling=0), dict(quality=75, subsampling=1),
                                dict(quality=80, progressive=True)])
def test_torchvision_cpu_decoder_equals_pil(kw: dict) -> None:
    for name in ("chelsea", "astronaut"):
        buf = io.BytesIO()
        photo(name).save(buf, "JPEG", **kw)
        data = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
        [dev] = decode_jpegs([data], CPU)
        ref = as_tensor(Image.open(io.BytesIO(buf.getvalue())))
        assert torch.equal(dev, ref)


def test_jpeg_header_sniffing(tmp_path: Path) -> None:
    kinds = write_mixed_folder(tmp_path)
    for rel, kind in kinds.items():
        raw = (tmp_path / rel).read_bytes()
        assert device_decodable_jpeg(raw) == (kind in ("jpeg", "progressive", "grey")), rel
        assert device_decodable_jpeg(raw, progressive=False) == (kind in ("jpeg", "grey")), rel


PRE = Preprocessing(input_size=48, interpolation="bicubic", crop_pct=0.875, mean=(0.485, 0.456, 0.406),
                    std=(0.229, 0.224, 0.225))


def transforms() -> dict[str, object]:
    from attnprobe.benchmarks.pgd import _PixelInput
    from attnprobe.data.imagenet_c import CleanInput, ModelInput
    from attnprobe.data.transforms import EvalTransform

    bilinear = Preprocessing(input_size=40, interpolation="bilinear", crop_pct=1.0)
    return {"clean": CleanInput(PRE), "released": ModelInput(PRE), "eval-bilinear": EvalTransform(bilinear),
            "pgd-pixels": _PixelInput(PRE)}


def device_batches(enc: EncodedImages, batch: int) -> list[tuple[EncodedBatch, torch.Tensor, torch.Tensor]]:
    return [collate([enc[i] for i in range(s, min(s + batch, len(enc)))]) for s in range(0, len(enc), batch)]


@pytest.mark.parametrize("name,in_worker", [("clean", False), ("released", False), ("eval-bilinear", False),
                                            ("pgd-pixels", False), ("clean", True)])
def test_device_path_gives_the_cpu_path_tensors(tmp_path: Path, name: str, in_worker: bool) -> None:
    kinds = write_mixed_folder(tmp_path)
    ds = ImageFolderDataset(tmp_path, transforms()[name])
    enc = ds.encoded(in_worker=in_worker)
    assert isinstance(enc, EncodedImages) and enc.fingerprint == ds.fingerprint and len(enc) == len(ds)
    shipped = [enc[i][0] for i in range(len(enc))]
    assert all((im.data is None) == in_worker or kinds[rel] not in ("jpeg", "progressive", "grey")
               for im, (rel, _) in zip(shipped, ds.samples))
    stage = DeviceInput(enc.recipe, CPU)
    xs, oks = [], []
    for batch, targets, ok in device_batches(enc, 5):
        x, readable = stage(batch, ok)
        xs.append(x)
        oks.append(readable)
    x_dev, ok_dev = torch.cat(xs), torch.cat(oks)
    cpu_items = [ds[i] for i in range(len(ds))]
    ok_cpu = torch.tensor([it[2] for it in cpu_items])
    assert ok_dev.tolist() == ok_cpu.tolist()
    unreadable = {rel for rel, k in kinds.items() if k == "unreadable"}
    assert [not o for o in ok_cpu.tolist()] == [rel in unreadable for rel, _ in ds.samples]
    for i, (x_cpu, _, ok) in enumerate(cpu_items):
        if ok:
            diff = (x_dev[i] - x_cpu).abs().max().item()
            assert torch.equal(x_dev[i], x_cpu), (ds.samples[i][0], diff)


def test_encoded_variant_is_refused_where_pixels_need_the_cpu(tmp_path: Path) -> None:
    from attnprobe.data.imagenet_c import ModelInput, OnTheFlyCorruption

    write_mixed_folder(tmp_path)
    otf = OnTheFlyCorruption(tmp_path, "gaussian_noise", 1, PRE)
    assert otf.encoded() is None  # corrupted on the fly in the workers: the CPU path
    nearest = Preprocessing(input_size=32, interpolation="nearest", crop_pct=1.0)
    assert ImageFolderDataset(tmp_path, ModelInput(nearest)).encoded() is None  # no exact tensor resampling


def test_u8_stages_run_between_geometry_and_normalisation(tmp_path: Path) -> None:
    from attnprobe.data.imagenet_c import CleanInput

    write_mixed_folder(tmp_path)
    ds = ImageFolderDataset(tmp_path, CleanInput(PRE))
    enc = ds.encoded()
    seen: list[list[int]] = []

    def invert(u8: torch.Tensor, batch: EncodedBatch) -> torch.Tensor:
        seen.append(batch.index)
        assert u8.dtype == torch.uint8 and u8.shape[-2:] == (48, 48)
        return 255 - u8

    plain, inverted = DeviceInput(enc.recipe, CPU), DeviceInput(enc.recipe, CPU, stages=[invert])
    batch, _, ok = collate([enc[i] for i in range(4)])
    a, _ = plain(batch, ok)
    b, _ = inverted(batch, ok)
    recipe = enc.recipe
    assert seen == [[0, 1, 2, 3]]
    mean = torch.tensor(recipe.mean).view(1, 3, 1, 1)
    std = torch.tensor(recipe.std).view(1, 3, 1, 1)
    assert torch.allclose((a * std + mean) + (b * std + mean), torch.ones_like(a), atol=1e-5)


def test_recipe_fit_resizes_only_images_of_another_size() -> None:
    recipe = TensorRecipe("bicubic", fit=48, mean=(0.5,) * 3, std=(0.5,) * 3)
    exact = torch.randint(0, 256, (3, 48, 48), dtype=torch.uint8)
    assert torch.equal(recipe.geometry(exact), exact)
    other = as_tensor(photo("coffee", (90, 60)))
    ref = as_tensor(TF.center_crop(TF.resize(photo("coffee", (90, 60)), 48, InterpolationMode.BICUBIC), [48, 48]))
    assert torch.equal(recipe.geometry(other), ref)


def test_resolve_decode() -> None:
    assert resolve_decode("auto", CPU) == "cpu" and resolve_decode(None, CPU) == "cpu"
    assert resolve_decode("auto", torch.device("cuda", 0)) == "workers"  # the exact path
    assert resolve_decode("gpu", torch.device("cuda", 0)) == "device"
    assert resolve_decode("device", CPU) == "device" and resolve_decode("CPU", CPU) == "cpu"
    assert resolve_decode("workers", CPU) == "workers"
    with pytest.raises(UserError, match="needs a CUDA device"):
        resolve_decode("gpu", CPU)
    with pytest.raises(UserError, match="unknown --decode"):
        resolve_decode("nvjpeg", CPU)
