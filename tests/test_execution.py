"""Precision, channels_last, torch.compile and the device input path inside the evaluation loop (CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from attnprobe.engine import CellSpec, run_cells
from attnprobe.engine.execution import Execution, parse_precision, precision_of, tag_preprocessing
from attnprobe.errors import UserError
from attnprobe.store import CellKey, ResultsStore

CPU = torch.device("cpu")


class SignSet(torch.utils.data.Dataset):
    """Inputs whose right class is clear in any precision: x = e_y * 4 + small noise."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        g = torch.Generator().manual_seed(i)
        y = i % 5
        pred = y if i % 4 else (y + 1) % 5
        return nn.functional.one_hot(torch.tensor(pred), 5).float() * 4 + 0.01 * torch.randn(5, generator=g), y


def test_precision_names_and_key_tags() -> None:
    assert parse_precision(None) == "fp32" and parse_precision("BF16") == "bf16" and parse_precision("half") == "fp16"
    assert parse_precision(torch.bfloat16) == "bf16" and parse_precision(torch.float32) == "fp32"
    with pytest.raises(UserError, match="unknown precision 'fp8'"):
        parse_precision("fp8")
    assert tag_preprocessing("size=224", "fp32") == "size=224"  # fp32 keys are those of earlier stores
    assert tag_preprocessing("size=224", torch.bfloat16) == "size=224;precision=bf16"
    assert precision_of("size=224;precision=bf16;decode=nvjpeg") == "bf16" and precision_of("size=224") == "fp32"


def test_precision_check_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    Execution("bf16").check(CPU)
    Execution("fp32").check(CPU)
    import attnprobe.engine.execution as E

    monkeypatch.setattr(E, "_autocast_enabled", lambda device_type: False)  # a torch whose CPU autocast lacks fp16
    with pytest.raises(UserError, match="--precision fp16 is not supported on cpu"):
        Execution("fp16").check(CPU)


def test_reduced_precision_results_are_stored_apart(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(5, 5, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(5))
    key = CellKey("eye", "random-init", "test", "signs", "size=5", "clean", 0)
    with ResultsStore(tmp_path) as store:
        [a] = run_cells(model, [CellSpec(key, SignSet(40))], store, batch_size=16, workers=0)
        [b] = run_cells(model, [CellSpec(key, SignSet(40))], store, batch_size=16, workers=0, precision="bf16")
        [c] = run_cells(model, [CellSpec(key, SignSet(40))], store, batch_size=16, workers=0, precision="bf16")
        rows = store.cells(task="test")
    assert a.key == key and b.key.preprocessing == "size=5;precision=bf16"
    assert a.correct == b.correct == 30 and not b.cached and c.cached  # bf16 never reuses fp32 counts
    assert sorted(r["preprocessing"] for r in rows) == ["size=5", "size=5;precision=bf16"]
    info = {r["preprocessing"]: r["info"] for r in rows}
    assert info["size=5"]["precision"] == "fp32" and info["size=5;precision=bf16"]["precision"] == "bf16"
    assert info["size=5"]["decode"] == "pil" and info["size=5"]["compile"] is False


def test_channels_last_gives_the_same_predictions() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    images = torch.randn(24, 3, 16, 16)
    ds = torch.utils.data.TensorDataset(images, torch.arange(24) % 4)
    key = CellKey("conv", "random-init", "test", "rand", "none", "clean", 0)
    ex = Execution(channels_last=True)
    assert ex.uses_channels_last(model, CPU) and not Execution().uses_channels_last(model, CPU)
    assert Execution().uses_channels_last(model, torch.device("cuda", 0))  # auto: on CUDA for conv models
    [plain] = run_cells(model, [CellSpec(key, ds)], None, batch_size=8, workers=0)
    [nhwc] = run_cells(model, [CellSpec(key, ds)], None, batch_size=8, workers=0, channels_last=True)
    assert plain.correct == nhwc.correct


def synthetic_folder(root: Path, n: int, size: tuple[int, int] = (80, 72)) -> Path:
    """The demo models' synthetic validation images as JPEGs in canonical class folders (labels 0-9), resized so
    that the evaluation transform has real work to do."""
    from attnprobe.data.synthetic import SyntheticShapes
    from attnprobe.protocol import imagenet_wnids

    wnids = imagenet_wnids()
    ds = SyntheticShapes("val", num_images=n)
    for i in range(n):
        img, label = ds[i]
        path = root / wnids[label] / f"val_{i:05d}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        img.resize(size, Image.BICUBIC).save(path, quality=90)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("name", ["demo_vit_baseline", "demo_vit_tapadl"])
def test_device_decode_gives_the_same_predictions_on_the_demo_models(tmp_path: Path, name: str) -> None:
    from attnprobe.benchmarks.clean import clean_cell
    from attnprobe.zoo import load_model

    lm = load_model(name, pretrained=True)
    spec = clean_cell(lm, synthetic_folder(tmp_path / "val", 60))
    with ResultsStore(tmp_path / "cpu") as s1, ResultsStore(tmp_path / "dev") as s2, \
            ResultsStore(tmp_path / "workers") as s3:
        [a] = run_cells(lm.model, [spec], s1, batch_size=16, workers=0, decode="cpu")
        [b] = run_cells(lm.model, [spec], s2, batch_size=16, workers=2, decode="device")
        [c] = run_cells(lm.model, [spec], s3, batch_size=16, workers=0, decode="workers")
        bits = [s.sample_correctness(r.key).tolist() for s, r in ((s1, a), (s2, b), (s3, c))]
        decoders = [s.cells(task="clean")[0]["info"]["decode"] for s in (s1, s2, s3)]
    assert a.key == b.key == c.key  # on CPU the device paths give PIL's tensors: same key, same numbers
    assert a.n == b.n == c.n == 60 and a.correct == b.correct == c.correct and a.correct > 20
    assert bits[0] == bits[1] == bits[2]
    assert decoders == ["pil", "libjpeg-turbo (main process) + cpu transform", "pil (workers) + cpu transform"]


def test_device_decode_on_a_released_tree_with_unreadable_files(tmp_path: Path) -> None:
    from attnprobe.benchmarks.imagenet_c import evaluate_imagenet_c
    from attnprobe.zoo import load_model
    from tests.imagenet_c_fixtures import make_imagenet_c_tree, make_models_dir

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ATTNPROBE_MODELS_DIR", str(make_models_dir(tmp_path / "models")))
        lm = load_model("tiny_vit", pretrained=True)
    tree = make_imagenet_c_tree(tmp_path / "inc", per_class=3)
    (tree / "fog" / "1" / "n01440764" / "ILSVRC2012_val_00000001.JPEG").write_bytes(b"\xff\xd8\xff broken")
    kw = dict(data=tree, corruptions=["gaussian_noise", "fog"], severities=[1, 2], batch_size=4, workers=0)
    a = evaluate_imagenet_c(lm, None, decode="cpu", **kw)
    b = evaluate_imagenet_c(lm, None, decode="device", **kw)
    assert [(r.n, r.correct, r.skipped) for r in a.cells] == [(r.n, r.correct, r.skipped) for r in b.cells]
    assert sum(r.skipped for r in b.cells) == 1 and b.preprocessing == a.preprocessing


@pytest.mark.slow
def test_compile_gives_the_eager_predictions(tmp_path: Path) -> None:
    from attnprobe.benchmarks.clean import clean_cell
    from attnprobe.zoo import load_model

    lm = load_model("demo_vit_baseline", pretrained=True)
    spec = clean_cell(lm, synthetic_folder(tmp_path / "val", 24))
    with ResultsStore(tmp_path / "eager") as s1, ResultsStore(tmp_path / "compiled") as s2:
        [a] = run_cells(lm.model, [spec], s1, batch_size=12, workers=0)
        [b] = run_cells(lm.model, [spec], s2, batch_size=12, workers=0, compile=True)
        assert s1.sample_correctness(a.key).tolist() == s2.sample_correctness(b.key).tolist()
        info = s2.cells(task="clean")[0]["info"]
    assert a.key == b.key and info["compile"] is True


def test_cli_precision_and_decode_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from attnprobe.cli import app
    from tests.imagenet_c_fixtures import make_imagenet_c_tree, make_models_dir

    monkeypatch.setenv("ATTNPROBE_MODELS_DIR", str(make_models_dir(tmp_path / "models")))
    tree = make_imagenet_c_tree(tmp_path / "inc", per_class=2)
    base = ["mce", "--model", "tiny_vit", "--data", str(tree), "-c", "fog", "-s", "1", "--workers", "0",
            "--out", str(tmp_path / "out"), "--json"]
    runner = CliRunner()
    fp32 = runner.invoke(app, base + ["--decode", "device"])
    bf16 = runner.invoke(app, base + ["--precision", "bf16", "--decode", "device"])
    assert fp32.exit_code == 0 and bf16.exit_code == 0, fp32.stderr + bf16.stderr
    a, b = json.loads(fp32.stdout)["results"][0], json.loads(bf16.stdout)["results"][0]
    assert b["preprocessing"] == a["preprocessing"] + ";precision=bf16" and not b["cells"][0]["cached"]
    assert b["cells"][0]["n"] == a["cells"][0]["n"] == 6
    for bad, msg in ((["--decode", "gpu"], "--decode gpu needs a CUDA device"),
                     (["--precision", "fp8"], "unknown precision 'fp8'"),
                     (["--decode", "nvjpeg"], "unknown --decode")):
        res = runner.invoke(app, base + bad)
        assert res.exit_code == 2 and msg in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_diagnostics_precision_is_stored_apart(tmp_path: Path) -> None:
    from attnprobe import diagnostics as Dg
    from attnprobe.data.samples import sample_images
    from attnprobe.zoo import load_model

    lm = load_model("demo_vit_baseline", pretrained=True)
    images = sample_images()
    with ResultsStore(tmp_path) as store:
        fp32 = Dg.heads([Dg.ModelEntry.from_loaded(lm)], images, store=store)
        entry = Dg.ModelEntry.from_loaded(lm)
        entry.precision = "bf16"
        bf16 = Dg.heads([entry], images, store=store, keep_maps=1)
        datasets = {r["dataset"] for r in store.query("SELECT DISTINCT dataset FROM diagnostics")}
    assert fp32.results[0]["dataset"] == images.dataset
    assert bf16.results[0]["dataset"] == images.dataset + ";precision=bf16"
    assert datasets == {images.dataset, images.dataset + ";precision=bf16"}
    a, b = fp32.results[0]["head_similarity"], bf16.results[0]["head_similarity"]
    assert a is not None and b is not None and abs(a - b) < 0.02 and a != b
    assert all("-bf16" in Path(x["path"]).parent.name for x in bf16.artifacts)
    with pytest.raises(UserError, match="same precision"):
        Dg.heads([Dg.ModelEntry.from_loaded(lm), entry], images)
    assert np.isfinite(b)
