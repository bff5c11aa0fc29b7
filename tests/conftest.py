"""Shared test fixtures: paths to the reference data beside the repository, small models, headless plotting."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REFERENCE = SHARED / "reference"
OFFICIAL = REFERENCE / "official"
PROTOCOL = REFERENCE / "protocol"


def pytest_configure(config: pytest.Config) -> None:
    import torch

    # NOTE: CI has 2 cores; one intra-op thread per test process keeps timings predictable and avoids
    # oversubscription when a test spawns worker processes.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE.is_dir():
        pytest.skip(f"reference data not found at {REFERENCE}")
    return REFERENCE


@pytest.fixture()
def tiny_vit_name() -> str:
    return "vit_tiny_patch16_224"


TINY_VIT_KWARGS = {"img_size": 32, "depth": 2, "num_classes": 10}
