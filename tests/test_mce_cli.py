"""`attnprobe mce` / `attnprobe clean` end to end on tiny synthetic trees: JSON, mCE, bad input, resume after kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tests.imagenet_c_fixtures import (committed_chunks, make_class_tree, make_imagenet_c_tree, make_models_dir,
                                 save_tiny_checkpoint)

from attnprobe import robustness as R
from attnprobe.cli import app
from attnprobe.protocol import benchmark_corruptions

runner = CliRunner()


@pytest.fixture()
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    models = make_models_dir(tmp_path / "models")
    monkeypatch.setenv("ATTNPROBE_MODELS_DIR", str(models))
    return {"models": models, "ckpt": save_tiny_checkpoint(tmp_path / "tiny.pth"), "root": tmp_path}


def run(*args: str) -> tuple[int, str, str]:
    res = runner.invoke(app, list(args))
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.stdout, res.stderr


def direct_errors(tree: Path, ckpt: Path) -> dict[tuple[str, int], tuple[int, int]]:
    """(n, correct) per cell, computed without attnprobe's loop: PIL -> tensor -> model -> argmax."""
    import timm
    from PIL import Image

    from attnprobe.protocol import imagenet_wnids

    model = timm.create_model("test_vit", img_size=32, patch_size=8)
    model.load_state_dict(torch.load(ckpt, weights_only=True))
    model.eval()
    labels = {w: i for i, w in enumerate(imagenet_wnids())}
    out = {}
    for cdir in sorted(p for p in tree.iterdir() if p.is_dir()):
        for sdir in sorted(p for p in cdir.iterdir() if p.is_dir()):
            n = correct = 0
            for f in sorted(sdir.glob("*/*.JPEG")):
                x = torch.from_numpy(__import__("numpy").array(Image.open(f).convert("RGB"))).permute(2, 0, 1)
                x = (x.float() / 255 - 0.5) / 0.5
                with torch.inference_mode():
                    pred = int(model(x[None]).argmax(1))
                n += 1
                correct += pred == labels[f.parent.name]
            out[(cdir.name, int(sdir.name))] = (n, correct)
    return out


def test_full_tree_json_gives_mce_equal_to_the_formula(env: dict[str, Path]) -> None:
    tree = make_imagenet_c_tree(env["root"] / "inc", corruptions=tuple(benchmark_corruptions()),
                                severities=(1, 2, 3, 4, 5), per_class=1)
    code, out, err = run("mce", "--model", "tiny_vit", "--ckpt", str(env["ckpt"]), "--data", str(tree),
                         "--out", str(env["root"] / "out"), "--workers", "0", "--batch-size", "16", "--json")
    assert code == 0, err
    payload = json.loads(out)  # stdout is JSON and nothing else
    [res] = payload["results"]
    assert res["model"] == "tiny_vit" and len(res["cells"]) == 75 and res["complete"] is True
    direct = direct_errors(tree, env["ckpt"])
    for cell in res["cells"]:
        n, correct = direct[(cell["corruption"], cell["severity"])]
        assert (cell["n"], cell["n"] - round(cell["top1_error"] * cell["n"])) == (n, correct)
    errors = {c: [1 - direct[(c, s)][1] / direct[(c, s)][0] for s in range(1, 6)] for c in benchmark_corruptions()}
    assert res["mce"] == pytest.approx(R.mce(errors))
    assert res["mean_corrupted_accuracy"] == pytest.approx(R.mean_corrupted_accuracy(errors))
    # a rerun computes nothing and reports the same numbers from the store
    code, out2, _ = run("mce", "--model", "tiny_vit", "--ckpt", str(env["ckpt"]), "--data", str(tree),
                        "--out", str(env["root"] / "out"), "--workers", "0", "--json")
    res2 = json.loads(out2)["results"][0]
    assert all(c["cached"] for c in res2["cells"]) and res2["mce"] == res["mce"]


def test_partial_table_is_shown_as_such(env: dict[str, Path]) -> None:
    tree = make_imagenet_c_tree(env["root"] / "inc")
    val = make_class_tree(env["root"] / "val")
    args = ["mce", "--model", "tiny_vit", "--ckpt", str(env["ckpt"]), "--data", str(tree), "--clean", str(val),
            "--out", str(env["root"] / "out"), "--workers", "0", "-c", "gaussian_noise", "-c", "fog",
            "-s", "1", "-s", "2"]
    code, out, err = run(*args)
    assert code == 0, err
    assert "partial table" in out and "mCE " not in out.replace("no mCE", "")
    code, out, _ = run(*args, "--json")
    res = json.loads(out)["results"][0]
    assert res["mce"] is None and res["complete"] is False and res["relative_mce"] is None
    assert res["clean"]["n"] == 9 and [c["n"] for c in res["cells"]] == [9, 9, 9, 9]


@pytest.mark.parametrize("extra, message", [
    (["-c", "gausian_noise"], "unknown corruption 'gausian_noise'"),
    (["-s", "7"], "severity 7"),
    (["-c", "fog", "-s", "3"], "missing severity folder"),
    (["-c", "snow"], "corruption folder(s) missing"),
])
def test_bad_input_is_one_line_and_exit_2(env: dict[str, Path], extra: list[str], message: str) -> None:
    tree = make_imagenet_c_tree(env["root"] / "inc", per_class=1)
    code, out, err = run("mce", "--model", "tiny_vit", "--data", str(tree), "--out", str(env["root"] / "o"), *extra)
    assert code == 2 and message in err and "Traceback" not in err and out == ""
    assert not (env["root"] / "o").exists()  # rejected before anything was opened or computed


def test_not_an_imagenet_c_tree_and_missing_options(env: dict[str, Path]) -> None:
    val = make_class_tree(env["root"] / "val", per_class=1)
    code, _, err = run("mce", "--model", "tiny_vit", "--data", str(val))
    assert code == 2 and "not an ImageNet-C tree" in err
    code, _, err = run("mce", "--model", "tiny_vit", "--on-the-fly")
    assert code == 2 and "--clean" in err
    code, _, err = run("mce", "--model", "tiny_vit")
    assert code == 2 and "--data" in err
    empty = env["root"] / "inc" / "fog" / "1"
    empty.mkdir(parents=True)
    code, _, err = run("mce", "--model", "tiny_vit", "--data", str(env["root"] / "inc"), "-c", "fog", "-s", "1")
    assert code == 2 and "no images" in err


def test_on_the_fly_and_clean_commands(env: dict[str, Path]) -> None:
    val = make_class_tree(env["root"] / "val", per_class=1, size=48)
    code, out, err = run("mce", "--model", "tiny_vit", "--ckpt", str(env["ckpt"]), "--clean", str(val),
                         "--on-the-fly", "-c", "contrast", "-s", "2", "--out", str(env["root"] / "out"),
                         "--workers", "1", "--json")  # one loader worker: datasets and transforms cross processes
    assert code == 0, err
    res = json.loads(out)["results"][0]
    assert res["source"] == "on_the_fly" and res["cells"][0]["n"] == 3 and res["clean"]["n"] == 3
    code, out, err = run("clean", "--model", "tiny_vit", "--ckpt", str(env["ckpt"]), "--data", str(val),
                         "--out", str(env["root"] / "out"), "--workers", "0", "--json")
    assert code == 0, err
    clean = json.loads(out)["results"][0]
    assert clean["n"] == 3 and clean["cached"] is True  # the mce run above already scored the clean cell
    assert clean["top1_error"] == pytest.approx(res["clean"]["top1_error"])


# -- resume after kill -9 / Ctrl-C ---------------------------------------------------------------------------------
SLOW_MAIN = """
import sys, time
import attnprobe.zoo as Z
_orig = Z.load_model
def _slow(*a, **k):
    lm = _orig(*a, **k)
    lm.model.register_forward_pre_hook(lambda mod, inp: time.sleep(0.3))
    return lm
Z.load_model = _slow
from attnprobe.cli import main
sys.argv = ["attnprobe"] + sys.argv[1:]
main()
"""


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_run_resumes_to_the_same_numbers(env: dict[str, Path], sig: int) -> None:
    tree = make_imagenet_c_tree(env["root"] / "inc", per_class=2)  # 4 cells x 6 images, chunks of 2 -> 12 chunks
    common = ["mce", "--model", "tiny_vit", "--ckpt", str(env["ckpt"]), "--data", str(tree), "-c", "gaussian_noise",
              "-c", "fog", "-s", "1", "-s", "2", "--workers", "0", "--batch-size", "1", "--chunk-size", "2", "--json"]
    killed = env["root"] / "killed"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_MAIN, *common, "--out", str(killed)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ})
    deadline = time.time() + 120
    while committed_chunks(killed) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    at_kill = committed_chunks(killed)
    assert 3 <= at_kill < 12
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and b"rerun the same command to resume" in err

    code, out, err2 = run(*common, "--out", str(killed))
    assert code == 0, err2
    resumed = json.loads(out)["results"][0]
    code, out, _ = run(*common, "--out", str(env["root"] / "straight"))
    straight = json.loads(out)["results"][0]
    strip = [{k: v for k, v in c.items() if k != "cached"} for c in resumed["cells"]]
    assert strip == [{k: v for k, v in c.items() if k != "cached"} for c in straight["cells"]]
    assert [c["n"] for c in resumed["cells"]] == [6, 6, 6, 6]
    assert committed_chunks(killed) == 12  # every chunk exactly once


def test_two_models_in_one_run_and_ckpt_pairing(env: dict[str, Path]) -> None:
    tree = make_imagenet_c_tree(env["root"] / "inc", per_class=1)
    other = save_tiny_checkpoint(env["root"] / "other.pth", seed=1)
    base = ["mce", "--data", str(tree), "-c", "fog", "-s", "1", "--out", str(env["root"] / "out"), "--workers", "0"]
    code, out, err = run(*base, "--model", "tiny_vit", "--ckpt", str(env["ckpt"]), "--model", "tiny_vit",
                         "--ckpt", str(other), "--json")
    assert code == 0, err
    results = json.loads(out)["results"]
    assert len(results) == 2 and results[0]["checkpoint_sha256"] != results[1]["checkpoint_sha256"]
    code, _, err = run(*base, "--model", "tiny_vit", "--model", "tiny_vit", "--ckpt", str(other))
    assert code == 2 and "one --ckpt per --model" in err
    code, _, err = run(*base, "--model", "tiny_vit", "--ckpt", str(env["root"] / "missing.pth"))
    assert code == 2 and "checkpoint not found" in err


def test_unreadable_images_are_counted_and_strict_fails(env: dict[str, Path]) -> None:
    tree = make_imagenet_c_tree(env["root"] / "inc", per_class=1)
    for f in (tree / "fog" / "2").glob("*/*.JPEG"):
        f.write_bytes(b"truncated")  # a whole cell of unreadable files
    args = ["mce", "--model", "tiny_vit", "--ckpt", str(env["ckpt"]), "--data", str(tree), "-c", "fog",
            "--severity", "1", "--severity", "2", "--workers", "0"]
    code, out, err = run(*args, "--out", str(env["root"] / "a"), "--json")
    assert code == 0, err
    cells = json.loads(out)["results"][0]["cells"]  # valid JSON: no NaN for the empty cell
    assert [(c["n"], c["skipped"]) for c in cells] == [(3, 0), (0, 3)] and cells[1]["top1_error"] is None
    assert err.count("skipped unreadable") == 3
    code, out, _ = run(*args, "--out", str(env["root"] / "a"))
    assert code == 0 and "3 unreadable image(s) skipped" in out
    code, _, err = run(*args, "--out", str(env["root"] / "b"), "--strict")
    assert code == 2 and "unreadable image" in err and "--strict" in err


def test_fresh_recomputes(env: dict[str, Path]) -> None:
    tree = make_imagenet_c_tree(env["root"] / "inc", per_class=1)
    args = ["mce", "--model", "tiny_vit", "--ckpt", str(env["ckpt"]), "--data", str(tree), "-c", "fog", "-s", "1",
            "--out", str(env["root"] / "out"), "--workers", "0", "--json"]
    first = json.loads(run(*args)[1])["results"][0]["cells"][0]
    again = json.loads(run(*args)[1])["results"][0]["cells"][0]
    fresh = json.loads(run(*args, "--fresh")[1])["results"][0]["cells"][0]
    assert not first["cached"] and again["cached"] and not fresh["cached"]
    assert first["top1_error"] == again["top1_error"] == fresh["top1_error"]
