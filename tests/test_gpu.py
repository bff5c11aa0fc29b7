"""CUDA checks of the device input path and reduced precision (`pytest -m gpu`; skipped by default and without CUDA).

    .venv/bin/python -m pytest -q -m gpu tests/test_gpu.py -s      # -s prints the measured pixel differences
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attnprobe.data.encoded import collate
from attnprobe.data.folders import ImageFolderDataset
from attnprobe.engine import run_cells
from attnprobe.engine.device_input import DeviceInput, decode_jpegs
from attnprobe.store import ResultsStore
from tests.device_input_fixtures import photo, write_mixed_folder

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
CUDA = torch.device("cuda")


def _pixels(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img.convert("RGB")).copy()).permute(2, 0, 1)


def test_nvjpeg_pixels_are_close_to_pil() -> None:
    """nvJPEG is not libjpeg: measure how far its pixels are from PIL's (why its results get their own key)."""
    diffs = []
    for name in ("chelsea", "coffee", "astronaut", "rocket"):
        for size in (None, (224, 224)):
            buf = io.BytesIO()
            photo(name, size).save(buf, "JPEG", quality=85)
            data = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
            [gpu] = decode_jpegs([data], CUDA)
            ref = _pixels(Image.open(io.BytesIO(buf.getvalue())))
            diffs.append((gpu.cpu().int() - ref.int()).abs().flatten())
    d = torch.cat(diffs).float()
    print(f"nvJPEG vs PIL: max {int(d.max())} levels, 99.9th pct {float(d.quantile(0.999)):.1f}, "
          f"mean {float(d.mean()):.3f}, identical pixels {float((d == 0).float().mean()):.1%}")
    assert float(d.mean()) < 2.0  # torchvision's own bound between nvJPEG and libjpeg


@pytest.mark.parametrize("in_worker", [True, False])
def test_device_transform_on_cuda(tmp_path: Path, in_worker: bool) -> None:
    """workers path: bit-identical to the CPU path on CUDA too; gpu path: within nvJPEG's differences."""
    from attnprobe.data.imagenet_c import CleanInput
    from attnprobe.zoo import Preprocessing

    write_mixed_folder(tmp_path, small=False)
    ds = ImageFolderDataset(tmp_path, CleanInput(Preprocessing(input_size=224, crop_pct=0.875)))
    enc = ds.encoded(in_worker=in_worker)
    batch, _, ok = collate([enc[i] for i in range(len(enc))])
    x, readable = DeviceInput(enc.recipe, CUDA)(batch, ok)
    ref = [ds[i] for i in range(len(ds))]
    assert readable.tolist() == [r[2] for r in ref]
    got = torch.stack([x[i].cpu() for i in range(len(ref)) if ref[i][2]])
    want = torch.stack([r[0] for r in ref if r[2]])
    if in_worker:
        assert torch.equal(got, want)
    else:
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        levels = ((got - want) * std * 255).abs()
        print(f"gpu path vs CPU path: max {float(levels.max()):.1f} levels, mean {float(levels.mean()):.3f}")
        assert float(levels.mean()) < 2.0


@pytest.mark.parametrize("decode", ["workers", "gpu"])
def test_demo_model_predictions_on_cuda(tmp_path: Path, decode: str) -> None:
    from attnprobe.benchmarks.clean import clean_cell
    from attnprobe.zoo import load_model
    from tests.test_execution import synthetic_folder

    lm = load_model("demo_vit_baseline", pretrained=True)
    spec = clean_cell(lm, synthetic_folder(tmp_path / "val", 300))
    with ResultsStore(tmp_path / "cpu") as s1, ResultsStore(tmp_path / "gpu") as s2:
        [a] = run_cells(lm.model.cpu(), [spec], s1, batch_size=100, workers=2, decode="cpu", device="cpu")
        [b] = run_cells(lm.model, [spec], s2, batch_size=100, workers=2, decode=decode, device="cuda")
        bits_a, bits_b = s1.sample_correctness(a.key), s2.sample_correctness(b.key)
    same = float((bits_a == bits_b).mean())
    print(f"{decode}: CPU {a.correct}/{a.n} correct, CUDA {b.correct}/{b.n}, same per-image outcome {same:.1%}")
    if decode == "workers":
        assert b.key == a.key and same >= 0.99  # same pixels; only GPU vs CPU arithmetic differs
    else:
        assert b.key.preprocessing.endswith(";decode=nvjpeg") and same >= 0.97


def test_bf16_and_fp16_on_cuda(tmp_path: Path) -> None:
    from attnprobe.benchmarks.clean import clean_cell
    from attnprobe.zoo import load_model
    from tests.test_execution import synthetic_folder

    lm = load_model("demo_vit_baseline", pretrained=True)
    spec = clean_cell(lm, synthetic_folder(tmp_path / "val", 200))
    res = {p: run_cells(lm.model, [spec], None, batch_size=100, workers=2, device="cuda", precision=p,
                        channels_last=True, compile=p == "bf16")[0] for p in ("fp32", "bf16", "fp16")}
    print({p: (r.correct, r.key.preprocessing.rsplit(";", 1)[-1]) for p, r in res.items()})
    assert res["bf16"].key.preprocessing.endswith(";precision=bf16")
    assert all(abs(r.correct - res["fp32"].correct) <= 6 for r in res.values())


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_torchrun_nccl_equals_single_process(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from tests.imagenet_c_fixtures import make_imagenet_c_tree, make_models_dir, save_tiny_checkpoint
    from tests.test_distributed import _free_port

    tree = make_imagenet_c_tree(tmp_path / "inc", per_class=20)
    env = {**os.environ, "ATTNPROBE_MODELS_DIR": str(make_models_dir(tmp_path / "models"))}
    args = ["-m", "attnprobe", "mce", "--model", "tiny_vit", "--ckpt", str(save_tiny_checkpoint(tmp_path / "t.pth")),
            "--data", str(tree), "--device", "cuda", "--decode", "workers", "--chunk-size", "7", "--json"]
    runs = [subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}",
                            f"--master_port={_free_port()}", *args, "--out", str(tmp_path / f"out{n}")],
                           capture_output=True, text=True, env=env, timeout=600) for n in (1, 2)]
    assert all(r.returncode == 0 for r in runs), runs[-1].stderr[-2000:]
    one, two = (json.loads(r.stdout)["results"][0]["cells"] for r in runs)
    assert [(c["n"], c["correct"]) for c in one] == [(c["n"], c["correct"]) for c in two]
