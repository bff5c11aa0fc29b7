"""mIoU: known answers from the official MMSegmentation 0.13 evaluation, hand-made cases, exact chunked sums."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from attnprobe.segmentation import (IoUAccumulator, area_fields, areas_from_fields, areas_to_fields, batch_areas,
                                    iou_from_areas, mean_iou, official_round)
from tests.conftest import REFERENCE

CASE = REFERENCE / "segmentation" / "seg_miou_case.pt"


def _official_areas(pred: np.ndarray, label: np.ndarray, num_classes: int, ignore_index: int) -> np.ndarray:
    """Independent transcription of the official `intersect_and_union` (numpy histograms), as the oracle."""
    mask = label != ignore_index
    pred, label = pred[mask], label[mask]
    intersect = pred[pred == label]
    bins = np.arange(num_classes + 1)
    ai = np.histogram(intersect, bins=bins)[0]
    ap = np.histogram(pred, bins=bins)[0]
    al = np.histogram(label, bins=bins)[0]
    return np.stack([ai, ap + al - ai, ap, al])


@pytest.mark.skipif(not CASE.exists(), reason="reference fixture not found")
def test_official_case_known_answer() -> None:
    case = torch.load(CASE, weights_only=True)
    res = mean_iou(case["preds"], case["gts"], num_classes=case["num_classes"], ignore_index=case["ignore_index"])
    np.testing.assert_array_equal(np.isnan(res["iou"]), torch.isnan(case["iou"]).numpy())
    np.testing.assert_array_equal(np.isnan(res["acc"]), torch.isnan(case["acc"]).numpy())
    np.testing.assert_array_equal(np.nan_to_num(res["iou"]), torch.nan_to_num(case["iou"]).numpy())  # bit-exact
    np.testing.assert_array_equal(np.nan_to_num(res["acc"]), torch.nan_to_num(case["acc"]).numpy())
    assert res["aacc"] == case["all_acc"]
    assert res["summary"] == case["summary"]  # {"mIoU": 0.4146, "mAcc": 0.6483, "aAcc": 0.6988}
    assert res["images"] == 3
    assert res["n_classes"] == 9  # classes with pixels in the labels or the predictions


def test_hand_made_case() -> None:
    # 3 classes; class 2 is predicted but never labelled (IoU 0, counts); 255 pixels are ignored, predictions included
    gt = torch.tensor([[0, 0, 1, 1], [0, 255, 1, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 2, 1, 0]])
    res = mean_iou([pred], [gt], num_classes=3)
    # scored pixels (gt, pred): (0,0) (0,1) (1,1) (1,1) (0,2) (1,1); the two 255 pixels (preds 2 and 0) do not count
    # class 0: I=1, pred=1, label=3 -> U=3; class 1: I=3, pred=4, label=3 -> U=4; class 2: I=0, pred=1 -> U=1
    np.testing.assert_allclose(res["iou"], [1 / 3, 0.75, 0.0])
    assert np.isnan(res["acc"][2]) and res["acc"][:2].tolist() == [1 / 3, 1.0]
    assert res["miou"] == pytest.approx((1 / 3 + 0.75 + 0) / 3)
    assert res["macc"] == pytest.approx((1 / 3 + 1) / 2)
    assert res["aacc"] == pytest.approx(4 / 6)
    assert res["area_label"].tolist() == [3, 3, 0] and res["pixels"] == 6


def test_class_absent_everywhere_is_nan_and_skipped() -> None:
    gt = torch.zeros(4, 4, dtype=torch.uint8)
    res = mean_iou([gt.long()], [gt], num_classes=19)
    assert res["iou"][0] == 1.0 and np.isnan(res["iou"][1:]).all()
    assert res["miou"] == 1.0 and res["n_classes"] == 1


def test_all_ignored_gives_nan_without_error() -> None:
    gt = torch.full((3, 5), 255, dtype=torch.uint8)
    res = mean_iou([torch.zeros(3, 5, dtype=torch.long)], [gt])
    assert math.isnan(res["miou"]) and math.isnan(res["aacc"]) and res["pixels"] == 0
    assert math.isnan(res["summary"]["mIoU"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_official_histograms_including_out_of_range_values(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    c = 19
    pred = torch.randint(-1, 22, (3, 9, 13), generator=g)  # -1, 19, 20, 21 outside the classes
    label = torch.randint(0, 23, (3, 9, 13), generator=g)
    label[label > 20] = 255
    got = batch_areas(pred, label.to(torch.uint8), c, 255)
    for i in range(3):
        want = _official_areas(pred[i].numpy(), label[i].numpy(), c, 255)
        np.testing.assert_array_equal(got[i].numpy(), want)
    assert torch.equal(batch_areas(pred.to(torch.int32), label.to(torch.int16), c, 255), got)


def test_uint8_and_int64_labels_agree_and_areas_are_int64() -> None:
    g = torch.Generator().manual_seed(3)
    pred = torch.randint(0, 19, (2, 16, 32), generator=g)
    label = torch.randint(0, 19, (2, 16, 32), generator=g)
    label[:, :2] = 255
    a = batch_areas(pred, label.to(torch.uint8))
    b = batch_areas(pred.to(torch.uint8), label)
    assert a.dtype == torch.int64 and a.shape == (2, 4, 19)
    assert torch.equal(a, b)
    assert torch.equal(a[:, 1], a[:, 2] + a[:, 3] - a[:, 0])  # union = pred + label - intersection


def test_chunked_sharded_sums_equal_single_pass_exactly() -> None:
    g = torch.Generator().manual_seed(7)
    preds = [torch.randint(0, 19, (24, 40), generator=g) for _ in range(11)]
    gts = [torch.where(torch.rand(24, 40, generator=g) < 0.1, 255, torch.randint(0, 19, (24, 40), generator=g))
           for _ in range(11)]
    single = mean_iou(preds, gts)
    # chunks of 4 images, each sharded over 2 "ranks" (index % 2), chunk sums stored as float64 fields (as the
    # engine reduces them), then summed over chunks and read back
    stored: dict[str, float] = {}
    for start in range(0, 11, 4):
        chunk = range(start, min(start + 4, 11))
        rank_sums = []
        for rank in range(2):
            acc = IoUAccumulator()
            for i in chunk:
                if i % 2 == rank:
                    acc.update(preds[i], gts[i])
            rank_sums.append(acc.totals())
        fields = areas_to_fields(rank_sums[0].double() + rank_sums[1].double())
        for k, v in fields.items():
            stored[k] = stored.get(k, 0.0) + float(v)
    resumed = IoUAccumulator.from_fields(stored).compute()
    for key in ("iou", "acc"):
        np.testing.assert_array_equal(resumed[key], single[key])
    assert (resumed["miou"], resumed["macc"], resumed["aacc"]) == (single["miou"], single["macc"], single["aacc"])
    assert resumed["summary"] == single["summary"]


def test_fields_round_trip_and_validation() -> None:
    areas = torch.arange(4 * 19, dtype=torch.int64).reshape(4, 19)
    fields = areas_to_fields(areas)
    assert tuple(fields) == area_fields(19) and fields["area_union_00"] == 19
    assert torch.equal(areas_from_fields({k: float(v) for k, v in fields.items()}), areas)
    with pytest.raises(KeyError):
        areas_from_fields({})
    with pytest.raises(ValueError):
        areas_from_fields({**{k: 0 for k in area_fields(19)}, "area_label_03": 2.5})


def test_merge_add_and_to_fields() -> None:
    a, b = IoUAccumulator(), IoUAccumulator()
    x = torch.zeros(4, 4, dtype=torch.long)
    a.update(x, x)
    b.update(x[None] + 1, x[None] + 1)
    a.merge(b)
    assert a.images == 2 and a.to_fields()["area_label_00"] == 16 and a.to_fields()["area_label_01"] == 16
    with pytest.raises(ValueError):
        a.merge(IoUAccumulator(num_classes=3))


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="resize the logits"):
        batch_areas(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="argmax"):
        batch_areas(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError):
        mean_iou([torch.zeros(2, 2, dtype=torch.long)], [])
    with pytest.raises(ValueError):
        iou_from_areas(np.zeros((3, 19)))


def test_official_round() -> None:
    assert official_round(0.41455) == np.round(0.41455 * 100, 2) / 100
    assert official_round(0.69879518) == 0.6988
    assert math.isnan(official_round(float("nan")))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    g = torch.Generator().manual_seed(5)
    pred = torch.randint(0, 19, (4, 256, 512), generator=g)
    label = torch.randint(0, 20, (4, 256, 512), generator=g).to(torch.uint8)
    label[label == 19] = 255
    cpu = batch_areas(pred, label)
    gpu = batch_areas(pred.cuda(), label.cuda())
    assert gpu.device.type == "cuda" and torch.equal(gpu.cpu(), cpu)


def test_cityscapes_c_summary_reproduces_the_paper_average() -> None:
    from attnprobe import protocol
    from attnprobe.segmentation import cityscapes_c_summary

    table = protocol.segmentation_paper_numbers()["table_IV"]
    row = dict(zip(table["columns"], table["rows"]["+TAP & ADL"]))
    # every severity at the paper's per-corruption value (as a fraction); noise at 1-3 only, the rest at 1-5
    cells = {(c, s): row[c] / 100 for c in protocol.cityscapes_c_corruptions()
             for s in protocol.cityscapes_c_severities(c)}
    res = cityscapes_c_summary(cells)
    assert res["complete"] and len(cells) == 72
    assert res["average"] == pytest.approx(0.69725)
    assert round(res["average"] * 100, 1) == row["Average mIoU on Cityscapes-C"]
    assert res["groups"]["noise"] == pytest.approx(0.6815)
    # the score of a corruption is the mean of its rounded severities; an incomplete run has no average
    cells[("fog", 1)], cells[("fog", 2)] = 0.812345, 0.787655
    del cells[("shot_noise", 3)]
    res = cityscapes_c_summary(cells)
    assert res["corruptions"]["fog"] == pytest.approx((0.8123 + 0.7877 + 3 * 0.80) / 5)
    assert res["corruptions"]["shot_noise"] is None and res["groups"]["noise"] is None and res["average"] is None
    assert res["missing"] == [("shot_noise", 3)] and not res["complete"]


def test_acdc_summary() -> None:
    from attnprobe.segmentation import acdc_summary

    res = acdc_summary({"fog": 0.645, "night": 0.51, "rain": 0.705, "snow": 0.682})
    assert res["average"] == pytest.approx(0.6355) and res["pooled"] is None and res["missing"] == []
    a = torch.zeros(4, 19, dtype=torch.int64)
    a[:, 0] = torch.tensor([1, 2, 1, 2])  # intersection 1, union 2: IoU 0.5
    b = a.clone()
    b[:, 0] = torch.tensor([3, 4, 3, 4])  # IoU 0.75; pooled: 4 / 6
    res = acdc_summary({"fog": 0.5, "night": 0.75, "rain": 0.5, "snow": 0.75},
                       areas={"fog": a, "night": b, "rain": a, "snow": b})
    assert res["average"] == pytest.approx(0.625) and res["pooled"] == pytest.approx(8 / 12)
    assert acdc_summary({"fog": 0.5})["average"] is None
