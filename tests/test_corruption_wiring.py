"""The corruption backend and recipe through the benchmarks, diagnostics and report: separate cells and series per
backend/recipe/engine version, the device corruption path equal to the host path, one source per report number."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from attnprobe.benchmarks.imagenet_c import evaluate_imagenet_c
from attnprobe.data import corruptions as C
from attnprobe.store import ResultsStore
from attnprobe.zoo import Preprocessing
from tests.test_benchmarks_imagenet_c import GreyOracle, Loaded, grey_tree

RUN = {"batch_size": 4, "workers": 0, "device": "cpu"}


def test_dataset_tags_round_trip() -> None:
    tagged = C.tag_corruption("images:ab12;precision=bf16", "torch-v2/imagenet-c")
    assert C.tagged_corruption(tagged) == "torch-v2/imagenet-c"
    assert C.untag_corruption(tagged) == "images:ab12;precision=bf16"
    assert C.tag_corruption(tagged, "reference-imagecorruptions-1.1.2") == \
        "images:ab12;precision=bf16;corruption=reference-imagecorruptions-1.1.2"
    assert C.tagged_corruption("images:ab12") is None and C.untag_corruption("images:ab12") == "images:ab12"
    assert C.choose_backend() == ("torch", "imagenet-c")
    assert C.choose_backend(None, None, default_recipe="imagecorruptions") == ("torch", "imagecorruptions")
    assert C.choose_backend("reference") == ("reference", "imagecorruptions")


def test_each_backend_and_recipe_is_its_own_cell_and_report_never_mixes_them(tmp_path: Path) -> None:
    from attnprobe.report.loaders import cells_frame
    from attnprobe.report.sources import choose_group, group_cells
    from attnprobe.report.summary import counting_summary

    val = grey_tree(tmp_path / "val", per_class=1, size=40)
    loaded = Loaded(GreyOracle())
    kw = {"clean": val, "on_the_fly": True, "corruptions": ["contrast"], "severities": [2], **RUN}
    with ResultsStore(tmp_path / "out") as store:
        torch_a = evaluate_imagenet_c(loaded, store, **kw)
        torch_b = evaluate_imagenet_c(loaded, store, **kw)
        ref = evaluate_imagenet_c(loaded, store, corruption_backend="reference", **kw)
        ic = evaluate_imagenet_c(loaded, store, corruption_recipe="imagecorruptions", **kw)
        cells = cells_frame(store)
    assert not torch_a.cells[0].cached and torch_b.cells[0].cached  # the same backend: reused
    assert not ref.cells[0].cached and not ic.cells[0].cached  # another backend or recipe: computed anew
    datasets = {r.cells[0].key.dataset for r in (torch_a, ref, ic)}
    assert len(datasets) == 3 and all(d.startswith("imagenet_c_otf:") for d in datasets)
    assert any("torch-v2/imagenet-c" in n for n in torch_a.notes)
    infos = cells[cells["task"] == "imagenet_c"]["info"].tolist()
    assert sorted(i["corruption_id"] for i in infos) == sorted(
        [C.corruption_id("torch"), C.corruption_id("reference"), C.corruption_id("torch", "imagecorruptions")])
    # the report: three sources, each its own group; a table number comes from one of them, and it says so
    groups = group_cells(cells)[("grey_oracle", "imagenet_c")]
    assert len(groups) == 3 and len({g.source.backend for g in groups}) == 3
    assert all(len(g.cells) == 1 for g in groups)
    assert choose_group(groups) in groups
    summary = counting_summary(cells, n_resamples=10)
    assert any("3 data sources" in n and "never a mix" in n for n in summary.notes)
    engine_ic = next(g for g in groups if g.source.backend == C.corruption_id("torch", "imagecorruptions"))
    assert "backend torch-v2/imagecorruptions" in engine_ic.source.words()


def test_device_corruption_path_equals_the_host_path(tmp_path: Path) -> None:
    from attnprobe.data.encoded import collate
    from attnprobe.data.imagenet_c import OnTheFlyCorruption
    from attnprobe.engine.device_input import DeviceInput

    val = grey_tree(tmp_path / "val", per_class=1, size=300)
    from PIL import Image
    from skimage import data as skd  # a real photo among the grey squares: textures matter for blurs and noise

    Image.fromarray(skd.astronaut()).save(val / "n01440764" / "astronaut.JPEG", quality=90)
    pre = Preprocessing(input_size=224, interpolation="bicubic", crop_pct=0.875)
    for name in ("gaussian_noise", "glass_blur", "jpeg_compression"):
        ds = OnTheFlyCorruption(val, name, 3, pre)
        host = torch.stack([ds[i][0] for i in range(len(ds))])
        for in_worker in (False, True):  # libjpeg-turbo in the main process, or PIL in the workers
            enc = ds.encoded(progressive=True, in_worker=in_worker)
            x_enc, _, ok_enc = collate([enc[i] for i in range(len(ds))])
            x, ok = DeviceInput(enc.recipe, torch.device("cpu"), enc.stages)(x_enc, ok_enc)
            assert bool(ok.all()) and torch.equal(x, host), (name, in_worker)
    # the device path is for the engine at 224 px only: the reference backend and other input sizes stay on the CPU
    assert OnTheFlyCorruption(val, "fog", 1, pre, backend="reference").encoded() is None
    assert OnTheFlyCorruption(val, "fog", 1, Preprocessing(input_size=384)).encoded() is None


def test_engine_loop_corrupts_on_the_device_with_a_device_decode(tmp_path: Path) -> None:
    val = grey_tree(tmp_path / "val", per_class=2, size=64)
    loaded = Loaded(GreyOracle(), preprocessing=Preprocessing(input_size=224, interpolation="bilinear", crop_pct=1.0,
                                                           mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)))
    kw = {"clean": val, "on_the_fly": True, "corruptions": ["brightness", "shot_noise"], "severities": [4], **RUN}
    with ResultsStore(tmp_path / "a") as a, ResultsStore(tmp_path / "b") as b:
        host = evaluate_imagenet_c(loaded, a, decode="cpu", **kw)
        dev = evaluate_imagenet_c(loaded, b, decode="workers", **kw)
        infos = [c["info"] for c in b.cells(task="imagenet_c")]
    assert [(c.n, c.correct) for c in host.cells] == [(c.n, c.correct) for c in dev.cells]
    assert [c.key for c in host.cells] == [c.key for c in dev.cells]  # the same pixels: the same store cells
    assert all("transform" in str(i["decode"]) for i in infos)  # the device input path ran (and corrupted)


@pytest.fixture()
def tiny_vit(monkeypatch: pytest.MonkeyPatch) -> None:
    import timm

    from attnprobe.zoo import LoadedModel

    def load_model(name: str, checkpoint: str | None = None, **_: object) -> LoadedModel:
        torch.manual_seed(0)
        model = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=2, num_classes=5).eval()
        return LoadedModel(model=model, name=name, arch=name, checkpoint_sha256="random-init",
                           checkpoint_path=checkpoint, preprocessing=Preprocessing(input_size=32, crop_pct=0.875))

    monkeypatch.setattr("attnprobe.zoo.load_model", load_model)


def test_diagnostics_series_per_backend_and_report_keeps_one(tmp_path: Path, tiny_vit: None) -> None:
    import json

    from typer.testing import CliRunner

    from attnprobe.cli import app
    from attnprobe.report.build import load_report_data

    out = tmp_path / "out"
    base = ["stability", "--model", "tiny_vit", "--ckpt", "-", "--n", "2", "-c", "fog", "-s", "2", "--out", str(out),
            "--json"]

    def stability(*extra: str) -> dict:
        res = CliRunner().invoke(app, base + list(extra))
        assert res.exit_code == 0, res.stderr
        return json.loads(res.stdout)["results"][0]

    a = stability()
    b = stability("--corruption-backend", "reference")
    c = stability()  # the torch series again: read back, not recomputed
    assert a["corruption_id"] == C.corruption_id() and b["corruption_id"].startswith("reference-imagecorruptions")
    assert a["dataset"] != b["dataset"] and C.untag_corruption(a["dataset"]) == C.untag_corruption(b["dataset"])
    assert a["mean_cosine"] != b["mean_cosine"] and c["mean_cosine"] == a["mean_cosine"]
    with ResultsStore(out) as store:
        rows = store.query("SELECT DISTINCT dataset FROM diagnostics WHERE metric = 'attention_cosine'")
        assert {r[0] for r in rows} == {a["dataset"], b["dataset"]}
        maps = store.artifacts(kind="attention_maps")
        data = load_report_data(store)
    assert len({m["abspath"] for m in maps}) == len(maps)  # the reference maps did not overwrite the engine's
    cos = data.diagnostics["attention_cosine"]
    assert set(cos["dataset"]) == {a["dataset"]}  # one source per series: the default engine's (same image count)
    assert any("fog severity 2" in n and "never a mix" in n for n in data.notes)
    assert {m.dataset for m in data.maps} == {C.untag_corruption(a["dataset"])}  # clean and corrupted maps pair up
    assert all(m.clean_path and m.corrupted_path and "reference" not in m.corrupted_path for m in data.maps)


def test_diagnostics_refuse_backend_options_without_a_corruption(tmp_path: Path, tiny_vit: None) -> None:
    from typer.testing import CliRunner

    from attnprobe.cli import app

    res = CliRunner().invoke(app, ["overfocus", "--model", "tiny_vit", "--ckpt", "-", "--corruption-recipe",
                                   "imagecorruptions", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "--corruption NAME" in res.stderr and not (tmp_path / "o").exists()


def test_one_corruption_source_keeps_the_larger_series() -> None:
    import pandas as pd

    from attnprobe.report.sources import one_corruption_source

    ref = C.tag_corruption("images:1", "reference-imagecorruptions-1.1.2")
    eng = C.tag_corruption("images:1", C.corruption_id())
    rows = [("m", "images:1", "clean", 0, f"i{i}", 0.5) for i in range(3)]
    rows += [("m", ref, "fog", 2, f"i{i}", 0.1) for i in range(3)] + [("m", eng, "fog", 2, "i0", 0.9)]
    rows += [("m", eng, "fog", 3, "i0", 0.7)]
    df = pd.DataFrame(rows, columns=["key", "dataset", "condition", "severity", "image", "value"])
    kept, notes = one_corruption_source(df, "attention_cosine")
    assert sorted(kept[kept["condition"] == "fog"]["dataset"].unique()) == sorted({ref, eng})
    assert set(kept[(kept["condition"] == "fog") & (kept["severity"] == 2)]["dataset"]) == {ref}  # 3 images > 1
    assert len(kept[kept["condition"] == "clean"]) == 3 and len(notes) == 1 and "never a mix" in notes[0]
    same, none = one_corruption_source(df[df["dataset"] != ref], "x")
    assert len(same) == len(df) - 3 and none == []
