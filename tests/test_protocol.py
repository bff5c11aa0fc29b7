"""The packaged protocol constants must stay byte-for-byte equal to the shared reference copies."""

from __future__ import annotations

import json

import pytest

from attnprobe import protocol
from tests.conftest import PROTOCOL


@pytest.mark.parametrize("name", sorted(p.stem for p in PROTOCOL.glob("*.json")) if PROTOCOL.is_dir() else [])
def test_packaged_protocol_equals_reference(name: str) -> None:
    assert protocol.load(name) == json.loads((PROTOCOL / f"{name}.json").read_text())


def test_protocol_accessors() -> None:
    assert len(protocol.imagenet_wnids()) == 1000
    assert protocol.imagenet_wnids() == sorted(protocol.imagenet_wnids())
    assert len(protocol.benchmark_corruptions()) == 15
    assert set(protocol.alexnet_errors()) == set(protocol.benchmark_corruptions())
    assert len(protocol.subset_indices("a")) == len(protocol.subset_indices("r")) == 200
    assert len(protocol.test_perturbations()) == 10
