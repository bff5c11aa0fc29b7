"""Building blocks of the corruption engine against the libraries the reference recipes call (SciPy, PIL, OpenCV,
NumPy's view semantics), one by one."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from attnprobe.corruptions import corrupt, cvops, filters, resample
from attnprobe.corruptions.blur import disk_kernel, glass_shuffle_index, motion_blur_field
from attnprobe.corruptions.rng import ImageRNG, image_keys


@pytest.mark.parametrize("shape", [(37, 51), (224, 224), (300, 700), (20, 9), (600, 701)])
def test_gaussian_filter_is_scipys(shape: tuple[int, int]) -> None:
    from scipy.ndimage import gaussian_filter

    a = np.random.default_rng(0).random(shape)
    for mode in ("nearest", "reflect", "mirror", "wrap"):
        for sigma, truncate in ((0.7, 4.0), (3, 4.0), (25.0, 3.0), ((2.0, 7.0), 3.0)):
            ref = gaussian_filter(a, sigma, mode=mode, truncate=truncate)
            out = filters.gaussian_filter(torch.from_numpy(a)[None, None], sigma, mode, truncate)[0, 0].numpy()
            np.testing.assert_allclose(out, ref, atol=1e-9, err_msg=f"{mode} {sigma}")


def test_fft_correlation_is_scipys() -> None:
    from scipy.ndimage import correlate

    x = torch.rand(2, 3, 30, 40, dtype=torch.float64)
    k = torch.rand(7, 5, dtype=torch.float64)
    np.testing.assert_allclose(filters.fft_correlate2d(x, k, "mirror")[1, 2].numpy(),
                               correlate(x[1, 2].numpy(), k.numpy(), mode="mirror"), atol=1e-10)
    per_image = torch.rand(2, 9, 9, dtype=torch.float64)
    np.testing.assert_allclose(filters.fft_correlate2d(x, per_image, "nearest")[1, 0].numpy(),
                               correlate(x[1, 0].numpy(), per_image[1].numpy(), mode="nearest"), atol=1e-10)


@pytest.mark.parametrize("size", [(224, 224), (37, 91), (1024, 2048)])
def test_pil_resizes_are_bit_exact(size: tuple[int, int]) -> None:
    from PIL import Image

    h, w = size
    img = np.random.default_rng(1).integers(0, 256, (h, w, 3), dtype=np.uint8)
    t = torch.from_numpy(img).permute(2, 0, 1)[None]
    for c in (0.6, 0.25):
        ow, oh = int(w * c), int(h * c)
        for name, flt in (("box", Image.BOX), ("bilinear", Image.BILINEAR), ("bicubic", Image.BICUBIC)):
            ref = np.asarray(Image.fromarray(img).resize((ow, oh), flt))
            np.testing.assert_array_equal(resample.pil_resize(t, oh, ow, name)[0].permute(1, 2, 0).numpy(), ref)
        small = np.asarray(Image.fromarray(img).resize((ow, oh), Image.BOX))
        ts = torch.from_numpy(small.copy()).permute(2, 0, 1)[None]
        np.testing.assert_array_equal(resample.pil_resize(ts, h, w, "box")[0].permute(1, 2, 0).numpy(),
                                      np.asarray(Image.fromarray(small).resize((w, h), Image.BOX)))
        np.testing.assert_array_equal(resample.pil_resize_nearest(ts, h, w)[0].permute(1, 2, 0).numpy(),
                                      np.asarray(Image.fromarray(small).resize((w, h), Image.NEAREST)))


def test_clipped_zoom_is_scipys_zoom() -> None:
    from scipy.ndimage import zoom

    x = np.random.default_rng(2).random((224, 224, 3)).astype(np.float32)
    t = torch.from_numpy(x).permute(2, 0, 1)[None]
    for z in np.arange(1, 1.31, 0.03):
        crop = int(np.ceil(224 / z))
        top = (224 - crop) // 2
        ref = zoom(x[top:top + crop, top:top + crop], (z, z, 1), order=1)[:224, :224]
        out = resample.zoom_center(t, float(z), center_trim=False)[0].permute(1, 2, 0).numpy()
        np.testing.assert_allclose(out, ref, atol=1e-4)


def test_map_coordinates_is_scipys_far_outside_the_image() -> None:
    from scipy.ndimage import map_coordinates

    rng = np.random.default_rng(3)
    img = rng.random((30, 40))
    rows, cols = rng.uniform(-50, 80, (30, 40)), rng.uniform(-70, 110, (30, 40))
    for mode in ("reflect", "mirror", "nearest"):
        ref = map_coordinates(img, [rows.ravel(), cols.ravel()], order=1, mode=mode).reshape(30, 40)
        out = resample.map_coordinates(torch.from_numpy(img)[None, None], torch.from_numpy(rows)[None],
                                       torch.from_numpy(cols)[None], mode)[0, 0].numpy()
        np.testing.assert_allclose(out, ref, atol=1e-9, err_msg=mode)


def _liquid(rng: np.random.Generator, h: int, w: int, sigma: float) -> np.ndarray:
    from skimage.filters import gaussian

    layer = gaussian(rng.normal(0.65, 0.3, (h, w)), sigma=sigma)
    layer[layer < 0.68] = 0
    return (layer * 255).astype(np.uint8)


def test_opencv_steps_of_spatter_match_opencv() -> None:
    import cv2

    rng = np.random.default_rng(4)
    emboss = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])
    for h, w, sigma in ((224, 224, 4), (64, 97, 3), (120, 80, 2)):
        for level in (_liquid(rng, h, w, sigma), rng.integers(0, 256, (h, w), dtype=np.uint8)):
            edges = cv2.Canny(level, 50, 150)
            np.testing.assert_array_equal(cvops.canny(torch.from_numpy(level)[None], 50, 150)[0].numpy(), edges)
            dist = cv2.threshold(cv2.distanceTransform(255 - edges, cv2.DIST_L2, 5), 20, 20, cv2.THRESH_TRUNC)[1]
            np.testing.assert_allclose(cvops.distance_l2_mask5(torch.from_numpy(255 - edges)[None], 20)[0].numpy(),
                                       dist, atol=1e-5)
            boxed = cv2.blur(dist, (3, 3))
            np.testing.assert_array_equal(cvops.box3(torch.from_numpy(dist)[None])[0].numpy(), boxed)
            eq = cv2.equalizeHist(boxed.astype(np.uint8))
            np.testing.assert_array_equal(cvops.equalize_hist(torch.from_numpy(boxed.astype(np.uint8))[None])[0],
                                          eq)
            np.testing.assert_array_equal(cvops.filter3x3_u8(torch.from_numpy(eq)[None], emboss)[0].numpy(),
                                          cv2.filter2D(eq, cv2.CV_8U, emboss))
            np.testing.assert_array_equal(cvops.box3(torch.from_numpy(level)[None])[0].numpy(), cv2.blur(level, (3, 3)))


def test_equalize_hist_of_a_flat_image() -> None:
    import cv2

    flat = np.full((40, 50), 7, np.uint8)
    np.testing.assert_array_equal(cvops.equalize_hist(torch.from_numpy(flat)[None])[0].numpy(),
                                  cv2.equalizeHist(flat))


@pytest.mark.parametrize("h, w, d", [(20, 17, 1), (33, 40, 2), (50, 50, 4), (9, 9, 4), (64, 48, 3)])
def test_glass_shuffle_index_replays_the_numpy_loop(h: int, w: int, d: int) -> None:
    rng = np.random.default_rng(5)
    rh, rw = max(h - 2 * d, 0), max(w - 2 * d, 0)
    shifts = rng.integers(-d, d, size=(2, 2, rh, rw))
    index = glass_shuffle_index(h, w, torch.from_numpy(shifts), d).numpy()
    for b in range(2):
        x = np.arange(h * w).reshape(h, w, 1)  # NOTE: 3-D, so x[h, w] is a view, as in the reference
        for hh in range(h - d, d, -1):
            for ww in range(w - d, d, -1):
                dx, dy = shifts[b, :, hh - d - 1, ww - d - 1]
                hp, wp = hh + dy, ww + dx
                x[hh, ww], x[hp, wp] = x[hp, wp], x[hh, ww]
        np.testing.assert_array_equal(index[b].reshape(h, w), x[..., 0])


def test_defocus_disk_is_the_references() -> None:
    from imagecorruptions.corruptions import disk

    for radius, alias in ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)):
        np.testing.assert_allclose(disk_kernel(radius, alias), disk(radius=radius, alias_blur=alias), atol=1e-7)


def test_motion_blur_is_imagecorruptions_kernel() -> None:
    from imagecorruptions.corruptions import _motion_blur

    img = np.random.default_rng(6).random((40, 56, 3))
    t = torch.from_numpy(img).permute(2, 0, 1)[None]
    for radius, sigma, angle in ((10, 3, 17.3), (15, 8, -44.0), (20, 15, 0.0), (12, 8, -100.0)):
        ref = _motion_blur(img, radius=radius, sigma=sigma, angle=angle)
        out = motion_blur_field(t, radius, sigma, [angle])[0].permute(1, 2, 0).numpy()
        np.testing.assert_allclose(out, ref, atol=1e-9)


def test_jpeg_roundtrip_is_pils() -> None:
    from PIL import Image

    from attnprobe.corruptions import jpeg_roundtrip

    rng = np.random.default_rng(7)
    for shape in ((2, 3, 64, 80), (2, 3, 45, 67)):  # NOTE: whole and partial 16x16 blocks
        imgs = rng.integers(0, 256, shape, dtype=np.uint8)
        imgs[1] = np.clip(imgs[1] // 4 + 90, 0, 255)
        x = torch.from_numpy(imgs)
        for q in (25, 7, 85):
            out = jpeg_roundtrip(x, q)
            for k in range(2):
                buf = io.BytesIO()
                Image.fromarray(imgs[k].transpose(1, 2, 0)).save(buf, format="JPEG", quality=q, optimize=True)
                ref = np.asarray(Image.open(buf).convert("RGB"))
                np.testing.assert_array_equal(out[k].permute(1, 2, 0).numpy(), ref)


def test_compiled_pixelate_is_pils_resize() -> None:
    from attnprobe.corruptions import digital
    from attnprobe.corruptions.api import get_recipe
    from attnprobe.corruptions.params import PIXELATE

    rng = np.random.default_rng(11)
    for shape in ((2, 3, 224, 224), (1, 3, 37, 91), (2, 3, 300, 171)):
        x = torch.from_numpy(rng.integers(0, 256, shape, dtype=np.uint8))
        h, w = shape[-2:]
        for recipe in ("imagenet-c", "imagecorruptions"):
            up = get_recipe(recipe).pixelate_up
            for severity, c in enumerate(PIXELATE, 1):
                sh, sw = int(h * c), int(w * c)
                rows, cols = resample.upscale_sources(sh, h, up), resample.upscale_sources(sw, w, up)
                want = digital._map_planes(lambda p, o: digital._pixelate_pil(p, (sw, sh), rows, cols, o), x)  # noqa: B023
                assert torch.equal(digital.pixelate(x, severity, get_recipe(recipe)), want), (shape, recipe, severity)


def test_jpeg_and_pixelate_without_numba_give_the_same_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    from attnprobe.corruptions import digital
    from attnprobe.corruptions.api import get_recipe

    x = torch.from_numpy(np.random.default_rng(12).integers(0, 256, (2, 3, 45, 67), dtype=np.uint8))
    compiled = digital.jpeg_roundtrip(x, 12), digital.pixelate(x, 4, get_recipe("imagenet-c"))
    for loop in ("interleaved_cpu", "planar_cpu", "pixelate_cpu"):
        monkeypatch.setattr(digital, loop, lambda *a: None)  # what each returns without Numba
    assert torch.equal(digital.jpeg_roundtrip(x, 12), compiled[0])
    assert torch.equal(digital.pixelate(x, 4, get_recipe("imagenet-c")), compiled[1])


def test_pixel_layout_loops_are_permutes() -> None:
    from attnprobe.corruptions.loops_pixel import interleaved_cpu, planar_cpu

    x = torch.randint(0, 256, (3, 3, 7, 13), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    pixels = interleaved_cpu(x.numpy())
    if pixels is None:
        pytest.skip("numba is not installed")
    assert np.array_equal(pixels, x.permute(0, 2, 3, 1).numpy())
    assert np.array_equal(planar_cpu(pixels), x.numpy())


def test_jpeg_takes_pils_coder_when_torchvisions_pixels_differ(monkeypatch: pytest.MonkeyPatch) -> None:
    from attnprobe.corruptions import digital

    x = torch.from_numpy(np.random.default_rng(8).integers(0, 256, (3, 3, 40, 56), dtype=np.uint8))
    fast = digital.jpeg_roundtrip(x, 18)
    real = digital._torchvision_jpeg
    monkeypatch.setattr(digital, "_torchvision_jpeg", lambda b, q: real(b, q) ^ 1)  # a coder that is 1 level off
    digital._torchvision_jpeg_is_pils.cache_clear()
    try:
        assert not digital._torchvision_jpeg_is_pils(18)
        assert torch.equal(digital.jpeg_roundtrip(x, 18), fast)  # PIL's coder: the same pixels
    finally:
        digital._torchvision_jpeg_is_pils.cache_clear()


def test_poisson_guide_tables_give_exact_inverse_cdf_draws() -> None:
    from scipy.stats import poisson

    from attnprobe.corruptions.noise import shot_noise

    level = torch.arange(256, dtype=torch.uint8).repeat_interleave(40).reshape(1, 1, 80, 128)
    for severity, photons in ((1, 60), (5, 3)):
        rng = ImageRNG([123], "cpu")
        u = ImageRNG([123], "cpu").uniform((1, 80, 128)).numpy().ravel()
        out = shot_noise(level, severity, rng).numpy().ravel()
        rates = level.numpy().ravel() / 255.0 * photons
        counts = np.minimum(poisson.ppf(u, rates), photons)  # the inverse CDF, exactly
        expect = (np.clip(counts / photons, 0, 1).astype(np.float32) * np.float32(255)).astype(np.uint8)
        np.testing.assert_array_equal(out, expect)


def test_image_keys_are_fixed() -> None:
    # NOTE: known answers: a change here changes every corrupted image (bump ENGINE_VERSION then).
    x = torch.arange(3 * 32 * 32, dtype=torch.int64).remainder(251).to(torch.uint8).reshape(1, 3, 32, 32)
    assert image_keys(x.repeat(2, 1, 1, 1), [0, 1]) == [KEY_SEED_0, KEY_SEED_1]
    assert image_keys(x, 0) == [KEY_CONTENT_0]
    assert image_keys(x, 0) != image_keys(255 - x, 0)


KEY_SEED_0, KEY_SEED_1, KEY_CONTENT_0 = 17356652927100393554, 1949084874342526763, 5307364647238613236


@pytest.mark.parametrize("h, w, d, passes", [(33, 40, 2, 3), (50, 50, 4, 2), (64, 48, 1, 1)])
def test_compiled_glass_pulls_equal_the_torch_chains(h: int, w: int, d: int, passes: int) -> None:
    from attnprobe.corruptions.loops_blur import glass_blur_cpu

    rng = np.random.default_rng(h + d)
    shifts = rng.integers(0, 2 * d, size=(3, passes, 2, h - 2 * d, w - 2 * d), dtype=np.uint8)
    position = np.arange(h * w).reshape(h, w)
    coded = np.stack([position % 256, position // 256, position % 7]).astype(np.uint8)  # (3, h, w)
    # NOTE: with a 1-tap "blur" each output pixel is exactly the pixel it pulled: its code gives the index
    pulled = glass_blur_cpu(np.repeat(coded[None], 3, 0), (1.0,), shifts, d)
    if pulled is None:
        pytest.skip("numba is not installed")
    index = None
    for k in range(passes):
        step = glass_shuffle_index(h, w, torch.from_numpy(shifts[:, k]), d, base=d)
        index = step if index is None else index.gather(1, step)
    got = pulled[:, 0].astype(np.int64) + 256 * pulled[:, 1].astype(np.int64)
    np.testing.assert_array_equal(got.reshape(3, -1), index.numpy())


@pytest.mark.parametrize("small, big", [(134, 224), (112, 224), (89, 224), (56, 224), (45, 224), (307, 512), (16, 40)])
def test_upscale_copies_one_pixel_as_pil(small: int, big: int) -> None:
    from PIL import Image

    from attnprobe.corruptions.resample import pil_resize, upscale_sources

    img = np.random.default_rng(small).integers(0, 256, (small, small + 3), dtype=np.uint8)
    for name, pil_filter in (("box", Image.BOX), ("nearest", Image.NEAREST)):
        rows, cols = upscale_sources(small, big, name), upscale_sources(small + 3, big + 5, name)
        ref = np.asarray(Image.fromarray(img).resize((big + 5, big), pil_filter))
        np.testing.assert_array_equal(img[rows][:, cols], ref)
    torch_box = pil_resize(torch.from_numpy(img)[None], big, big + 5, "box")[0].numpy()
    np.testing.assert_array_equal(torch_box, np.asarray(Image.fromarray(img).resize((big + 5, big), Image.BOX)))


_COMPILED = {"digital": ("hsv_adjust_cpu", "elastic_cpu"),
             "noise": ("shot_noise_cpu", "add_noise_cpu", "impulse_noise_cpu"),
             "blur": ("glass_blur_cpu", "motion_cpu", "zoom_blur_cpu"), "weather": ("fog_cpu", "snow_blend_cpu"),
             "filters": ("separable_cpu",)}
# NOTE: these replay the torch path's float operations one by one: the same bits
_EXACT = {"brightness", "saturate", "shot_noise", "gaussian_noise", "impulse_noise"}


@pytest.mark.parametrize("recipe", ["imagenet-c", "imagecorruptions"])
@pytest.mark.parametrize("name", ["brightness", "saturate", "shot_noise", "gaussian_noise", "impulse_noise",
                                  "glass_blur", "motion_blur", "zoom_blur", "elastic_transform", "fog", "snow",
                                  "gaussian_blur"])
def test_compiled_cpu_loops_equal_the_torch_path(name: str, recipe: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    from attnprobe.corruptions import jit

    if not jit.available():
        pytest.skip("numba is not installed")
    rng = np.random.default_rng(3)
    imgs = rng.integers(0, 256, (3, 3, 40, 56), dtype=np.uint8)
    imgs[1, :, :20] = imgs[1, :1, :20]  # greys: delta 0
    imgs[2, 1] = imgs[2, 0]  # ties between the maximum channels
    imgs[2, 2, :10] = imgs[2, 0, :10]
    smooth = torch.nn.functional.avg_pool2d(torch.from_numpy(imgs).float(), 5, 1, 2).to(torch.uint8)
    x = torch.cat([torch.from_numpy(imgs), smooth])  # noise and smooth images
    seeds = [1, 2, 3, 4, 5, 6]
    compiled = [corrupt(x, name, s, seed=seeds, recipe=recipe) for s in range(1, 6)]
    for module, fns in _COMPILED.items():
        for fn in fns:
            monkeypatch.setattr(importlib.import_module(f"attnprobe.corruptions.{module}"), fn, lambda *a, **k: None)
    for s in range(1, 6):
        torch_path = corrupt(x, name, s, seed=seeds, recipe=recipe)
        if name in _EXACT:
            assert torch.equal(torch_path, compiled[s - 1]), (name, s)
        else:  # float32 sums in another order: a value may cross a truncation step
            diff = (torch_path.int() - compiled[s - 1].int()).abs()
            assert diff.max() <= 1 and diff.float().mean() < 2e-3, (name, s, diff.float().mean())


def test_every_compiled_loop_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The torch fallback is silent by design: make sure no compiled path falls back by mistake."""
    from attnprobe.corruptions import digital, jit

    if not jit.available():
        pytest.skip("numba is not installed")
    calls: list[str] = []
    real_run = jit.run

    def counting_run(loop, out, *args):  # noqa: ANN001, ANN202
        result = real_run(loop, out, *args)
        assert result is not None, loop.__name__
        calls.append(loop.__name__)
        return result

    for module in ("loops_pixel", "loops_blur", "loops_warp", "loops_weather", "loops_resample"):
        monkeypatch.setattr(f"attnprobe.corruptions.{module}.run", counting_run)
    x = torch.randint(0, 256, (2, 3, 40, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for name in ("brightness", "shot_noise", "gaussian_noise", "impulse_noise", "glass_blur", "motion_blur",
                 "zoom_blur", "elastic_transform", "fog", "snow", "gaussian_blur", "jpeg_compression", "pixelate"):
        corrupt(x, name, 3, seed=[1, 2])
    jpeg_layouts = {"_interleave_loop", "_planar_loop"} if digital._torchvision_jpeg_is_pils(15) else set()
    assert set(calls) == {"_hsv_adjust_loop", "_shot_noise_loop", "_add_noise_loop", "_impulse_loop",
                          "_glass_blur_loop", "_motion_loop", "_zoom_blur_loop", "_elastic_loop", "_fog_loop",
                          "_snow_blend_loop", "_separable_loop", "_pixelate_loop"} | jpeg_layouts


def test_zoom_center_of_channels_last_images_is_the_same() -> None:
    from attnprobe.corruptions.params import zoom_factors

    x = torch.rand(2, 3, 61, 90, generator=torch.Generator().manual_seed(0))
    for z in zoom_factors(5) + [3.0, 4.5]:
        for trim in (True, False):
            plain = resample.zoom_center(x, z, trim)
            assert torch.equal(resample.zoom_center(x.contiguous(memory_format=torch.channels_last), z, trim), plain)


def test_pad2d_reflect_is_numpys_symmetric() -> None:
    x = torch.rand(2, 3, 9, 12, dtype=torch.float32, generator=torch.Generator().manual_seed(1))
    for pads in ((0, 3, 2, 0), (4, 4, 7, 7), (8, 1, 11, 5)):
        top, bottom, left, right = pads
        ref = np.pad(x.numpy(), ((0, 0), (0, 0), (top, bottom), (left, right)), mode="symmetric")
        np.testing.assert_array_equal(filters.pad2d(x, *pads, "reflect").numpy(), ref)


def _corrupt_in_child(x: torch.Tensor, queue) -> None:  # noqa: ANN001
    queue.put(corrupt(x, "brightness", 3, seed=[1, 2, 3, 4]).numpy())  # NOTE: by value, not shared memory


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_compiled_loops_run_in_a_forked_worker_after_the_parent_used_them() -> None:
    import multiprocessing

    x = torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # NOTE: the parent's thread pool exists before the fork
    child = None
    try:
        expected = corrupt(x, "brightness", 3, seed=[1, 2, 3, 4])
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        child = ctx.Process(target=_corrupt_in_child, args=(x, queue))
        child.start()
        np.testing.assert_array_equal(queue.get(timeout=60), expected.numpy())  # NOTE: a stale pool hangs here
        child.join(timeout=30)
    finally:
        torch.set_num_threads(threads)
        if child is not None and child.is_alive():
            child.kill()
