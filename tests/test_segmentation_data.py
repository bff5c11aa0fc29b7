"""Segmentation data: protocol facts, the official test pipeline, Cityscapes / Cityscapes-C / ACDC readers and the
synthetic street set, end to end on small trees written by the synthetic writers."""

from __future__ import annotations

import json
import pickle
import shutil
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from attnprobe import protocol
from attnprobe.data.acdc import ACDCDataset, PredictionWriter, acdc_cells, check_conditions, zip_predictions
from attnprobe.data.cityscapes import (CityscapesDataset, EngineBackend, OnTheFlyCityscapesC, cityscapes_c_cells,
                                       imagecorruptions_backend, on_the_fly_cityscapes_c_cells, scan_cityscapes,
                                       select_cityscapes_c, write_cityscapes_c_tree)
from attnprobe.data.seg_transforms import (SegTestPipeline, label_id_lut, normalize_on_device, rescale_size,
                                           resize_uint8)
from attnprobe.data.synthetic_seg import (ACDC_SIZE, CLASSES, DEMO_PIPELINE, SyntheticStreets, render_scene,
                                          write_acdc_tree, write_cityscapes_tree)
from attnprobe.errors import UserError
from tests.conftest import REFERENCE

SEG = REFERENCE / "segmentation"
needs_reference = pytest.mark.skipif(not (SEG / "seg_protocol.json").exists(), reason="reference data not found")


@pytest.fixture(scope="module")
def cs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cityscapes_tree(tmp_path_factory.mktemp("cs") / "cityscapes", num_train=4, num_val=6)


@pytest.fixture(scope="module")
def acdc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_acdc_tree(tmp_path_factory.mktemp("acdc") / "acdc", {"val": 3, "test": 2})


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------------------------------------------------------
# protocol facts
# ---------------------------------------------------------------------------------------------------------------
@needs_reference
def test_protocol_facts_agree_with_reference() -> None:
    ref = json.loads((SEG / "seg_protocol.json").read_text())
    assert protocol.cityscapes_classes() == ref["cityscapes"]["train_classes"]
    assert protocol.cityscapes_label_id_to_train_id() == {int(k): v for k, v in
                                                          ref["cityscapes"]["labelId_to_trainId"].items()}
    evaluated = ref["cityscapes_c"]["evaluated_corruptions"]
    assert {g: sorted(v) for g, v in protocol.cityscapes_c_groups().items()} == {g: sorted(evaluated[g])
                                                                                 for g in evaluated if g != "source"}
    assert protocol.cityscapes_c_generated_corruptions() == ref["cityscapes_c"]["corruptions_generated"]
    assert protocol.acdc_conditions() == ref["acdc"]["conditions"]
    paper = protocol.segmentation_paper_numbers()
    assert paper["table4"]["rows"] == ref["paper_numbers"]["table4_main_paper"]["rows"]
    assert paper["table_IV"]["rows"] == ref["paper_numbers"]["table_IV_supplementary"]["rows"]
    assert paper["table_V"]["rows"] == ref["paper_numbers"]["table_V_supplementary"]["rows"]
    for name in ("cityscapes", "cityscapes_c", "acdc", "segmentation_paper_numbers"):
        assert "TAPADL" in protocol.load(name)["_source"]


def test_protocol_accessors() -> None:
    assert len(protocol.cityscapes_class_names()) == 19 and protocol.cityscapes_class_names()[13] == "car"
    assert protocol.cityscapes_palette()[0] == (128, 64, 128)
    names = protocol.cityscapes_c_corruptions()
    assert len(names) == 16 and names[:4] == ["motion_blur", "defocus_blur", "glass_blur", "gaussian_blur"]
    assert protocol.cityscapes_c_severities("shot_noise") == [1, 2, 3]
    assert protocol.cityscapes_c_severities("fog") == [1, 2, 3, 4, 5]
    assert sum(len(protocol.cityscapes_c_severities(c)) for c in names) == 72
    with pytest.raises(KeyError):
        protocol.cityscapes_c_group("zoom_blur")
    lut = label_id_lut()
    assert lut[7] == 0 and lut[33] == 18 and lut[0] == 255 and lut[29] == 255 and lut[200] == 255


# ---------------------------------------------------------------------------------------------------------------
# the test pipeline
# ---------------------------------------------------------------------------------------------------------------
def test_rescale_size_matches_the_measured_official_sizes() -> None:
    assert rescale_size(1024, 2048) == (1024, 2048)  # Cityscapes: unchanged
    assert rescale_size(1080, 1920) == (1024, 1820)  # ACDC, measured with the official pipeline
    assert rescale_size(2048, 1024) == (2048, 1024)  # portrait: (long, short) bounds, not (w, h)
    assert rescale_size(512, 1024) == (1024, 2048)  # upscaled to fit
    assert DEMO_PIPELINE.output_size(*ACDC_SIZE) == (64, 114)


@needs_reference
def test_normalisation_is_bit_identical_to_mmcv() -> None:
    fix = torch.load(SEG / "seg_tap_fan_hybrid_small.pt", weights_only=True)
    for img, want in ((fix["image_rgb_uint8"], fix["input"]), (fix["image_wide_rgb_uint8"], fix["input_wide"])):
        rgb = torch.as_tensor(np.asarray(img)).permute(2, 0, 1)
        assert torch.equal(SegTestPipeline().normalize(rgb), want[0])
        bgr = np.ascontiguousarray(np.asarray(img)[..., ::-1])
        assert torch.equal(SegTestPipeline(scale=tuple(rgb.shape[1:][::-1]))(bgr), want[0])  # no resize at this size


def test_pipeline_resize_is_opencv_and_torch_resize_within_one_level() -> None:
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, (108, 192, 3), dtype=np.uint8)
    pipe = SegTestPipeline(scale=(204, 102))  # 1/10 of the real bounds: 108 x 192 -> 102 x 181
    out = pipe.resize(bgr)
    assert out.shape == (102, 181, 3)
    assert np.array_equal(out, cv2.resize(bgr, (181, 102), interpolation=cv2.INTER_LINEAR))
    torch_out = resize_uint8(torch.from_numpy(bgr).permute(2, 0, 1)[None], (102, 181))[0].permute(1, 2, 0).numpy()
    assert np.abs(torch_out.astype(int) - out).max() <= 1
    same = torch.from_numpy(bgr).permute(2, 0, 1)[None]
    assert resize_uint8(same, (108, 192)) is same  # identity (the Cityscapes case)
    assert pipe.resize(cv2.resize(bgr, (204, 102))).shape == (102, 204, 3)


# ---------------------------------------------------------------------------------------------------------------
# Cityscapes
# ---------------------------------------------------------------------------------------------------------------
def test_cityscapes_reader_end_to_end(cs_root: Path) -> None:
    ds = CityscapesDataset(cs_root, pipeline=DEMO_PIPELINE)
    assert len(ds) == 6
    names = [s.image for s in ds.samples]
    assert names == sorted(names) and names[0].startswith("pixelton/pixelton_000000_000000")
    syn = SyntheticStreets("val", 6)
    for i, s in enumerate(ds.samples):
        x, label, ok = ds[i]
        index = int(s.image.split("_")[-2])
        rgb, want = syn[index]
        assert ok and x.dtype == torch.float32 and x.shape == (3, 64, 128)
        assert label.dtype == torch.uint8 and torch.equal(label, torch.from_numpy(want))
        assert torch.equal(x, normalize_on_device(torch.from_numpy(rgb).permute(2, 0, 1)))  # PNG is lossless
    assert set(np.unique(np.concatenate([ds[i][1].numpy().ravel() for i in range(6)]))) <= set(CLASSES) | {255}
    assert ds.sample_name(0).endswith("_leftImg8bit.png") and ds.has_labels


def test_cityscapes_official_pipeline_shape(cs_root: Path) -> None:
    x, label, ok = CityscapesDataset(cs_root, limit=1)[0]
    assert x.shape == (3, 1024, 2048) and label.shape == (64, 128) and ok  # resized to fit 2048 x 1024


def test_output_modes_agree(cs_root: Path) -> None:
    norm = CityscapesDataset(cs_root, pipeline=DEMO_PIPELINE)[2][0]
    u8 = CityscapesDataset(cs_root, pipeline=DEMO_PIPELINE, output="uint8")[2][0]
    native = CityscapesDataset(cs_root, pipeline=SegTestPipeline(), output="native")[2][0]
    assert u8.dtype == torch.uint8 and torch.equal(normalize_on_device(u8), norm)
    assert native.shape == (3, 64, 128) and torch.equal(native, u8)
    with pytest.raises(ValueError):
        CityscapesDataset(cs_root, output="float16")


def test_limit_and_fingerprint(cs_root: Path) -> None:
    full = CityscapesDataset(cs_root)
    sub = CityscapesDataset(cs_root, limit=3)
    assert [s.image for s in sub.samples] == [full.samples[i].image for i in (0, 2, 4)]
    assert full.fingerprint == CityscapesDataset(cs_root).fingerprint
    assert sub.fingerprint != full.fingerprint and full.fingerprint.startswith("cityscapes_val:")
    train = CityscapesDataset(cs_root, split="train")
    assert len(train) == 4 and train.fingerprint != full.fingerprint
    assert pickle.loads(pickle.dumps(sub)).fingerprint == sub.fingerprint  # workers under spawn


def test_label_ids_are_converted(cs_root: Path, tmp_path: Path) -> None:
    ids_root = write_cityscapes_tree(tmp_path / "ids", num_train=0, num_val=6, label_format="labelIds")
    a, b = CityscapesDataset(cs_root, pipeline=DEMO_PIPELINE), CityscapesDataset(ids_root, pipeline=DEMO_PIPELINE)
    assert all(s.label_ids for s in b.samples) and not any(s.label_ids for s in a.samples)
    for i in range(len(a)):
        assert torch.equal(a[i][1], b[i][1])
    both = write_cityscapes_tree(tmp_path / "both", num_train=0, num_val=2, label_format="both")
    assert not any(s.label_ids for s in scan_cityscapes(both))  # trainIds preferred


def test_cityscapes_layout_errors(cs_root: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        scan_cityscapes(tmp_path / "nope")
    with pytest.raises(UserError, match="leftImg8bit"):
        scan_cityscapes(cs_root / "gtFine")
    with pytest.raises(UserError, match="unknown Cityscapes split"):
        scan_cityscapes(cs_root, "test")
    no_gt = _copy(cs_root, tmp_path / "no_gt")
    shutil.rmtree(no_gt / "gtFine")
    with pytest.raises(UserError, match="missing .*gtFine.*gtFine_trainvaltest.zip"):
        scan_cityscapes(no_gt)


def test_images_without_labels_and_labels_without_images(cs_root: Path, tmp_path: Path) -> None:
    root = _copy(cs_root, tmp_path / "lonely_img")
    labels = sorted((root / "gtFine" / "val").rglob("*_gtFine_labelTrainIds.png"))
    for p in labels[:4]:
        p.unlink()
    with pytest.raises(UserError, match=r"4 image\(s\) have no label map \(.*_leftImg8bit.png, .* and 1 more\)"):
        scan_cityscapes(root)
    root = _copy(cs_root, tmp_path / "lonely_label")
    next((root / "leftImg8bit" / "val").rglob("*.png")).unlink()
    with pytest.raises(UserError, match=r"1 label map\(s\) have no image \(.*labelTrainIds.png\)"):
        scan_cityscapes(root)


def test_label_of_another_size_and_colour_labels_are_refused(cs_root: Path, tmp_path: Path) -> None:
    root = _copy(cs_root, tmp_path / "size")
    p = sorted((root / "gtFine" / "val").rglob("*_gtFine_labelTrainIds.png"))[1]
    Image.fromarray(np.zeros((32, 64), np.uint8)).save(p)
    with pytest.raises(UserError, match="is 64x32 but its image .* is 128x64"):
        scan_cityscapes(root)
    Image.fromarray(np.zeros((64, 128, 3), np.uint8)).save(p)
    with pytest.raises(UserError, match="RGB image; expected an 8-bit trainId PNG"):
        scan_cityscapes(root)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "label"])
def test_unreadable_files_give_ok_false_with_right_shapes(cs_root: Path, tmp_path: Path, damage: str) -> None:
    root = _copy(cs_root, tmp_path / damage)
    ds0 = CityscapesDataset(root, pipeline=DEMO_PIPELINE)
    s = ds0.samples[3]
    target = (root / "gtFine" / "val" / s.label) if damage == "label" else ds0.image_root / s.image
    data = target.read_bytes()
    target.write_bytes(b"not a png at all" if damage == "garbage" else data[: len(data) // 2])
    ds = CityscapesDataset(root, pipeline=DEMO_PIPELINE)  # building the dataset does not fail
    x, label, ok = ds[3]
    assert not ok and x.shape == (3, 64, 128) and not x.any() and (label == 255).all() and label.shape == (64, 128)
    assert ds[2][2] and ds[4][2]  # the neighbours are fine
    batch = torch.utils.data.default_collate([ds[2], ds[3]])  # stacks with readable samples
    assert batch[2].tolist() == [True, False]


# ---------------------------------------------------------------------------------------------------------------
# Cityscapes-C
# ---------------------------------------------------------------------------------------------------------------
def test_selection_defaults_and_errors() -> None:
    cells = select_cityscapes_c()
    assert len(cells) == 72 and cells[0] == ("motion_blur", 1) and ("gaussian_noise", 4) not in cells
    assert select_cityscapes_c(["pixelate"], [2]) == [("pixelate", 2)]
    with pytest.raises(UserError, match="corruption 'gausian_noise'.*did you mean 'gaussian_noise'"):
        select_cityscapes_c(["gausian_noise"])
    with pytest.raises(UserError, match="severity 6"):
        select_cityscapes_c(["fog"], [6])


def test_on_the_fly_is_deterministic_and_corrupts_bgr(cs_root: Path) -> None:
    samples = scan_cityscapes(cs_root)
    a = OnTheFlyCityscapesC(cs_root, "gaussian_noise", 2, samples=samples, pipeline=DEMO_PIPELINE, output="uint8")
    b = OnTheFlyCityscapesC(cs_root, "gaussian_noise", 2, samples=samples, pipeline=DEMO_PIPELINE, output="uint8")
    clean = CityscapesDataset(cs_root, samples=samples, pipeline=DEMO_PIPELINE, output="uint8")
    assert torch.equal(a[0][0], b[0][0]) and not torch.equal(a[0][0], clean[0][0])
    assert torch.equal(a[0][1], clean[0][1])  # labels untouched
    assert a.seed(0) != a.seed(1) and a.seed(0) == b.seed(0)
    assert OnTheFlyCityscapesC(cs_root, "gaussian_noise", 2, samples=samples, base_seed=1).seed(0) != a.seed(0)
    # the default backend (the engine, recipe imagecorruptions) gets the BGR array, as the official generator did
    bgr = a.load_image(0)
    want = EngineBackend("torch", "imagecorruptions")(bgr, "gaussian_noise", 2, a.seed(0))
    assert torch.equal(a[0][0], torch.from_numpy(np.ascontiguousarray(want[..., ::-1].transpose(2, 0, 1))))
    assert a.backend_name == "torch-v2/imagecorruptions"
    # the reference backend is the imagecorruptions package on the same BGR array; its pixels are another dataset
    ref = OnTheFlyCityscapesC(cs_root, "gaussian_noise", 2, samples=samples, backend="reference",
                              pipeline=DEMO_PIPELINE, output="uint8")
    want = imagecorruptions_backend(bgr, "gaussian_noise", 2, a.seed(0))
    assert torch.equal(ref[0][0], torch.from_numpy(np.ascontiguousarray(want[..., ::-1].transpose(2, 0, 1))))
    assert ref.fingerprint != a.fingerprint and ref.backend_name.startswith("reference-imagecorruptions")
    imagenet_c = OnTheFlyCityscapesC(cs_root, "gaussian_noise", 2, samples=samples, recipe="imagenet-c")
    assert imagenet_c.fingerprint not in (a.fingerprint, ref.fingerprint)
    with pytest.raises(UserError, match="only has the 'imagecorruptions' recipe"):
        OnTheFlyCityscapesC(cs_root, "gaussian_noise", 2, backend="reference", recipe="imagenet-c")


def test_on_the_fly_backend_is_pluggable(cs_root: Path) -> None:
    calls: list[tuple[tuple[int, ...], str, int, int]] = []

    def invert(bgr: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
        calls.append((bgr.shape, name, severity, seed))
        return 255 - bgr

    ds = OnTheFlyCityscapesC(cs_root, "fog", 5, backend=invert, pipeline=DEMO_PIPELINE, output="uint8")
    clean = CityscapesDataset(cs_root, pipeline=DEMO_PIPELINE, output="uint8")
    assert torch.equal(ds[1][0], 255 - clean[1][0])
    assert calls == [((64, 128, 3), "fog", 5, ds.seed(1))]
    assert ds.fingerprint != OnTheFlyCityscapesC(cs_root, "fog", 5).fingerprint  # backend is in the fingerprint
    bad = OnTheFlyCityscapesC(cs_root, "fog", 5, backend=lambda b, n, s, seed: b[:10])
    with pytest.raises(RuntimeError, match="keep the size"):
        bad[0]
    with pytest.raises(UserError, match="unknown corruption backend"):
        OnTheFlyCityscapesC(cs_root, "fog", 5, backend="cuda-magic")


def test_generated_tree_reads_back_as_the_on_the_fly_pixels(cs_root: Path, tmp_path: Path) -> None:
    sel = (["gaussian_noise", "brightness"], [1, 3])
    tree = write_cityscapes_c_tree(cs_root, tmp_path / "csc", *sel, limit=4)
    assert (tree / "gaussian_noise" / "3").is_dir() and (tree / "clean").is_dir()
    assert len(list((tree / "gtFine" / "val").rglob("*_gtFine_labelTrainIds.png"))) == 4
    released = cityscapes_c_cells(tree, *sel, pipeline=DEMO_PIPELINE)
    fly = on_the_fly_cityscapes_c_cells(cs_root, *sel, pipeline=DEMO_PIPELINE, limit=4)
    assert [(c.corruption, c.severity) for c in released] == [(c.corruption, c.severity) for c in fly]
    for r, f in zip(released, fly):
        assert len(r.dataset) == len(f.dataset) == 4
        for i in range(4):
            assert torch.equal(r.dataset[i][0], f.dataset[i][0]) and torch.equal(r.dataset[i][1], f.dataset[i][1])
    assert len({c.dataset.fingerprint for c in released}) == 1  # one id per tree; the cell is in the store key
    # resumable: a second call keeps what is there; a foreign folder is refused
    before = {p: p.stat().st_mtime_ns for p in tree.rglob("*.png")}
    write_cityscapes_c_tree(cs_root, tree, *sel, limit=4)
    assert {p: p.stat().st_mtime_ns for p in tree.rglob("*.png")} == before
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("x")
    with pytest.raises(UserError, match="not written by attnprobe"):
        write_cityscapes_c_tree(cs_root, foreign, ["fog"], [1])


def test_tree_layout_errors_and_separate_labels(cs_root: Path, tmp_path: Path) -> None:
    tree = write_cityscapes_c_tree(cs_root, tmp_path / "csc", ["fog"], [1, 2], limit=2, clean=False)
    with pytest.raises(UserError, match="missing .*fog/3"):
        cityscapes_c_cells(tree, ["fog"], [3])
    with pytest.raises(UserError, match="unknown Cityscapes-C corruption"):
        cityscapes_c_cells(tree, ["fogg"])
    with pytest.raises(UserError, match="does not exist"):
        cityscapes_c_cells(tmp_path / "nope")
    shutil.rmtree(tree / "gtFine")
    with pytest.raises(UserError, match="no gtFine/val .*--gt"):
        cityscapes_c_cells(tree, ["fog"], [1])
    with pytest.raises(UserError, match=r"4 label map\(s\) have no image"):  # labels of all 6, images of 2
        cityscapes_c_cells(tree, ["fog"], [1], gt_root=cs_root)
    # a cell missing one image is reported by name
    full = write_cityscapes_c_tree(cs_root, tmp_path / "full", ["fog"], [1], clean=False)
    next((full / "fog" / "1").rglob("*.png")).unlink()
    with pytest.raises(UserError, match=r"Cityscapes-C fog/1: 1 label map\(s\) have no image"):
        cityscapes_c_cells(full, ["fog"], [1])


# ---------------------------------------------------------------------------------------------------------------
# ACDC
# ---------------------------------------------------------------------------------------------------------------
def test_acdc_val_and_test(acdc_root: Path) -> None:
    val = acdc_cells(acdc_root, pipeline=DEMO_PIPELINE)
    assert [c.condition for c in val] == ["fog", "night", "rain", "snow"]
    ds = val[1].dataset
    x, label, ok = ds[0]
    assert ok and x.shape == (3, 64, 114) and label.shape == ACDC_SIZE  # 1080x1920 -> 1024x1820, scaled by 1/20
    assert ds.has_labels and set(label.unique().tolist()) <= set(CLASSES) | {255}
    syn = SyntheticStreets("val", 3, *ACDC_SIZE, seed=1, condition="night")
    assert torch.equal(label, torch.from_numpy(syn[0][1]))
    test = acdc_cells(acdc_root, ["snow"], split="test", pipeline=DEMO_PIPELINE)[0].dataset
    x, label, ok = test[1]
    assert ok and not test.has_labels and (label == 255).all() and label.shape == ACDC_SIZE
    assert test.prediction_name(1).startswith("snow/test/GOPR03") and test.prediction_name(1).endswith("_rgb_anon.png")
    assert len({c.dataset.fingerprint for c in val}) == 4


def test_acdc_release_zip_layout_and_errors(acdc_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "zips"
    shutil.copytree(acdc_root / "rgb_anon", root / "rgb_anon_trainvaltest" / "rgb_anon")
    shutil.copytree(acdc_root / "gt", root / "gt_trainval" / "gt")
    assert len(ACDCDataset(root, "fog")) == 3
    with pytest.raises(UserError, match="unknown ACDC condition 'nigth'.*did you mean 'night'"):
        check_conditions(["nigth"])
    with pytest.raises(UserError, match="unknown ACDC condition"):
        ACDCDataset(root, "sandstorm")
    with pytest.raises(UserError, match="not an ACDC root"):
        ACDCDataset(tmp_path, "fog")
    with pytest.raises(UserError, match="unknown ACDC split"):
        ACDCDataset(root, "fog", "dev")
    shutil.rmtree(root / "gt_trainval")
    with pytest.raises(UserError, match="missing the labels gt/fog/val"):
        ACDCDataset(root, "fog")
    assert len(ACDCDataset(root, "fog", "test")) == 2  # test needs no labels


def test_prediction_writer(acdc_root: Path, tmp_path: Path) -> None:
    ds = ACDCDataset(acdc_root, "rain", "test", pipeline=DEMO_PIPELINE)
    pred = torch.randint(0, 19, ACDC_SIZE)
    pred[0, 0] = 255
    out = tmp_path / "preds"
    with PredictionWriter(out) as w:
        path = w.write(ds.prediction_name(0), pred, expected_size=ds.native_size(0))
        assert w.exists(ds.prediction_name(0))
        with pytest.raises(ValueError, match="resize the logits"):
            w.write(ds.prediction_name(1), pred[:10], expected_size=ds.native_size(1))
        with pytest.raises(ValueError, match="outside the 19 trainIds"):
            w.write(ds.prediction_name(1), pred + 100)
    assert path.parent == out and path.name == Path(ds.samples[0].image).name  # flat, named like the image
    with Image.open(path) as im:
        assert im.mode == "L" and im.size == (96, 54)
        assert torch.equal(torch.from_numpy(np.array(im)), pred.to(torch.uint8))
    ids = PredictionWriter(tmp_path / "ids", encoding="labelIds", layout="tree")
    p2 = ids.write(ds.prediction_name(0), pred)
    assert p2 == tmp_path / "ids" / ds.prediction_name(0)
    want = np.array([c["labelId"] for c in protocol.cityscapes_classes()] + [0] * 237, np.uint8)[pred.numpy()]
    want[0, 0] = 0
    assert np.array_equal(np.array(Image.open(p2)), want)
    PredictionWriter(out)  # our own folder: accepted again (resume)
    z = zip_predictions(out, tmp_path / "acdc.zip")
    assert zipfile.ZipFile(z).namelist() == [path.name]
    with pytest.raises(UserError, match="already exists"):
        zip_predictions(out, z)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="not written by attnprobe"):
        PredictionWriter(tmp_path / "mine")


# ---------------------------------------------------------------------------------------------------------------
# synthetic set
# ---------------------------------------------------------------------------------------------------------------
def test_synthetic_streets_is_deterministic_and_varied() -> None:
    a, la = render_scene(0, "val", 5)
    b, lb = render_scene(0, "val", 5)
    c, _ = render_scene(0, "train", 5)
    assert np.array_equal(a, b) and np.array_equal(la, lb) and not np.array_equal(a, c)
    assert a.shape == (64, 128, 3) and a.dtype == np.uint8 and la.dtype == np.uint8
    _, labels = SyntheticStreets("train", 40).arrays()
    present = set(np.unique(labels).tolist())
    assert present == set(CLASSES) | {255}
    assert 0.2 < (labels == 0).mean() + (labels == 1).mean() < 0.6  # ground covers a fair share
    fog = SyntheticStreets("val", 2, *ACDC_SIZE, condition="fog")
    assert fog.fingerprint != SyntheticStreets("val", 2, *ACDC_SIZE).fingerprint
    with pytest.raises(UserError):
        SyntheticStreets("val", 2, condition="hail")
    with pytest.raises(UserError):
        SyntheticStreets("dev")
    with pytest.raises(UserError, match="not empty"):
        write_cityscapes_tree(Path(__file__).parent, 1, 1)


# ---------------------------------------------------------------------------------------------------------------
# with the evaluation engine: chunked, resumed, with a skipped sample = one pass over the readable samples
# ---------------------------------------------------------------------------------------------------------------
def test_engine_chunked_run_gives_the_single_pass_miou(cs_root: Path, tmp_path: Path) -> None:
    from attnprobe.engine import CellSpec, Scorer, run_cells
    from attnprobe.segmentation import IoUAccumulator, area_fields, areas_to_fields, batch_areas, mean_iou
    from attnprobe.store import CellKey, ResultsStore

    root = _copy(cs_root, tmp_path / "cs")
    ds = CityscapesDataset(root, pipeline=SegTestPipeline(scale=(96, 48)))  # 64x128 -> 48x96: logits are resized
    (ds.image_root / ds.samples[4].image).write_bytes(b"broken")
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 19, 1).eval()

    def score(m: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = torch.nn.functional.interpolate(m(x), size=y.shape[-2:], mode="bilinear", align_corners=False)
        return areas_to_fields(batch_areas(logits.argmax(1), y).sum(0))

    key = CellKey(model="conv", checkpoint_sha256="0", task="cityscapes", dataset=ds.fingerprint,
                  preprocessing=ds.preprocessing_key(), condition="clean")
    spec = CellSpec(key, ds)
    with ResultsStore(tmp_path / "store") as store:
        [res] = run_cells(model, [spec], store, batch_size=2, workers=0, chunk_size=3,
                          scorer=Scorer(score, area_fields(19)))
    with ResultsStore(tmp_path / "store") as store:  # a rerun reads everything back, computes nothing
        [again] = run_cells(model, [spec], store, batch_size=2, workers=0, chunk_size=3,
                            scorer=Scorer(score, area_fields(19)))
    assert res.skipped == 1 and res.n == 5 and again.cached
    with torch.no_grad():
        preds, gts = [], []
        for i in range(len(ds)):
            x, y, ok = ds[i]
            if ok:
                logits = torch.nn.functional.interpolate(model(x[None]), size=y.shape, mode="bilinear",
                                                         align_corners=False)
                preds.append(logits.argmax(1)[0])
                gts.append(y)
    single = mean_iou(preds, gts)
    for r in (res, again):
        got = IoUAccumulator.from_fields(r.extra).compute()
        np.testing.assert_array_equal(got["iou"], single["iou"])
        assert got["miou"] == single["miou"] and got["summary"] == single["summary"]
