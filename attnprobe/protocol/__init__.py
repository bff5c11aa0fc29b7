"""Evaluation protocol constants (AlexNet errors, flip rates, wnid order, ImageNet-A/R indices, corruption lists).

The JSON files beside this module are verbatim copies of `shared/reference/protocol/`; a test checks that they
still agree. Loaded lazily and cached, so importing attnprobe stays cheap.
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
