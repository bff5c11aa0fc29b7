"""The segmentation benchmark driver (`attnprobe.benchmarks.segmentation`) on tiny synthetic Cityscapes / ACDC trees:
chunked, resumed and cached runs equal a direct single pass, the store key records the protocol and the data source,
test predictions for the server, kept predictions, the official Cityscapes-C averages."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attnprobe.benchmarks.seg_outputs import read_seg_prediction
from attnprobe.benchmarks.seg_protocol import SegProtocol
from attnprobe.benchmarks.segmentation import (
    check_segmentation_inputs,
    evaluate_segmentation,
    segmentation_cells_from_store,
)
from attnprobe.data.cityscapes import CityscapesDataset, write_cityscapes_c_tree
from attnprobe.data.synthetic_seg import DEMO_PIPELINE, write_acdc_tree, write_cityscapes_tree
from attnprobe.errors import UserError
from attnprobe.segmentation import mean_iou
from attnprobe.store import ResultsStore
from tests.seg_fixtures import direct_predictions, loaded_tiny

RUN = {"workers": 0, "batch_size": 2, "chunk_size": 2}


@pytest.fixture(scope="module")
def cs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cityscapes_tree(tmp_path_factory.mktemp("cs") / "cityscapes", num_train=2, num_val=5)


@pytest.fixture(scope="module")
def acdc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_acdc_tree(tmp_path_factory.mktemp("acdc") / "acdc", {"val": 3, "test": 3})


def test_clean_cityscapes_equals_a_direct_single_pass(cs_root: Path, tmp_path: Path) -> None:
    loaded = loaded_tiny(0)
    inputs = check_segmentation_inputs("cityscapes", cs_root)
    with ResultsStore(tmp_path / "out") as store:
        rep = evaluate_segmentation(loaded, store, inputs, **RUN)
    with ResultsStore(tmp_path / "out") as store:
        again = evaluate_segmentation(loaded, store, inputs, **RUN)
    memory = evaluate_segmentation(loaded, None, inputs, keep=0, workers=0, batch_size=5, chunk_size=1000)
    preds, gts = direct_predictions(loaded.model, CityscapesDataset(cs_root, pipeline=DEMO_PIPELINE))
    want = mean_iou(preds, gts)
    assert want["n_classes"] >= 3  # the stand-in model predicts several classes: a real test
    for r in (rep, again, memory):
        [cell] = r.cells
        assert cell.n == 5 and cell.skipped == 0 and cell.condition == "clean"
        np.testing.assert_array_equal(cell.metrics["iou"], want["iou"])
        assert r.miou == want["miou"] and cell.metrics["aacc"] == want["aacc"] and cell.metrics["macc"] == want["macc"]
    assert again.cells[0].cached and not rep.cells[0].cached
    d = rep.as_dict()
    assert d["miou"] == want["miou"] and d["iou"]["road"] == pytest.approx(want["iou"][0], nan_ok=True)
    assert d["source"].startswith("Cityscapes val at") and d["images_per_cell"] == 5
    assert "slide:crop=48x48:stride=32x32" in d["preprocessing"] and "rescale128x64" in d["preprocessing"]


def test_chunked_run_with_an_unreadable_image(cs_root: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "cs"
    shutil.copytree(cs_root, root)
    ds = CityscapesDataset(root, pipeline=DEMO_PIPELINE)
    (ds.image_root / ds.samples[3].image).write_bytes(b"not a png")
    loaded = loaded_tiny(1)
    inputs = check_segmentation_inputs("cityscapes", root)
    rep = evaluate_segmentation(loaded, None, inputs, keep=0, workers=0, batch_size=2, chunk_size=2)
    preds, gts = direct_predictions(loaded.model, ds)
    assert rep.cells[0].n == 4 and rep.cells[0].skipped == 1 and len(preds) == 4
    np.testing.assert_array_equal(rep.cells[0].metrics["iou"], mean_iou(preds, gts)["iou"])
    with pytest.raises(UserError, match="unreadable"):
        evaluate_segmentation(loaded, None, inputs, keep=0, workers=0, batch_size=2, strict=True)


def test_store_key_keeps_protocols_and_sources_apart(cs_root: Path, tmp_path: Path) -> None:
    loaded = loaded_tiny(0)
    inputs = check_segmentation_inputs("cityscapes", cs_root)
    whole = SegProtocol(pipeline=DEMO_PIPELINE, mode="whole", crop=None, stride=None)
    with ResultsStore(tmp_path / "out") as store:
        slide = evaluate_segmentation(loaded, store, inputs, keep=0, **RUN)
        other = evaluate_segmentation(loaded, store, inputs, keep=0, protocol=whole, **RUN)
        assert not other.cells[0].cached and other.preprocessing != slide.preprocessing
        assert "|infer=whole:" in other.preprocessing
        rows = segmentation_cells_from_store(store, task="cityscapes")
        assert len(rows) == 2 and {r["metrics"]["miou"] for r in rows} == {slide.miou, other.miou}
        assert rows[0]["info"]["source_text"].startswith("Cityscapes val")


def test_cityscapes_c_on_the_fly_equals_its_written_tree(cs_root: Path, tmp_path: Path) -> None:
    loaded = loaded_tiny(0)
    sel = {"corruptions": ["gaussian_noise", "fog"], "severities": [1, 3]}
    otf = check_segmentation_inputs("cityscapes-c", cs_root, on_the_fly=True, **sel)
    tree = write_cityscapes_c_tree(cs_root, tmp_path / "csc", sel["corruptions"], sel["severities"], clean=False)
    released = check_segmentation_inputs("cityscapes-c", tree, **sel)
    with ResultsStore(tmp_path / "out") as store:
        a = evaluate_segmentation(loaded, store, otf, **RUN)
        b = evaluate_segmentation(loaded, store, released, **RUN)
    assert [(c.condition, c.severity) for c in a.cells] == [("gaussian_noise", 1), ("gaussian_noise", 3),
                                                            ("fog", 1), ("fog", 3)]
    for x, y in zip(a.cells, b.cells):  # lossless PNG: the same pixels, the same numbers; other store cells
        np.testing.assert_array_equal(x.metrics["iou"], y.metrics["iou"])
        assert x.dataset != y.dataset and not y.cached
    assert len({c.metrics["miou"] for c in a.cells}) > 1  # corruptions change the predictions
    assert "on the fly" in a.source and "imagecorruptions backend" in a.source and "tree" in b.source
    s = a.summary
    assert not s["complete"] and a.miou is None and s["corruptions"]["fog"] is None  # partial: no average
    d = a.as_dict()
    assert [c["corruption"] for c in d["cells"]][:2] == ["gaussian_noise", "gaussian_noise"] and d["miou"] is None
    assert any("other random draws" in n for n in a.notes)


def cheap_corruption(bgr: np.ndarray, corruption: str, severity: int, seed: int) -> np.ndarray:
    """A fast stand-in corruption backend (imagecorruptions' glass blur takes seconds even on 64 x 128)."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 12 * severity, bgr.shape) + (len(corruption) - 10) * 4
    return np.clip(bgr + noise, 0, 255).astype(np.uint8)


def test_full_cityscapes_c_gives_the_official_average(cs_root: Path) -> None:
    from attnprobe.segmentation import cityscapes_c_summary, official_round

    inputs = check_segmentation_inputs("cityscapes-c", cs_root, on_the_fly=True, backend=cheap_corruption)
    assert "cheap_corruption backend" in inputs.source
    rep = evaluate_segmentation(loaded_tiny(0), None, inputs, limit=1, keep=0, workers=0, batch_size=1)
    assert len(rep.cells) == 72 and all(c.n == 1 for c in rep.cells)
    per = {(c.condition, c.severity): c.miou for c in rep.cells}
    want = np.mean([np.mean([official_round(per[(c, s)]) for s in ((1, 2, 3) if "noise" in c else (1, 2, 3, 4, 5))])
                    for c in {k[0] for k in per}])
    assert rep.miou == pytest.approx(want, abs=1e-12) and rep.summary == cityscapes_c_summary(per)
    assert rep.summary["complete"] and set(rep.summary["groups"]) == {"blur", "noise", "digital", "weather"}


def test_acdc_val_scores_each_condition(acdc_root: Path, tmp_path: Path) -> None:
    loaded = loaded_tiny(0)
    inputs = check_segmentation_inputs("acdc", acdc_root)
    rep = evaluate_segmentation(loaded, None, inputs, keep=0, **RUN)
    assert [c.condition for c in rep.cells] == ["fog", "night", "rain", "snow"] and all(c.n == 3 for c in rep.cells)
    from attnprobe.data.acdc import ACDCDataset

    for cell in rep.cells:
        preds, gts = direct_predictions(loaded.model, ACDCDataset(acdc_root, cell.condition, pipeline=DEMO_PIPELINE))
        assert preds[0].shape == (54, 96)  # predicted at the label size (input 64 x 114, logits resized back)
        np.testing.assert_array_equal(cell.metrics["iou"], mean_iou(preds, gts)["iou"])
    assert rep.miou == pytest.approx(np.mean([c.miou for c in rep.cells]))
    assert rep.summary["pooled"] is not None and any("test-server" in n for n in rep.notes)
    one = check_segmentation_inputs("acdc", acdc_root, conditions=["night"])
    assert evaluate_segmentation(loaded, None, one, keep=0, **RUN).miou is None  # partial: no average


def test_acdc_test_split_writes_server_predictions(acdc_root: Path, tmp_path: Path) -> None:
    loaded = loaded_tiny(0)
    inputs = check_segmentation_inputs("acdc", acdc_root, conditions=["fog", "snow"], split="test")
    with ResultsStore(tmp_path / "out") as store:
        rep = evaluate_segmentation(loaded, store, inputs, **RUN)
    assert rep.task == "acdc_test" and rep.miou is None and [c.predictions for c in rep.cells] == [3, 3]
    files = sorted(Path(rep.predictions_dir).glob("*.png"))
    assert len(files) == 6 and all(f.name.endswith("_rgb_anon.png") for f in files)
    from attnprobe.data.acdc import ACDCDataset

    ds = ACDCDataset(acdc_root, "fog", "test", pipeline=DEMO_PIPELINE)
    preds, _ = direct_predictions(loaded.model, ds)
    got = np.array(Image.open(Path(rep.predictions_dir) / Path(ds.prediction_name(0)).name))
    assert got.shape == (54, 96) and np.array_equal(got, preds[0].numpy())
    with zipfile.ZipFile(rep.predictions_zip) as zf:
        assert sorted(zf.namelist()) == [f.name for f in files]
    stamp = Path(rep.predictions_zip).stat().st_mtime_ns
    with ResultsStore(tmp_path / "out") as store:
        again = evaluate_segmentation(loaded, store, inputs, **RUN)
    assert all(c.cached for c in again.cells) and Path(again.predictions_zip).stat().st_mtime_ns == stamp


def test_kept_predictions_are_the_same_images_for_every_model(cs_root: Path, tmp_path: Path) -> None:
    inputs = check_segmentation_inputs("cityscapes", cs_root)
    ds = CityscapesDataset(cs_root, pipeline=DEMO_PIPELINE)
    with ResultsStore(tmp_path / "out") as store:
        for seed in (0, 1):
            rep = evaluate_segmentation(loaded_tiny(seed), store, inputs, keep=2, **RUN)
            assert len(rep.kept) == 2
        arts = store.artifacts(kind="seg_prediction")
    assert len(arts) == 4 and len({a["image"] for a in arts}) == 2
    for a in arts:
        k = read_seg_prediction(a["abspath"])
        i = [s.image for s in ds.samples].index(a["image"])
        preds, gts = direct_predictions(loaded_tiny(int(a["model"][-1])).model, ds)
        assert np.array_equal(k["pred"], preds[i].numpy()) and np.array_equal(k["label"], gts[i].numpy())
        assert k["image"].shape == (64, 128, 3) and k["meta"]["task"] == "cityscapes"


@pytest.mark.parametrize(("args", "message"), [
    ({"set_name": "kitti", "data": "."}, "unknown segmentation set"),
    ({"set_name": "cityscapes", "data": None}, "no data given"),
    ({"set_name": "cityscapes", "data": ".", "corruptions": ["fog"]}, "--corruption does not apply"),
    ({"set_name": "cityscapes-c", "data": ".", "conditions": ["fog"]}, "--condition does not apply"),
    ({"set_name": "acdc", "data": ".", "on_the_fly": True}, "--on-the-fly does not apply"),
    ({"set_name": "cityscapes-c", "data": ".", "corruptions": ["fogg"]}, "did you mean 'fog'"),
    ({"set_name": "cityscapes", "data": ".", "split": "test"}, "--split test does not apply"),
])
def test_bad_options_are_one_line_user_errors(args: dict, message: str) -> None:
    set_name, data = args.pop("set_name"), args.pop("data")
    with pytest.raises(UserError, match=message) as e:
        check_segmentation_inputs(set_name, data, **args)
    assert "\n" not in str(e.value)


def test_classification_model_is_refused(cs_root: Path) -> None:
    from attnprobe.zoo import LoadedModel, Preprocessing

    clf = LoadedModel(model=torch.nn.Linear(2, 2), name="deit_b", arch="deit", checkpoint_sha256="0" * 64,
                      checkpoint_path=None, preprocessing=Preprocessing())
    with pytest.raises(UserError, match="deit_b is a classification model"):
        evaluate_segmentation(clf, None, check_segmentation_inputs("cityscapes", cs_root))
