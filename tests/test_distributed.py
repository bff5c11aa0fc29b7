"""Distributed evaluation: 2 CPU processes (gloo) give exactly the single-process counts, and only rank 0 writes."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from attnprobe import distributed as D
from attnprobe.engine import CellSpec, run_cells
from attnprobe.store import CellKey, ResultsStore


class NoisySet(torch.utils.data.Dataset):
    """Deterministic random inputs and labels (a pure function of the index)."""

    def __init__(self, n: int, seed: int, bad: tuple[int, ...] = ()) -> None:
        self.n, self.seed, self.bad = n, seed, set(bad)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, bool]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + i)
        return torch.randn(16, generator=g), int(torch.randint(0, 4, (1,), generator=g)), i not in self.bad


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()


def cells() -> list[CellSpec]:
    # sizes chosen so that chunks split unevenly over 2 ranks (odd chunk sizes, a last short chunk)
    return [CellSpec(CellKey("tiny", "seed0", "test", "noisy", "none", f"c{k}", 1), NoisySet(n, k, bad))
            for k, (n, bad) in enumerate([(37, ()), (11, (4,)), (5, ())])]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, out: str, queue: object) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    ctx = D.init_from_env(device="cpu")
    try:
        store = ResultsStore(out) if ctx.is_main else None
        # NOTE: one loader worker per rank: the claims must stay ahead of its read-ahead on both ranks
        res = run_cells(tiny_model(), cells(), store, batch_size=3, workers=1, chunk_size=7)
        queue.put((rank, [(r.n, r.correct, r.skipped, r.n_chunks) for r in res]))  # type: ignore[attr-defined]
        if store is not None:
            store.close()
    finally:
        D.cleanup()


def test_shard_has_no_duplicates_and_no_padding() -> None:
    items = list(range(11))
    shards = [D.shard(items, r, 3) for r in range(3)]
    assert sorted(sum(shards, [])) == items
    assert [len(s) for s in shards] == [4, 4, 3]
    with pytest.raises(ValueError):
        D.shard(items, 3, 3)


def test_single_process_helpers_are_identities() -> None:
    assert D.rank() == 0 and D.world_size() == 1 and D.is_main()
    t = torch.tensor([1.0, 2.0])
    assert D.all_reduce_sum(t) is t and D.broadcast_object({"a": 1}) == {"a": 1}
    ctx = D.init_from_env(device="cpu")
    assert ctx.world_size == 1 and ctx.is_main and not ctx.distributed


@pytest.mark.slow
def test_two_gloo_processes_equal_single_process(tmp_path: Path) -> None:
    single = run_cells(tiny_model(), cells(), None, batch_size=3, workers=0, chunk_size=7)
    expected = [(r.n, r.correct, r.skipped, r.n_chunks) for r in single]
    assert expected[1][2] == 1  # one unreadable sample, skipped and counted

    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, str(tmp_path / "out"), queue)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    got = dict(queue.get() for _ in range(2))
    assert got[0] == expected and got[1] == expected  # every rank returns rank 0's totals
    with ResultsStore(tmp_path / "out", readonly=True) as store:
        rows = store.query("SELECT condition, SUM(n) AS n, SUM(correct) AS c, COUNT(*) AS k FROM chunks "
                           "GROUP BY condition ORDER BY condition")
        assert [(r["n"], r["c"], r["k"]) for r in rows] == [(e[0], e[1], e[3]) for e in expected]
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.suffix == ".sqlite") == ["results.sqlite"]
    # per-sample correctness: the ranks' shares are reassembled in sample order, identical to one process
    with ResultsStore(tmp_path / "single") as store:
        run_cells(tiny_model(), cells(), store, batch_size=3, workers=0, chunk_size=7)
        want = [(store.sample_correctness(c.key), store.sample_skipped(c.key)) for c in cells()]
    with ResultsStore(tmp_path / "out", readonly=True) as store:
        have = [(store.sample_correctness(c.key), store.sample_skipped(c.key)) for c in cells()]
    for (wb, ws), (hb, hs), e in zip(want, have, expected):
        assert wb is not None and hb is not None and wb.tolist() == hb.tolist() and ws.tolist() == hs.tolist()
        assert int(wb.sum()) == e[1] and int(ws.sum()) == e[2]
    assert have[1][1].tolist() == [i == 4 for i in range(11)]


@pytest.mark.slow
def test_torchrun_cli_equals_single_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`torchrun --nproc_per_node=2 -m attnprobe mce ...` (gloo on CPU) prints exactly the single-process counts.

    The ranks decode and resize on their device (`--decode device`: the GPU path, run on CPU), the single process in
    its loader (`--decode cpu`): equal counts prove the sharding and the device path at once (one torchrun start
    instead of two keeps CI short; the 2-process test above covers the plain loader path)."""
    import json
    import subprocess
    import sys

    from tests.imagenet_c_fixtures import make_class_tree, make_imagenet_c_tree, make_models_dir, save_tiny_checkpoint

    tree = make_imagenet_c_tree(tmp_path / "inc", per_class=3)
    val = make_class_tree(tmp_path / "val", per_class=3, size=44)  # resized to the model's 32 px
    ckpt = save_tiny_checkpoint(tmp_path / "tiny.pth")
    env = {**os.environ, "ATTNPROBE_MODELS_DIR": str(make_models_dir(tmp_path / "models")), "OMP_NUM_THREADS": "1"}
    args = ["mce", "--model", "tiny_vit", "--ckpt", str(ckpt), "--data", str(tree), "--clean", str(val),
            "-c", "gaussian_noise", "-c", "fog", "-s", "1", "-s", "2", "--workers", "0", "--batch-size", "2",
            "--chunk-size", "5", "--json"]
    dist_run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                               f"--master_port={_free_port()}", "-m", "attnprobe", *args, "--decode", "device",
                               "--out", str(tmp_path / "dist")], capture_output=True, text=True, env=env, timeout=300)
    assert dist_run.returncode == 0, dist_run.stderr[-2000:]
    from typer.testing import CliRunner

    from attnprobe.cli import app

    monkeypatch.setenv("ATTNPROBE_MODELS_DIR", env["ATTNPROBE_MODELS_DIR"])
    single = CliRunner().invoke(app, [*args, "--decode", "cpu", "--out", str(tmp_path / "single")])
    assert single.exit_code == 0, single.stderr
    a, b = json.loads(dist_run.stdout)["results"][0], json.loads(single.stdout)["results"][0]  # rank 0 prints once

    def counts(r: dict) -> list[tuple]:
        return [(c["corruption"], c["severity"], c["n"], c["correct"], c["skipped"]) for c in r["cells"]]

    assert counts(a) == counts(b) and a["clean"]["correct"] == b["clean"]["correct"]
    assert sum(c["correct"] for c in a["cells"]) > 0 and [c["n"] for c in a["cells"]] == [9, 9, 9, 9]
