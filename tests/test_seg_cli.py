"""`attnprobe seg` end to end on tiny synthetic Cityscapes / ACDC trees: JSON, tables, bad input (one line, exit 2,
nothing stored), resume after kill -9, torchrun sharding."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from attnprobe.cli import app
from attnprobe.data.cityscapes import CityscapesDataset
from attnprobe.data.synthetic_seg import DEMO_PIPELINE, write_acdc_tree, write_cityscapes_tree
from attnprobe.segmentation import mean_iou
from tests.imagenet_c_fixtures import TINY_CARD, committed_chunks
from tests.seg_fixtures import TinySeg, direct_predictions, register_tiny_seg, write_card

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("seg")
    return {"cs": write_cityscapes_tree(base / "cityscapes", num_train=1, num_val=6),
            "acdc": write_acdc_tree(base / "acdc", {"val": 2, "test": 2})}


@pytest.fixture()
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    register_tiny_seg()
    models = tmp_path / "models"
    write_card(models, "seg_a", 0)
    write_card(models, "seg_b", 1)
    (models / "clf.toml").write_text(TINY_CARD.replace('name = "tiny_vit"', 'name = "clf"'))
    monkeypatch.setenv("ATTNPROBE_MODELS_DIR", str(models))
    ckpts = {}
    for name, seed in (("seg_a", 0), ("seg_b", 1)):
        ckpts[name] = tmp_path / f"{name}.pth"
        torch.save(TinySeg(seed).state_dict(), ckpts[name])
    return {"root": tmp_path, "models": models, **ckpts}


def run(*args: str) -> tuple[int, str, str]:
    res = runner.invoke(app, list(args))
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.stdout, res.stderr


def _model_args(env: dict[str, Path], *names: str) -> list[str]:
    out = []
    for n in names:
        out += ["--model", n, "--ckpt", str(env[n])]
    return out


def test_clean_json_and_table(trees: dict[str, Path], env: dict[str, Path]) -> None:
    out = env["root"] / "out"
    base = ["seg", *_model_args(env, "seg_a", "seg_b"), "--set", "cityscapes", "--data", str(trees["cs"]),
            "--out", str(out), "--workers", "0"]
    code, stdout, err = run(*base, "--json")
    assert code == 0, err
    res = json.loads(stdout)["results"]
    ds = CityscapesDataset(trees["cs"], pipeline=DEMO_PIPELINE)
    for r, seed in zip(res, (0, 1)):
        want = mean_iou(*direct_predictions(TinySeg(seed).eval(), ds))
        assert r["miou"] == want["miou"] and r["cells"][0]["n"] == 6
        assert r["iou"]["road"] == (None if np.isnan(want["iou"][0]) else want["iou"][0])
        assert r["task"] == "cityscapes" and r["kept_predictions"] == 2
    assert res[0]["miou"] != res[1]["miou"]
    code, stdout, _ = run(*base, "--limit", "3")
    assert code == 0
    assert "Cityscapes val at" in stdout and "3 images per cell, --limit 3 subset" in stdout and "mIoU" in stdout
    assert "not comparable with full-set numbers" in stdout


def test_cityscapes_c_partial_table_and_acdc(trees: dict[str, Path], env: dict[str, Path]) -> None:
    out = env["root"] / "out"
    common = [*_model_args(env, "seg_a"), "--out", str(out), "--workers", "0"]
    code, stdout, err = run("seg", *common, "--set", "cityscapes-c", "--data", str(trees["cs"]), "--on-the-fly",
                            "-c", "fog", "-s", "1", "-s", "2")
    assert code == 0, err
    assert "generated on the fly" in stdout and "6 images per cell" in stdout and "partial table" in stdout
    code, stdout, err = run("seg", *common, "--set", "acdc", "--data", str(trees["acdc"]), "--json")
    assert code == 0, err
    r = json.loads(stdout)["results"][0]
    assert [c["condition"] for c in r["cells"]] == ["fog", "night", "rain", "snow"] and r["miou"] is not None
    code, stdout, err = run("seg", *common, "--set", "acdc", "--data", str(trees["acdc"]), "--split", "test",
                            "--condition", "night")
    assert code == 0, err
    assert "predictions zip" in stdout and "upload" in stdout
    assert len(list((out / "acdc_test").glob("*/*.png"))) == 2 and list((out / "acdc_test").glob("*.zip"))


def _damaged(trees: dict[str, Path], tmp: Path, how: str) -> Path:
    root = tmp / "cs"
    shutil.copytree(trees["cs"], root)
    labels = sorted((root / "gtFine" / "val").rglob("*_labelTrainIds.png"))
    images = sorted((root / "leftImg8bit" / "val").rglob("*.png"))
    if how == "no_gtfine":
        shutil.rmtree(root / "gtFine")
    elif how == "image_without_label":
        labels[0].unlink()
        for p in root.rglob(labels[0].name.replace("labelTrainIds", "labelIds")):
            p.unlink()
    elif how == "label_without_image":
        images[0].unlink()
    elif how == "label_size":
        Image.fromarray(np.zeros((32, 64), np.uint8)).save(labels[0])
    elif how == "corrupt_png":
        images[0].write_bytes(images[0].read_bytes()[:100])
    return root


@pytest.mark.parametrize(("how", "message"), [
    ("no_gtfine", "missing"),
    ("image_without_label", "have no label map"),
    ("label_without_image", "have no image"),
    ("label_size", "label maps must have their image's size"),
])
def test_bad_data_is_one_line_exit_2_nothing_stored(trees: dict[str, Path], env: dict[str, Path], how: str,
                                                    message: str) -> None:
    root = _damaged(trees, env["root"], how)
    out = env["root"] / "out"
    code, stdout, err = run("seg", *_model_args(env, "seg_a"), "--data", str(root), "--out", str(out))
    assert code == 2 and message in err and "Traceback" not in err and stdout == ""
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_corrupted_png_is_skipped_or_fails_with_strict(trees: dict[str, Path], env: dict[str, Path]) -> None:
    root = _damaged(trees, env["root"], "corrupt_png")
    out = env["root"] / "out"
    args = ["seg", *_model_args(env, "seg_a"), "--data", str(root), "--workers", "0", "--keep-predictions", "0"]
    code, stdout, err = run(*args, "--out", str(out / "strict"), "--strict")
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "unreadable image" in errors[0]
    with sqlite3.connect(out / "strict" / "results.sqlite") as con:
        assert con.execute("SELECT COUNT(*) FROM chunks").fetchone()[0] == 0
    code, stdout, err = run(*args, "--out", str(out / "lenient"), "--json")
    assert code == 0 and json.loads(stdout)["results"][0]["cells"][0]["skipped"] == 1


@pytest.mark.parametrize(("args", "message"), [
    (["--set", "acdc", "--condition", "hail"], "unknown ACDC condition 'hail'"),
    (["--set", "acdc", "--split", "train"], "unknown split"),
    (["--set", "cityscapes-c", "-c", "zoom", "--on-the-fly"], "unknown Cityscapes-C corruption"),
    (["--set", "cityscapes", "--condition", "fog"], "--condition does not apply"),
])
def test_bad_options_exit_2(trees: dict[str, Path], env: dict[str, Path], args: list[str], message: str) -> None:
    data = trees["acdc"] if "acdc" in args else trees["cs"]
    out = env["root"] / "out"
    code, _, err = run("seg", *_model_args(env, "seg_a"), "--data", str(data), "--out", str(out), *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and not out.exists()


def test_classification_model_is_refused_before_anything_is_stored(trees: dict[str, Path],
                                                                    env: dict[str, Path]) -> None:
    out = env["root"] / "out"
    code, _, err = run("seg", "--model", "clf", "--data", str(trees["cs"]), "--out", str(out))
    assert code == 2 and "clf is a classification model" in err and not out.exists()
    code, _, err = run("seg", "--model", "vit_tiny_patch16_224", "--ckpt", "-", "--data", str(trees["cs"]),
                       "--out", str(out))
    assert code == 2 and "is a classification model" in err
    with sqlite3.connect(out / "results.sqlite") as con:  # refused before the model was recorded
        assert con.execute("SELECT COUNT(*) FROM models").fetchone()[0] == 0


def test_tiny_fan_segformer_end_to_end_and_checkpoint_mixups(trees: dict[str, Path], env: dict[str, Path]) -> None:
    from attnprobe import zoo
    from tests.seg_fixtures import TINY_FAN, write_fan_card

    write_fan_card(env["models"], "fan_seg_tiny")
    shutil.copy(REPO / "models" / "fan_b_tapadl.toml", env["models"] / "fan_b_tapadl.toml")  # before cards are cached
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", zoo.RandomWeightsWarning)
        seg = zoo.load_model("fan_seg_tiny", pretrained=False).model
    torch.save(seg.state_dict(), env["root"] / "seg.pth")
    out = env["root"] / "out"
    code, stdout, err = run("seg", "--model", "fan_seg_tiny", "--ckpt", str(env["root"] / "seg.pth"), "--data",
                            str(trees["cs"]), "--out", str(out), "--workers", "0", "--json")
    assert code == 0, err
    r = json.loads(stdout)["results"][0]
    assert r["cells"][0]["n"] == 6 and r["miou"] is not None and "slide:crop=64x64:stride=48x48" in r["preprocessing"]
    # a classification checkpoint for a segmentation model, and the reverse: one line naming the problem, exit 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", zoo.RandomWeightsWarning)
        cls = zoo.load_model("fan_b_tapadl", pretrained=False,
                             **{k: v for k, v in TINY_FAN.items() if k not in ("decoder_embed_dim", "head_channels")})
    torch.save(cls.model.state_dict(), env["root"] / "cls.pth")
    code, _, err = run("seg", "--model", "fan_seg_tiny", "--ckpt", str(env["root"] / "cls.pth"), "--data",
                       str(trees["cs"]), "--out", str(env["root"] / "o2"))
    assert code == 2 and "not a segmentation checkpoint" in err and "decode_head" in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = run("clean", "--model", "fan_b_tapadl", "--ckpt", str(env["root"] / "seg.pth"), "--data",
                       str(trees["cs"]), "--out", str(env["root"] / "o3"))
    assert code == 2 and "is a segmentation checkpoint" in err and len(err.strip().splitlines()) == 1
    code, _, err = run("seg", "--model", "fan_b_tapadl", "--data", str(trees["cs"]), "--out", str(env["root"] / "o4"))
    assert code == 2 and "fan_b_tapadl is a classification model" in err and not (env["root"] / "o4").exists()


def test_user_error_from_a_loader_worker_is_one_line() -> None:
    from attnprobe.cli._common import one_line
    from attnprobe.errors import UserError

    class Bad(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 1

        def __getitem__(self, i: int) -> None:
            raise UserError("label map x.png is 4x4 but its image y.png is 8x8; label maps must have their image's "
                            "size")

    with pytest.raises(UserError) as e:
        next(iter(torch.utils.data.DataLoader(Bad(), num_workers=1)))
    assert "Traceback" in str(e.value)
    assert one_line(e.value) == "label map x.png is 4x4 but its image y.png is 8x8; label maps must have their " \
                                "image's size"
    assert one_line(UserError("plain")) == "plain"


# -- resume after kill -9, torchrun ----------------------------------------------------------------------------------
MAIN = """
import sys, time
sys.path.insert(0, {repo!r})
from tests.seg_fixtures import TinySeg, register_tiny_seg
register_tiny_seg()
if {slow!r}:
    _fwd = TinySeg.forward
    TinySeg.forward = lambda self, x: (time.sleep(0.05), _fwd(self, x))[1]
from attnprobe.cli import main
sys.argv = ["attnprobe"] + sys.argv[1:]
main()
"""


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_numbers(trees: dict[str, Path], env: dict[str, Path]) -> None:
    script = env["root"] / "main.py"
    script.write_text(MAIN.format(repo=str(REPO), slow=True))
    common = ["seg", *_model_args(env, "seg_a"), "--set", "cityscapes-c", "--data", str(trees["cs"]), "--on-the-fly",
              "-c", "fog", "-c", "gaussian_noise", "-s", "1", "-s", "2", "--workers", "0", "--batch-size", "1",
              "--chunk-size", "2", "--keep-predictions", "0", "--json"]  # 4 cells x 6 images, chunks of 2: 12 chunks
    killed = env["root"] / "killed"
    proc = subprocess.Popen([sys.executable, str(script), *common, "--out", str(killed)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE,
                            env={**os.environ, "ATTNPROBE_MODELS_DIR": os.environ["ATTNPROBE_MODELS_DIR"]})
    deadline = time.time() + 120
    while committed_chunks(killed) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert 3 <= committed_chunks(killed) < 12
    code, stdout, err = run(*common, "--out", str(killed))
    assert code == 0, err
    resumed = json.loads(stdout)["results"][0]
    code, stdout, _ = run(*common, "--out", str(env["root"] / "straight"))
    straight = json.loads(stdout)["results"][0]
    strip = [{k: v for k, v in c.items() if k != "cached"} for c in resumed["cells"]]
    assert strip == [{k: v for k, v in c.items() if k != "cached"} for c in straight["cells"]]
    assert [c["n"] for c in resumed["cells"]] == [6, 6, 6, 6] and committed_chunks(killed) == 12


@pytest.mark.slow
def test_torchrun_equals_single_process(trees: dict[str, Path], env: dict[str, Path]) -> None:
    from tests.test_distributed import _free_port

    script = env["root"] / "main.py"
    script.write_text(MAIN.format(repo=str(REPO), slow=False))
    args = ["seg", *_model_args(env, "seg_a"), "--set", "acdc", "--data", str(trees["acdc"]), "--condition", "fog",
            "--condition", "snow", "--workers", "0", "--batch-size", "1", "--chunk-size", "1", "--json"]
    dist = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           f"--master_port={_free_port()}", str(script), *args, "--out", str(env["root"] / "dist")],
                          capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert dist.returncode == 0, dist.stderr[-3000:]
    code, stdout, err = run(*args, "--out", str(env["root"] / "single"))
    assert code == 0, err
    a, b = json.loads(dist.stdout)["results"][0], json.loads(stdout)["results"][0]
    assert [c["miou"] for c in a["cells"]] == [c["miou"] for c in b["cells"]] and a["iou"] == b["iou"]
    assert [c["n"] for c in a["cells"]] == [2, 2]
