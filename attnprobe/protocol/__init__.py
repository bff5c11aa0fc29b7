"""Evaluation protocol constants (AlexNet errors, flip rates, wnid order, ImageNet-A/R indices, corruption lists;
Cityscapes classes, Cityscapes-C and ACDC facts, the paper's segmentation tables).

The ImageNet JSON files beside this module are verbatim copies of `shared/reference/protocol/`; the segmentation
ones (`cityscapes`, `cityscapes_c`, `acdc`, `segmentation_paper_numbers`) are distilled from
`shared/reference/segmentation/seg_protocol.json`, each with its sources in `_source`. Tests check both.
Loaded lazily and cached, so importing attnprobe stays cheap.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any


@lru_cache(maxsize=None)
def load(name: str) -> dict[str, Any]:
    """Return the parsed protocol file `name` (without `.json`), e.g. `load("alexnet_ce")`."""
    with resources.files(__name__).joinpath(f"{name}.json").open("r", encoding="utf-8") as f:
        return json.load(f)


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1k wnids in logit order."""
    return list(load("imagenet_1k_wnids")["wnids"])


def benchmark_corruptions() -> list[str]:
    """The 15 ImageNet-C corruptions that enter the mCE, in the canonical order."""
    return list(load("imagenet_c_corruptions")["benchmark_15"])


def extra_corruptions() -> list[str]:
    """The 4 extra (validation) ImageNet-C corruptions, not part of the mCE."""
    return list(load("imagenet_c_corruptions")["extra_4_validation"])


def alexnet_errors() -> dict[str, float]:
    """AlexNet top-1 error per benchmark corruption, averaged over the 5 severities (fractions)."""
    return dict(load("alexnet_ce")["alexnet_err"])


def alexnet_flip_probabilities() -> dict[str, float]:
    """AlexNet flip probability per ImageNet-P perturbation (fractions)."""
    return dict(load("alexnet_fr")["alexnet_fp"])


def test_perturbations() -> list[str]:
    """The 10 ImageNet-P perturbations that enter the mFR."""
    return list(load("alexnet_fr")["test_perturbations_for_mFR"])


def subset_indices(name: str) -> list[int]:
    """The 200 logit indices of ImageNet-A (`name="a"`) or ImageNet-R (`name="r"`)."""
    key = {"a": "imagenet_a_indices", "r": "imagenet_r_indices"}[name.lower()]
    return list(load(key)["indices"])


# ---------------------------------------------------------------------------------------------------------------
# segmentation: Cityscapes, Cityscapes-C, ACDC (facts of the official TAP/ADL code; sources in each file's _source)
# ---------------------------------------------------------------------------------------------------------------
def cityscapes_classes() -> list[dict[str, Any]]:
    """The 19 Cityscapes train classes in trainId order: `trainId`, `name`, `labelId`, `color_rgb`."""
    return [dict(c) for c in load("cityscapes")["train_classes"]]


def cityscapes_class_names() -> list[str]:
    """The 19 class names in trainId order (road, sidewalk, ..., bicycle)."""
    return [c["name"] for c in load("cityscapes")["train_classes"]]


def cityscapes_palette() -> list[tuple[int, int, int]]:
    """The official RGB colour of each of the 19 classes, in trainId order."""
    return [tuple(c["color_rgb"]) for c in load("cityscapes")["train_classes"]]  # type: ignore[misc]


def cityscapes_label_id_to_train_id() -> dict[int, int]:
    """Cityscapes labelId (0..33) -> trainId (0..18, or 255 = ignore)."""
    return {int(k): int(v) for k, v in load("cityscapes")["labelId_to_trainId"].items()}


def cityscapes_c_groups() -> dict[str, list[str]]:
    """The 16 evaluated Cityscapes-C corruptions by group (blur, noise, digital, weather), in Table IV order."""
    return {g: list(v) for g, v in load("cityscapes_c")["groups"].items()}


def cityscapes_c_corruptions() -> list[str]:
    """The 16 evaluated Cityscapes-C corruptions, in the column order of supplementary Table IV."""
    return [c for names in cityscapes_c_groups().values() for c in names]


def cityscapes_c_group(corruption: str) -> str:
    """The group (blur, noise, digital, weather) of an evaluated Cityscapes-C corruption."""
    for group, names in cityscapes_c_groups().items():
        if corruption in names:
            return group
    raise KeyError(f"{corruption!r} is not one of the 16 evaluated Cityscapes-C corruptions")


def cityscapes_c_severities(corruption: str) -> list[int]:
    """The severities the official protocol evaluates for `corruption`: 1-3 for the noises, 1-5 otherwise."""
    return list(load("cityscapes_c")["severities"][cityscapes_c_group(corruption)])


def cityscapes_c_generated_corruptions() -> list[str]:
    """All 19 corruptions the official generator writes (the 16 evaluated ones plus 3 never evaluated)."""
    return list(load("cityscapes_c")["generated_corruptions"])


def acdc_conditions() -> list[str]:
    """The four ACDC adverse conditions: fog, night, rain, snow."""
    return list(load("acdc")["conditions"])


def segmentation_paper_numbers() -> dict[str, Any]:
    """The paper's segmentation tables (mIoU in percent): `table4`, `table_IV`, `table_V` with columns and rows."""
    data = load("segmentation_paper_numbers")
    return {k: v for k, v in data.items() if not k.startswith("_")}
