"""The public Python API contract: top-level names, fixture configs, ADL, and a cheap `import attnprobe`."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import attnprobe
from tests.conftest import OFFICIAL


def test_import_is_cheap() -> None:
    code = "import sys, attnprobe; print('torch' in sys.modules, 'timm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_top_level_api_reproduces_an_official_fixture() -> None:
    path = OFFICIAL / "tap_fan_hybrid_small.pt"
    if not path.is_file():
        pytest.skip("official fixtures not available")
    fx = torch.load(path, weights_only=True)
    model = attnprobe.build_from_config(fx["config"])
    model.load_state_dict(fx["state_dict"], strict=True)
    model.eval()
    with torch.no_grad(), attnprobe.AttentionCapture(model) as cap:
        logits = model(fx["input"])
    assert torch.allclose(logits, fx["logits"], atol=1e-4)
    assert len(cap.maps) == len(fx["attn"])
    adl = attnprobe.adl_loss(cap.maps, tau=2.0)
    assert abs(float(adl) - float(fx["adl_tau2"])) < 1e-5


def test_create_model_official_and_zoo_names_agree() -> None:
    torch.manual_seed(0)
    a = attnprobe.create_model("tap_fan_tiny_8_p4_hybrid", num_scales=4, pretrained=False)
    b = attnprobe.create_model("fan_t", pretrained=False)
    assert not a.training and not b.training
    assert sum(p.numel() for p in a.parameters()) > sum(p.numel() for p in b.parameters())


def test_readme_python_api_block_runs_as_written(tmp_path, monkeypatch) -> None:
    """The README's Python API section is a guide a user copies: its code block must run unchanged, offline."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Python API"):]
    section = section[:section.index("\n## ", 1)]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks, "the Python API section has no ```python block"
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, "README.md (Python API)", "exec"), {"__name__": "readme"})
