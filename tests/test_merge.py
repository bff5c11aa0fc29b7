"""`attnprobe merge`: stores made on different machines combine into the store one machine would have made;
merging twice changes nothing; conflicting results are refused with one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from attnprobe.cli import app
from attnprobe.store import CellKey, ChunkCounts, DiagKey, ResultsStore, StoreConflictError, merge_stores
from tests.imagenet_c_fixtures import make_class_tree, make_imagenet_c_tree, make_models_dir

runner = CliRunner()
KEY = CellKey("fan_b", "sha", "imagenet_c", "ds", "pre", "fog", 3)
DK = DiagKey("fan_b", "sha", "attention_cosine", "ds", "fog", 3)


def invoke(*args: str) -> tuple[int, str, str]:
    res = runner.invoke(app, list(args))
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.stdout, res.stderr


def node(folder: Path, chunks: dict[int, tuple[int, int]], n_chunks: int | None = None,
         diag: dict[str, float] | None = None, art: bool = False) -> Path:
    with ResultsStore(folder) as s:
        s.register_model("fan_b", "sha", "/ckpt.pth", {"title": "FAN-B"})
        for c, (n, correct) in chunks.items():
            s.add_chunk(KEY, c, ChunkCounts(n=n, correct=correct), correct_bits=np.arange(n) < correct)
        if n_chunks is not None:
            s.finish_cell(KEY, n_chunks)
        s.add_diagnostics(DK, [(img, 0, 0, v) for img, v in (diag or {}).items()])
        if art:
            f = folder / "maps" / "fan_b" / "img0.npz"
            f.parent.mkdir(parents=True)
            f.write_bytes(b"maps of img0")
            s.add_artifact("fan_b", "sha", "attention_maps", "ds", "fog", 3, "img0", f)
    return folder


def dump(folder: Path) -> list:
    with ResultsStore(folder, readonly=True) as s:
        return [[tuple(r) for r in s.query(f"SELECT * FROM {t} ORDER BY 1, 2, 3")]
                for t in ("chunks", "sample_bits", "cells", "diagnostics", "artifacts", "models")]


def test_merge_two_nodes_then_again_is_a_no_op(tmp_path: Path) -> None:
    a = node(tmp_path / "a", {0: (10, 7), 1: (10, 5)}, diag={"img0": 0.5}, art=True)
    b = node(tmp_path / "b", {1: (10, 5), 2: (4, 4)}, n_chunks=None, diag={"img0": 0.5 + 1e-7, "img1": 0.25})
    report = merge_stores([a, b], tmp_path / "all")
    assert [s["added"]["chunks"] for s in report.sources] == [2, 1]
    assert report.sources[0]["files_copied"] == 1 and (tmp_path / "all" / "maps" / "fan_b" / "img0.npz").is_file()
    before = dump(tmp_path / "all")
    again = merge_stores([b, a], tmp_path / "all")
    assert all(v == 0 for s in again.sources for v in s["added"].values())
    assert dump(tmp_path / "all") == before
    with ResultsStore(tmp_path / "all") as s:
        assert s.done_chunks(KEY) == {0, 1, 2} and s.cell_totals(KEY).correct == 16
        assert s.sample_correctness(KEY).sum() == 16
        assert {r["image"]: r["value"] for r in s.diagnostics()} == {"img0": 0.5, "img1": 0.25}
        s.finish_cell(KEY, 3)  # rerunning the command completes a cell assembled from several nodes


@pytest.mark.parametrize("other, named", [
    ({0: (10, 6)}, "fan_b/imagenet_c/fog-s3 chunk 0 (correct 7/10 vs 6/10)"),
    ({0: (5, 3)}, "chunk 0 (correct 7/10 vs 3/5)"),  # another chunk size
])
def test_conflicting_results_are_refused_and_nothing_is_merged(tmp_path: Path, other: dict, named: str) -> None:
    target = node(tmp_path / "t", {0: (10, 7)})
    before = dump(target)
    bad = node(tmp_path / "bad", {**other, 3: (10, 1)})
    with pytest.raises(StoreConflictError, match=named.replace("(", r"\(").replace(")", r"\)")):
        merge_stores([bad], target)
    assert dump(target) == before
    code, _, err = invoke("merge", str(bad), "--out", str(target))
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "refusing to merge" in lines[0] and named in lines[0]


def test_conflicting_diagnostics_and_cells(tmp_path: Path) -> None:
    target = node(tmp_path / "t", {0: (10, 7)}, n_chunks=1, diag={"img0": 0.5})
    with pytest.raises(StoreConflictError, match="image img0 layer 0 head 0 \\(0.5 vs 0.6\\)"):
        merge_stores([node(tmp_path / "d", {}, diag={"img0": 0.6})], target)
    with pytest.raises(StoreConflictError, match="fog-s3 \\(1 vs 2 chunks\\)"):
        merge_stores([node(tmp_path / "c", {0: (10, 7), 1: (10, 7)}, n_chunks=2)], target)


def test_merge_refuses_bad_sources(tmp_path: Path) -> None:
    store = node(tmp_path / "t", {0: (10, 7)})
    code, _, err = invoke("merge", str(store), "--out", str(store))
    assert code == 2 and "is the --out store itself" in err
    code, _, err = invoke("merge", str(tmp_path / "missing"), "--out", str(store))
    assert code == 2 and "no results store" in err
    (tmp_path / "file").write_text("x")
    code, _, err = invoke("merge", str(tmp_path / "file"), "--out", str(store))
    assert code == 2 and "is a file, not a folder" in err


def test_two_nodes_merged_equal_one_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each node computes one corruption into its own store; after the merge, the full command computes nothing
    and prints the numbers of one machine that did everything."""
    monkeypatch.setenv("ATTNPROBE_MODELS_DIR", str(make_models_dir(tmp_path / "models")))
    tree = make_imagenet_c_tree(tmp_path / "inc", per_class=2)
    val = make_class_tree(tmp_path / "val", per_class=2)
    base = ["mce", "--model", "tiny_vit", "--data", str(tree), "--clean", str(val), "-s", "1", "-s", "2",
            "--workers", "0", "--chunk-size", "4", "--json"]
    every = [*base, "-c", "gaussian_noise", "-c", "fog"]
    for name, corruption in (("node1", "gaussian_noise"), ("node2", "fog")):
        code, _, err = invoke(*base, "-c", corruption, "--out", str(tmp_path / name))
        assert code == 0, err
    code, out, err = invoke("merge", str(tmp_path / "node1"), str(tmp_path / "node2"), "--out", str(tmp_path / "all"))
    assert code == 0 and "chunks" in out, err
    code, merged, err = invoke(*every, "--out", str(tmp_path / "all"))
    assert code == 0, err
    code, single, err = invoke(*every, "--out", str(tmp_path / "single"))
    assert code == 0, err
    m, s = json.loads(merged)["results"][0], json.loads(single)["results"][0]
    assert all(c["cached"] for c in m["cells"]) and m["clean"]["correct"] == s["clean"]["correct"]
    assert [(c["n"], c["correct"]) for c in m["cells"]] == [(c["n"], c["correct"]) for c in s["cells"]]
