"""`attnprobe stability / overfocus / heads / attention`: JSON shape, resume, same inputs for every model, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from torch import nn
from typer.testing import CliRunner

from attnprobe.cli import app
from attnprobe.zoo import LoadedModel, Preprocessing

runner = CliRunner()

TINY = {
    "tiny_vit": lambda: timm.create_model("vit_tiny_patch16_224", img_size=32, depth=2, num_classes=5),
    "tiny_vit_b": lambda: timm.create_model("vit_tiny_patch16_224", img_size=32, depth=3, num_heads=4,
                                            num_classes=5),
    "tiny_swin": lambda: timm.create_model("swin_tiny_patch4_window7_224", img_size=56, depths=(2,),
                                           num_heads=(2,), embed_dim=16, num_classes=5),
    "cnn": lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)),
}
SIZES = {"tiny_swin": 56}


@pytest.fixture(autouse=True)
def tiny_zoo(monkeypatch: pytest.MonkeyPatch) -> None:
    """`load_model` builds tiny random models so the commands run in a second on CPU."""

    def load_model(name: str, checkpoint: str | None = None, **_: object) -> LoadedModel:
        if name not in TINY:
            from attnprobe.errors import UserError

            raise UserError(f"unknown model {name!r}")
        torch.manual_seed(0)
        model = TINY[name]().eval()
        pre = Preprocessing(input_size=SIZES.get(name, 32), crop_pct=0.875)
        return LoadedModel(model=model, name=name, arch=name, checkpoint_sha256="random-init",
                           checkpoint_path=checkpoint, preprocessing=pre)

    monkeypatch.setattr("attnprobe.zoo.load_model", load_model)


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def run_json(*args: str) -> dict:
    code, out, err = invoke(*args, "--json")
    assert code == 0, err
    return json.loads(out)  # stdout holds the JSON and nothing else


def test_stability_json_two_models_same_images(tmp_path: Path) -> None:
    payload = run_json("stability", "--model", "tiny_vit", "--model", "tiny_vit_b", "--corruption", "gaussian_noise",
                       "--severity", "2", "--n", "2", "--out", str(tmp_path))
    results = payload["results"]
    assert [r["model"] for r in results] == ["tiny_vit", "tiny_vit_b"]
    for r, depth, heads in zip(results, (2, 3), (3, 4)):
        assert r["corruption"] == "gaussian_noise" and r["severity"] == 2 and r["n_images"] == 2
        assert [lay["layer"] for lay in r["layers"]] == list(range(depth))
        for lay in r["layers"]:
            assert 0.0 < lay["mean_cosine"] <= 1.0 + 1e-6
            assert len(lay["per_head"]) == heads
            assert lay["name"] == f"blocks.{lay['layer']}.attn"
    # per image, layer and head values are in the store
    from attnprobe.store import ResultsStore

    rows = ResultsStore(tmp_path).diagnostics(metric="attention_cosine", model="tiny_vit")
    assert len(rows) == 2 * 2 * 3
    assert {r["image"] for r in rows} == {"chelsea", "coffee"}


def test_models_see_identical_corrupted_inputs(tmp_path: Path) -> None:
    run_json("stability", "--model", "tiny_vit", "--model", "tiny_vit_b", "--severity", "5", "--n", "1",
             "--keep-maps", "1", "--out", str(tmp_path))
    from attnprobe.diagnostics import load_maps
    from attnprobe.store import ResultsStore

    arts = ResultsStore(tmp_path).artifacts(kind="attention_maps", condition="gaussian_noise")
    assert len(arts) == 2
    a, b = (load_maps(x["abspath"]) for x in arts)
    np.testing.assert_array_equal(a["image"], b["image"])
    assert a["meta"]["seed"] == b["meta"]["seed"] is not None
    clean = ResultsStore(tmp_path).artifacts(kind="attention_maps", condition="clean", model="tiny_vit")
    assert not np.array_equal(load_maps(clean[0]["abspath"])["image"], a["image"])


def test_rerun_resumes_and_fresh_recomputes(tmp_path: Path) -> None:
    from attnprobe.store import ResultsStore

    args = ("stability", "--model", "tiny_vit", "--n", "2", "--out", str(tmp_path))
    first = run_json(*args)
    n_rows = len(ResultsStore(tmp_path).diagnostics())
    second = run_json(*args)
    assert second["results"] == first["results"]
    assert len(ResultsStore(tmp_path).diagnostics()) == n_rows
    grown = run_json("stability", "--model", "tiny_vit", "--n", "3", "--out", str(tmp_path))
    assert grown["results"][0]["n_images"] == 3
    fresh = run_json(*args, "--fresh")
    assert fresh["results"][0]["layers"] == first["results"][0]["layers"]


def test_stability_severity_all_and_table(tmp_path: Path) -> None:
    payload = run_json("stability", "--model", "tiny_vit", "--severity", "all", "--n", "1", "--keep-maps", "0",
                       "--out", str(tmp_path))
    assert [r["severity"] for r in payload["results"]] == [1, 2, 3, 4, 5]
    code, out, _ = invoke("stability", "--model", "tiny_vit", "--severity", "all", "--n", "1", "--out", str(tmp_path))
    assert code == 0 and "layer" in out and "severity 5" in out


def test_overfocus_and_heads_json(tmp_path: Path) -> None:
    of = run_json("overfocus", "--model", "tiny_vit", "--corruption", "fog", "--severity", "1", "--n", "2",
                  "--out", str(tmp_path))
    assert [(r["condition"], r["severity"]) for r in of["results"]] == [("clean", 0), ("fog", 1)]
    for lay in of["results"][0]["layers"]:
        assert {"layer", "row_similarity", "topk_column_mass", "row_entropy", "column_gini"} <= set(lay)
        assert 0 <= lay["topk_column_mass"] <= 1 and 0 <= lay["row_entropy"] <= np.log(5) + 1e-5
    hd = run_json("heads", "--model", "tiny_vit", "--model", "tiny_swin", "--n", "2", "--out", str(tmp_path))
    assert [r["model"] for r in hd["results"]] == ["tiny_vit", "tiny_swin"]
    assert all(0 <= lay["head_similarity"] <= 1 + 1e-6 for r in hd["results"] for lay in r["layers"])
    code, out, _ = invoke("overfocus", "--model", "tiny_vit", "--n", "1", "--out", str(tmp_path))
    assert code == 0 and "row sim" in out


def test_attention_saves_maps(tmp_path: Path) -> None:
    from PIL import Image

    img = tmp_path / "photo.png"
    Image.fromarray((np.random.default_rng(0).random((50, 70, 3)) * 255).astype(np.uint8)).save(img)
    payload = run_json("attention", "--model", "tiny_vit", "--image", str(img), "--corruption", "snow",
                       "--out", str(tmp_path / "out"))
    arts = payload["results"][0]["artifacts"]
    assert [(a["condition"], a["severity"]) for a in arts] == [("clean", 0), ("snow", 3)]
    from attnprobe.diagnostics import load_maps

    maps = load_maps(arts[0]["path"])
    assert maps["image"].shape == (32, 32, 3) and maps["image"].dtype == np.uint8
    assert [a.shape for a in maps["attn"]] == [(3, 5, 5)] * 2
    assert maps["meta"]["num_prefix_tokens"] == 1 and maps["meta"]["grid"] == [2, 2]
    for a in maps["attn"]:
        np.testing.assert_allclose(a.sum(-1), 1.0, atol=1e-2)


def test_swin_attention_maps_per_window(tmp_path: Path) -> None:
    payload = run_json("attention", "--model", "tiny_swin", "--n", "1", "--out", str(tmp_path))
    from attnprobe.diagnostics import load_maps

    maps = load_maps(payload["results"][0]["artifacts"][0]["path"])
    assert [a.shape for a in maps["attn"]] == [(4, 2, 49, 49)] * 2  # (windows, heads, n, n)
    assert maps["meta"]["windows"] == [4, 4]


def test_unknown_corruption_is_a_one_line_error(tmp_path: Path) -> None:
    code, out, err = invoke("stability", "--model", "tiny_vit", "--corruption", "gausian_noise", "--out",
                            str(tmp_path))
    assert code == 2 and out == ""
    assert "did you mean 'gaussian_noise'" in err and "Traceback" not in err


def test_model_without_attention_is_a_user_error(tmp_path: Path) -> None:
    code, _, err = invoke("heads", "--model", "cnn", "--n", "1", "--out", str(tmp_path))
    assert code == 2 and "no attention layer" in err


def test_ckpt_count_must_match_models(tmp_path: Path) -> None:
    code, _, err = invoke("heads", "--model", "tiny_vit", "--model", "tiny_vit_b", "--ckpt", "-", "--out",
                          str(tmp_path))
    assert code == 2 and "one --ckpt per --model" in err


def test_bad_inputs(tmp_path: Path) -> None:
    code, _, err = invoke("heads", "--model", "tiny_vit", "--image", str(tmp_path / "missing.jpg"), "--out",
                          str(tmp_path))
    assert code == 2 and "not found" in err
    code, _, err = invoke("stability", "--model", "tiny_vit", "--severity", "7", "--out", str(tmp_path))
    assert code == 2 and "severity" in err
    code, _, err = invoke("heads", "--model", "tiny_vit", "--data", str(tmp_path / "nope"), "--out", str(tmp_path))
    assert code == 2 and "not a directory" in err


def test_library_drivers_without_a_store_match_the_stored_results(tmp_path: Path) -> None:
    from attnprobe import diagnostics as D
    from attnprobe.data.samples import sample_images
    from attnprobe.store import ResultsStore
    from attnprobe.zoo import load_model  # the patched tiny zoo

    entry = D.ModelEntry.from_loaded(load_model("tiny_vit"))
    images = sample_images(2)
    stored = D.stability([entry], images, "contrast", [4], store=ResultsStore(tmp_path), keep_maps=0)
    memory = D.stability([entry], images, "contrast", [4], store=None)
    assert memory.results == stored.results
    of_mem = D.overfocus([entry], images, store=None).results[0]
    of_db = D.overfocus([entry], images, store=ResultsStore(tmp_path)).results[0]
    assert of_mem == of_db
    with pytest.raises(Exception, match="unknown corruption"):
        D.stability([entry], images, "gausian_noise")


def test_data_folder_ids_and_evenly_spaced_subset(tmp_path: Path) -> None:
    from PIL import Image

    from attnprobe.data.images import image_folder

    rng = np.random.default_rng(0)
    for rel in ("b/2.png", "a/1.jpg", "a/3.png", "c/4.png", "notes.txt"):
        p = tmp_path / "data" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.suffix == ".txt":
            p.write_text("not an image")
        else:
            Image.fromarray((rng.random((40, 48, 3)) * 255).astype(np.uint8)).save(p)
    assert image_folder(tmp_path / "data").ids == ["a/1.jpg", "a/3.png", "b/2.png", "c/4.png"]
    assert image_folder(tmp_path / "data", n=2).ids == ["a/1.jpg", "c/4.png"]
    payload = run_json("heads", "--model", "tiny_vit", "--data", str(tmp_path / "data"), "--n", "3", "--out",
                       str(tmp_path / "out"))
    assert payload["results"][0]["dataset"] == f"folder:{(tmp_path / 'data').resolve().as_posix()}"
    assert payload["results"][0]["n_images"] == 3
