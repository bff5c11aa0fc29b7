"""Many processes, one store: chunks are claimed with leases, so processes split the work, a killed process's chunks
are taken over, and every process reports the numbers of a single-process run; nothing is counted twice."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from attnprobe.store import CellKey, ChunkCounts, ResultsStore
from attnprobe.store.leases import new_owner_id, owner_alive
from tests.imagenet_c_fixtures import make_class_tree, make_imagenet_c_tree, make_models_dir
from tests.test_mce_cli import SLOW_MAIN

KEY = CellKey("m", "sha", "t", "ds", "pre", "c", 1)


# -- leases ---------------------------------------------------------------------------------------------------------
def test_claims_skip_committed_and_leased_chunks(tmp_path: Path) -> None:
    with ResultsStore(tmp_path) as a, ResultsStore(tmp_path) as b:
        a.add_chunk(KEY, 0, ChunkCounts(n=1, correct=1))
        assert a.claim_chunk(KEY, 4)[0] == 1
        assert b.claim_chunk(KEY, 4)[0] == 2  # a holds 1
        chunk, states = a.claim_chunk(KEY, 4)
        assert chunk == 3 and states.committed == {0} and set(states.leased) == {1, 2, 3}
        assert b.claim_chunk(KEY, 4)[0] is None
        a.add_chunk(KEY, 1, ChunkCounts(n=1, correct=0))  # committing deletes the lease
        assert set(b.chunk_states(KEY).leased) == {2, 3}
        a.release_leases()  # a stops (e.g. Ctrl-C): its chunk 3 is free at once
        assert b.claim_chunk(KEY, 4)[0] == 3


def test_an_expired_lease_is_taken_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTNPROBE_LEASE_SECONDS", "0.5")
    with ResultsStore(tmp_path) as s:
        with s.transaction() as db:  # a lease of a process on another machine, which stopped renewing it
            db.execute("INSERT INTO leases VALUES (?, ?, ?, ?, ?, ?, ?, 0, 'elsewhere|ns|1|ab', ?)",
                       (*KEY.as_tuple(), time.time() + 0.5))
        assert s.claim_chunk(KEY, 1)[0] is None
        time.sleep(0.6)
        assert s.claim_chunk(KEY, 1)[0] == 0


def test_a_dead_local_owner_loses_its_lease_at_once(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead = new_owner_id().split("|")
    dead[2] = str(proc.pid)
    dead_owner = "|".join(dead)
    assert owner_alive(dead_owner) is False and owner_alive(new_owner_id()) is True
    assert owner_alive("another-host|ns|1|ab") is None
    with ResultsStore(tmp_path) as s:
        with s.transaction() as db:
            db.execute("INSERT INTO leases VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?)",
                       (*KEY.as_tuple(), dead_owner, time.time() + 3600))
        assert s.claim_chunk(KEY, 1)[0] == 0


def test_leases_are_renewed_while_the_owner_lives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTNPROBE_LEASE_SECONDS", "0.8")
    with ResultsStore(tmp_path) as a, ResultsStore(tmp_path) as b:
        assert a.claim_chunk(KEY, 1)[0] == 0
        time.sleep(1.5)  # longer than the lease: the heartbeat renewed it
        assert b.claim_chunk(KEY, 1)[0] is None
    with ResultsStore(tmp_path) as c:  # closing a store released its leases
        assert c.query("SELECT COUNT(*) FROM leases")[0][0] == 0


# -- processes --------------------------------------------------------------------------------------------------------
@pytest.fixture()
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    models = make_models_dir(tmp_path / "models")
    monkeypatch.setenv("ATTNPROBE_MODELS_DIR", str(models))
    return {"root": tmp_path, "env": {**os.environ, "ATTNPROBE_MODELS_DIR": str(models), "OMP_NUM_THREADS": "1",
                                      "ATTNPROBE_LEASE_SECONDS": "4"}}


def _owners(db: Path) -> list[str]:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return [r[0] for r in con.execute("SELECT owner FROM leases")]
    except sqlite3.OperationalError:
        return []


@pytest.mark.slow
def test_processes_started_and_killed_at_random_moments_equal_one_process(env: dict) -> None:
    root = env["root"]
    tree = make_imagenet_c_tree(root / "inc", per_class=2)  # 2 x 2 cells of 6 images
    val = make_class_tree(root / "val", per_class=2)
    args = ["mce", "--model", "tiny_vit", "--data", str(tree), "--clean", str(val), "-c", "gaussian_noise", "-c",
            "fog", "-s", "1", "-s", "2", "--workers", "0", "--batch-size", "1", "--chunk-size", "1", "--json"]
    code = CliRunner().invoke(__import__("attnprobe.cli", fromlist=["app"]).app, [*args, "--out", str(root / "one")])
    assert code.exit_code == 0, code.stderr
    straight = json.loads(code.stdout)["results"][0]

    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    out = root / "shared"
    procs = []
    for _ in range(4):  # each forward pass sleeps 0.3 s (SLOW_MAIN): 30 chunks of 1 image to split
        procs.append(subprocess.Popen([sys.executable, "-c", SLOW_MAIN, *args, "--out", str(out)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env["env"]))
        time.sleep(rng.uniform(0.0, 1.5))
    victims = rng.sample(range(4), 2)
    early, holder = procs[victims[0]], procs[victims[1]]
    time.sleep(rng.uniform(0.0, 2.0))
    early.send_signal(signal.SIGKILL)  # at a random moment (maybe still importing torch)
    early.wait()
    deadline = time.time() + 120
    holding = False
    while holder.poll() is None and time.time() < deadline and not holding:
        holding = any(f"|{holder.pid}|" in o for o in _owners(out / "results.sqlite"))
        time.sleep(0.05)
    holder.send_signal(signal.SIGKILL)  # while it holds a lease: its chunk must be taken over, not lost
    holder.wait()
    assert holding, f"seed {seed}: the second victim never held a lease"
    survivors = [p for i, p in enumerate(procs) if i not in victims]
    outputs = [p.communicate(timeout=300) for p in survivors]
    for p, (o, e) in zip(survivors, outputs):
        assert p.returncode == 0, f"seed {seed}: {e.decode()[-2000:]}"

    def counts(r: dict) -> list[tuple]:
        return [(c["corruption"], c["severity"], c["n"], c["correct"], c["skipped"]) for c in r["cells"]] + [
            ("clean", r["clean"]["n"], r["clean"]["correct"])]

    for o, _ in outputs:
        assert counts(json.loads(o)["results"][0]) == counts(straight), f"seed {seed}"
    with ResultsStore(out, readonly=True) as shared, ResultsStore(root / "one", readonly=True) as one:
        q = "SELECT condition, severity, COUNT(*), SUM(n), SUM(correct) FROM chunks GROUP BY condition, severity"
        assert [tuple(r) for r in shared.query(q)] == [tuple(r) for r in one.query(q)], f"seed {seed}"
        assert shared.query("SELECT COUNT(*) FROM leases")[0][0] == 0
        assert len(shared.query("SELECT * FROM cells")) == 5
        for row in one.query("SELECT * FROM cells"):
            k = CellKey(*(row[c] for c in ("model", "checkpoint_sha256", "task", "dataset", "preprocessing",
                                           "condition", "severity")))
            assert shared.sample_correctness(k).tolist() == one.sample_correctness(k).tolist(), f"seed {seed}"


@pytest.mark.slow
def test_two_stability_runs_on_one_store_agree(env: dict) -> None:
    root = env["root"]
    args = [sys.executable, "-m", "attnprobe", "stability", "--model", "tiny_vit", "--ckpt", "-", "--json",
            "--keep-maps", "2", "--out", str(root / "shared")]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env["env"], cwd=root)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e.decode()[-2000:] for _, e in outs]
    a, b = (json.loads(o)["results"] for o, _ in outs)
    assert a == b and a[0]["n_images"] > 0
    with ResultsStore(root / "shared", readonly=True) as s:
        assert all(Path(x["abspath"]).is_file() for x in s.artifacts())
        assert not list((root / "shared").rglob("*.tmp*"))
