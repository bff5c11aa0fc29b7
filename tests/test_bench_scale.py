"""`bench/bench_scale.py` runs on CPU (tiny model, tiny generated ImageNet-C tree) and reports every configuration."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_scale.py"


def test_bench_scale_runs_on_cpu(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("bench_scale", BENCH)
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_scale", mod)  # dataclasses and the writer pool look the module up
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    rows = mod.main(["--device", "cpu", "--model", "test_vit", "--cells", "2", "--per-cell", "12", "--batch-size",
                     "8", "--workers", "0", "--image-size", "48", "--repeats", "1", "--precision", "fp32",
                     "--decode", "cpu,workers,device", "--tree", str(tmp_path / "tree")])
    assert [(r["precision"], r["decode"]) for r in rows] == [("fp32", d) for d in ("cpu", "workers", "device")]
    for r in rows:
        assert r["e2e"] > 0 and r["model"] > 0 and r["input"] > 0 and math.isfinite(r["hours"])
        assert r["ratio"] == pytest.approx(r["e2e"] / r["model"])
    assert len(list((tmp_path / "tree").rglob("*.JPEG"))) == 24
    out = capsys.readouterr().out
    assert "end-to-end" in out and "full ImageNet-C" in out
