"""Users' own models: fine-tuned heads, timm / Hugging Face model folders, hf-hub names offline, one weights rule for
the API and the CLI, output-space checks of the benchmarks, consistent checkpoint errors, `report` on any out folder.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import pytest
import timm
import torch
from typer.testing import CliRunner

from attnprobe import checkpoints, hub, zoo
from attnprobe.cli import app
from attnprobe.errors import UserError

runner = CliRunner()
ARCH = "test_vit"  # timm's tiny test ViT: 1000 classes by default, 160 px


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def one_line_error(code: int, err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return " ".join(err.split())


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """A `test_vit` fine-tuned to 10 classes, saved as a training script would (wrapped, DDP prefixes)."""
    torch.manual_seed(1)
    model = timm.create_model(ARCH, num_classes=10).eval()
    path = tmp_path_factory.mktemp("ft") / "my_10class.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    return path, model


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """A model folder written by timm's own `save_for_hf` (config.json + model.safetensors), 7 classes at 32 px."""
    from timm.models._hub import save_for_hf

    torch.manual_seed(2)
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=2, num_classes=7).eval()
    folder = tmp_path_factory.mktemp("hf") / "my_vit"
    save_for_hf(model, str(folder), safe_serialization=True)
    return folder, model


# -- fine-tuned heads ---------------------------------------------------------------------------------------------
def test_checkpoint_head_size_is_inferred(finetuned: tuple[Path, torch.nn.Module]) -> None:
    path, src = finetuned
    assert zoo.output_classes(ARCH, checkpoint=path) == 10  # without building anything
    loaded = zoo.load_model(ARCH, checkpoint=path)
    assert loaded.model.num_classes == 10 and loaded.weights == "file"
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), src(x))
    with pytest.raises(UserError, match="does not fit architecture"):
        zoo.load_model(ARCH, checkpoint=path, num_classes=5)  # an explicit head size wins, and is checked strictly


def test_headless_checkpoint_loads_as_backbone(tmp_path: Path) -> None:
    state = {k: v for k, v in timm.create_model(ARCH, num_classes=0).state_dict().items()}
    path = tmp_path / "backbone.safetensors"
    from safetensors.torch import save_file

    save_file(state, str(path))
    assert zoo.output_classes(ARCH, checkpoint=path) == 0
    assert zoo.load_model(ARCH, checkpoint=path).model.num_classes == 0


def test_diagnostics_take_a_finetuned_head(finetuned: tuple[Path, torch.nn.Module], tmp_path: Path) -> None:
    path, _ = finetuned
    code, out, err = invoke("stability", "--model", ARCH, "--ckpt", path, "--n", "1", "--severity", "1",
                            "--out", tmp_path, "--json")
    assert code == 0, err
    assert json.loads(out)["results"][0]["n_images"] == 1
    code, _, err = invoke("heads", "--model", ARCH, "--ckpt", path, "--num-classes", "3", "--n", "1",
                          "--out", tmp_path)
    assert "does not fit architecture" in one_line_error(code, err)


@pytest.mark.parametrize("command,extra", [
    ("mce", ["--on-the-fly", "--clean", "bundled"]), ("clean", ["--data", "val"]), ("mfr", ["--data", "p"]),
    ("ood", ["--set", "r", "--data", "r"]), ("pgd", ["--data", "val"]),
])
def test_benchmarks_refuse_another_output_space(finetuned: tuple[Path, torch.nn.Module], tmp_path: Path,
                                                command: str, extra: list[str]) -> None:
    path, _ = finetuned
    out = tmp_path / "out"
    code, _, err = invoke(command, "--model", ARCH, "--ckpt", path, *extra, "--out", out)
    msg = one_line_error(code, err)
    assert "has 10 output classes" in msg and "needs the 1000 ImageNet-1k logits" in msg
    assert not out.exists()  # stopped before any work


def test_require_output_space_on_a_loaded_model(finetuned: tuple[Path, torch.nn.Module]) -> None:
    loaded = zoo.load_model(ARCH, checkpoint=finetuned[0])
    with pytest.raises(UserError, match="ImageNet-C needs the 1000"):
        zoo.require_output_space(loaded, 1000, what="ImageNet-C")
    zoo.require_output_space(loaded, 10)


# -- timm / Hugging Face model folders ----------------------------------------------------------------------------
def test_local_dir_and_folder_path_load_like_timm(hf_folder: tuple[Path, torch.nn.Module]) -> None:
    folder, src = hf_folder
    reference = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    x = torch.randn(2, 3, 32, 32)
    for name in (f"local-dir:{folder}", str(folder)):
        loaded = zoo.load_model(name)
        assert loaded.arch == "vit_tiny_patch16_224" and loaded.weights == "folder"
        assert loaded.model.num_classes == 7 and loaded.preprocessing.input_size == 32
        assert loaded.checkpoint_sha256 == checkpoints.file_sha256(folder / "model.safetensors")
        with torch.no_grad():
            assert torch.equal(loaded.model(x), reference(x)) and torch.equal(loaded.model(x), src(x))


def test_folder_as_ckpt_and_as_cli_model(hf_folder: tuple[Path, torch.nn.Module], tmp_path: Path) -> None:
    folder, _ = hf_folder
    loaded = zoo.load_model("vit_tiny_patch16_224", checkpoint=folder, img_size=32, depth=2)
    assert loaded.model.num_classes == 7  # the head comes from the folder's weights
    code, out, err = invoke("heads", "--model", f"local-dir:{folder}", "--n", "1", "--out", tmp_path, "--json")
    assert code == 0, err
    assert json.loads(out)["results"][0]["model"] == f"local-dir:{folder}"


def test_folder_errors_are_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = invoke("info", str(empty))
    assert "has no config.json" in one_line_error(code, err)
    code, _, err = invoke("info", "local-dir:" + str(tmp_path / "missing"))
    assert "no model folder at" in one_line_error(code, err)
    code, _, err = invoke("info", ARCH, "--ckpt", str(empty))
    assert "folder without a weights file" in one_line_error(code, err)


# -- hf-hub names and timm's pretrained weights fail fast offline -------------------------------------------------
def test_hf_hub_offline_fails_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub, "reachable", lambda *a, **k: False)
    start = time.monotonic()
    with pytest.raises(UserError, match="cannot reach .*local-dir:PATH"):
        zoo.load_model("hf-hub:attnprobe-tests/no-such-model")
    monkeypatch.setattr(zoo, "_timm_weights_cached", lambda name: False)
    with pytest.raises(UserError, match="cannot reach .*--ckpt PATH"):
        zoo.load_model(ARCH)  # timm's pretrained weights, not in the cache
    code, _, err = invoke("heads", "--model", ARCH, "--n", "1")
    assert "cannot reach" in one_line_error(code, err)
    assert time.monotonic() - start < 10


def test_hf_hub_respects_offline_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="HF_HUB_OFFLINE"):
        zoo.load_model("hf-hub:attnprobe-tests/no-such-model")
    with hub.offline():
        assert constants.HF_HUB_OFFLINE is True
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with hub.offline():
        assert constants.HF_HUB_OFFLINE is True
    assert constants.HF_HUB_OFFLINE is False


def test_unknown_hub_model_is_one_line_within_seconds() -> None:
    """Real network stack: offline the probe fails at once, online the hub answers 'not found'."""
    start = time.monotonic()
    code, _, err = invoke("info", "hf-hub:attnprobe-tests/no-such-model-0123")
    one_line_error(code, err)
    assert time.monotonic() - start < 20


# -- one rule for weights: API and CLI ----------------------------------------------------------------------------
def test_api_loads_bundled_weights_by_default() -> None:
    from safetensors.torch import load_file

    card = zoo.load_card("demo_vit_baseline")
    with warnings.catch_warnings():
        warnings.simplefilter("error", zoo.RandomWeightsWarning)
        import attnprobe

        model = attnprobe.create_model("demo_vit_baseline")
    bundled = load_file(str(zoo.bundled_checkpoint(card)))
    assert all(torch.equal(v.float(), bundled[k].float()) for k, v in model.state_dict().items())


def test_random_weights_only_when_asked_and_reproducible() -> None:
    rng = torch.get_rng_state()
    with pytest.warns(zoo.RandomWeightsWarning, match="random weights"):
        a = zoo.load_model("demo_vit_baseline", pretrained=False)
    with pytest.warns(zoo.RandomWeightsWarning):
        b = zoo.load_model("demo_vit_baseline", pretrained=False)
    assert a.checkpoint_sha256 == zoo.RANDOM_INIT and a.weights == "random"
    assert all(torch.equal(v, b.model.state_dict()[k]) for k, v in a.model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's random state is untouched


def test_info_accepts_random_weights_and_never_downloads() -> None:
    code, out, err = invoke("info", "demo_vit_tap", "--ckpt", "-", "--json")
    assert code == 0, err
    assert json.loads(out)["weights"] == "random"
    code, out, err = invoke("info", "fan_b_tap", "--json")  # no public weights: the architecture is shown anyway
    assert code == 0, err
    assert json.loads(out)["weights"] == "not-loaded"


# -- checkpoint errors: one wording ------------------------------------------------------------------------------
def test_missing_checkpoint_same_wording_everywhere(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pth"
    messages = []
    for args in (["info", ARCH, "--ckpt", missing], ["stability", "--model", ARCH, "--ckpt", missing],
                 ["mce", "--model", ARCH, "--ckpt", missing, "--on-the-fly", "--clean", "bundled"]):
        code, _, err = invoke(*args)
        messages.append(one_line_error(code, err))
    assert len(set(messages)) == 1 and messages[0].startswith(f"error: checkpoint not found: {missing};")
    with pytest.raises(UserError, match=f"checkpoint not found: {missing};"):
        zoo.load_model(ARCH, checkpoint=missing)


def test_readme_example_without_download_says_where_to_get_it(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = invoke("stability", "--model", "fan_b_tapadl", "--ckpt", "tapadl_fan_base.pth.tar",
                          "--corruption", "gaussian_noise")
    msg = one_line_error(code, err)
    assert "checkpoint not found: tapadl_fan_base.pth.tar" in msg and "leave --ckpt out" in msg
    assert "releases/download/v1.0/tapadl_fan_base.pth.tar" in msg


def test_empty_and_corrupt_checkpoints(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    code, _, err = invoke("info", ARCH, "--ckpt", empty)
    assert "is empty (0 bytes)" in one_line_error(code, err)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00" * 64)
    code, _, err = invoke("info", ARCH, "--ckpt", garbage)
    assert "cannot read checkpoint" in one_line_error(code, err)


def test_exception_without_message_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.pth"
    path.write_bytes(b"not empty")

    def fail(*_: object, **__: object) -> None:
        raise IndexError()  # NOTE: some readers raise without a message; the handler must not fail on it

    monkeypatch.setattr(checkpoints, "_read_file", fail)
    with pytest.raises(UserError, match=r"cannot read checkpoint .*\(IndexError\)"):
        checkpoints.read_state_dict(path)


# -- report finds the store inside the folder a command wrote ------------------------------------------------------
def test_report_accepts_the_folder_above_the_store(tmp_path: Path) -> None:
    run = tmp_path / "run"
    code, _, err = invoke("heads", "--model", "demo_vit_baseline", "--n", "1", "--out", run / "results")
    assert code == 0, err
    code, out, err = invoke("report", run, "--n-bootstrap", "10", "--format", "png", "--json")
    assert code == 0, err
    assert Path(json.loads(out)["out_dir"]) == run / "report"
    code, _, err = invoke("heads", "--model", "demo_vit_baseline", "--n", "1", "--out", run / "second")
    assert code == 0, err
    code, _, err = invoke("report", run)
    assert "several results stores" in one_line_error(code, err)


def test_load_checkpoint_into_a_model_built_elsewhere(finetuned: tuple[Path, torch.nn.Module]) -> None:
    import attnprobe

    path, src = finetuned
    model = timm.create_model(ARCH, num_classes=10).eval()
    assert attnprobe.load_checkpoint(model, path) == checkpoints.file_sha256(path)
    assert all(torch.equal(v, src.state_dict()[k]) for k, v in model.state_dict().items())
    with pytest.raises(UserError, match="does not fit"):
        attnprobe.load_checkpoint(timm.create_model(ARCH, num_classes=3), path)
