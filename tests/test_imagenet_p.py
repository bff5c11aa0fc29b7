"""ImageNet-P data: video IO, the released tree, regenerated sequences, and the evaluation end to end."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from attnprobe.data.imagenet_p import (
    ImageNetPDataset,
    RegeneratedVideos,
    ReleasedVideos,
    available_perturbations,
    perturbation_folder,
)
from attnprobe.data.imagenet_p_generate import (
    PERTURBATIONS,
    motion_blur_magick,
    num_frames,
    perturbation_frames,
    sequence_seed,
)
from attnprobe.data.video import batched_frames, count_frames, iter_frames, read_frames, write_video
from attnprobe.errors import UserError
from attnprobe.benchmarks.imagenet_p import evaluate_imagenet_p, summarize_imagenet_p
from attnprobe.robustness import flip_probability
from attnprobe.store import ResultsStore
from attnprobe.zoo import Preprocessing

WNIDS = ("n01440764", "n01443537", "n15075141")  # canonical labels 0, 1, 999
DARK, BRIGHT = 40, 215


def _pattern(n: int, phase: int) -> list[int]:
    """A brightness pattern (0 = dark, 1 = bright) per frame, different per video."""
    base = [0, 0, 1, 1, 0, 1, 1, 1, 0]
    return [base[(i + phase) % len(base)] for i in range(n)]


def _frames(pattern: list[int], size: int, rng: np.random.Generator) -> list[np.ndarray]:
    out = []
    for p in pattern:
        level = BRIGHT if p else DARK
        out.append(np.clip(level + rng.integers(-8, 9, size=(size, size, 3)), 0, 255).astype(np.uint8))
    return out


def make_p_tree(root: Path, perturbations: tuple[str, ...] = ("rotate", "gaussian_noise"), per_class: int = 2,
                size: int = 32) -> dict[str, list[list[int]]]:
    """A miniature released ImageNet-P tree; returns the brightness pattern of every video, in sorted order."""
    rng = np.random.default_rng(0)
    patterns: dict[str, list[list[int]]] = {}
    for p in perturbations:
        k = 0
        for w in WNIDS:
            for _ in range(per_class):
                pat = _pattern(num_frames(p), phase=k)
                write_video(root / p / w / f"ILSVRC2012_val_{k:08d}.mp4", _frames(pat, size, rng))
                patterns.setdefault(p, []).append(pat)
                k += 1
    return patterns


class BrightnessNet(nn.Module):
    """Predicts class 1 for bright frames and class 0 for dark ones (normalised with mean 0.5, std 0.5)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.mean(dim=(1, 2, 3))  # (B,) > 0 for bright frames
        logits = torch.full((x.shape[0], 1000), -100.0)
        logits[:, 0], logits[:, 1] = -z, z
        logits[:, 2:7] = -5.0 + torch.arange(5.0) * 0.1  # a fixed tail so the top-5 lists are well defined
        return logits


def _loaded(model: nn.Module) -> SimpleNamespace:
    return SimpleNamespace(model=model, name="brightness", checkpoint_sha256="test",
                           preprocessing=Preprocessing(input_size=32, mean=(0.5,) * 3, std=(0.5,) * 3))


# -- video IO -------------------------------------------------------------------------------------------------

def test_write_and_read_video_keeps_size_and_frame_count(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frames = _frames([0, 1, 0, 1, 1], 48, rng)
    path = write_video(tmp_path / "a" / "v.mp4", frames)
    got = read_frames(path)
    assert got.shape == (5, 48, 48, 3) and got.dtype == np.uint8  # no resize
    assert count_frames(path) == 5
    assert np.abs(got.astype(int) - np.stack(frames).astype(int)).mean() < 6  # lossy codec, same content
    assert [int(f.mean() > 128) for f in iter_frames(path)] == [0, 1, 0, 1, 1]


def test_unreadable_video_is_a_user_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(UserError, match="damaged"):
        list(iter_frames(bad))
    with pytest.raises(UserError, match="not found"):
        list(iter_frames(tmp_path / "missing.mp4"))


def test_batched_frames_bounds_batch_size() -> None:
    frames = (np.full((4, 4, 3), i, np.uint8) for i in range(7))
    sizes = [b.shape[0] for b in batched_frames(frames, 3, lambda f: torch.from_numpy(f).permute(2, 0, 1))]
    assert sizes == [3, 3, 1]


# -- the released tree -------------------------------------------------------------------------------------------

def test_perturbation_folder_naming(tmp_path: Path) -> None:
    assert perturbation_folder(tmp_path, "gaussian_noise", 1).name == "gaussian_noise"
    assert perturbation_folder(tmp_path, "gaussian_noise", 3).name == "gaussian_noise_3"
    assert perturbation_folder(tmp_path, "shot_noise", 2).name == "shot_noise_2"
    assert perturbation_folder(tmp_path, "rotate", 2).name == "rotate"  # non-noise: same videos, other pairing
    with pytest.raises(UserError, match="unknown ImageNet-P perturbation 'rotation'"):
        perturbation_folder(tmp_path, "rotation")


def test_released_tree_listing_and_errors(tmp_path: Path) -> None:
    make_p_tree(tmp_path, ("rotate",), per_class=1)
    assert available_perturbations(tmp_path) == ["rotate"]
    src = ReleasedVideos(tmp_path, "rotate")
    assert [it.label for it in src.items] == [0, 1, 999]  # canonical labels, not folder positions
    assert src.items[0].id == "n01440764/ILSVRC2012_val_00000000"
    with pytest.raises(UserError, match="folders present: rotate"):
        ReleasedVideos(tmp_path, "gaussian_noise", 2)
    (tmp_path / "rotate" / "not_a_wnid").mkdir()
    with pytest.raises(UserError, match="wnid"):
        _ = ReleasedVideos(tmp_path, "rotate").items
    with pytest.raises(UserError, match="not found"):
        ReleasedVideos(tmp_path / "nope", "rotate")


def test_dataset_items_and_skipped_videos(tmp_path: Path) -> None:
    make_p_tree(tmp_path, ("rotate",), per_class=1)
    bad = tmp_path / "rotate" / WNIDS[0] / "ILSVRC2012_val_99999999.mp4"
    bad.write_bytes(b"broken")
    ds = ImageNetPDataset(ReleasedVideos(tmp_path, "rotate"))
    assert len(ds) == 4 and ds.frame_size == (32, 32)
    frames, target, ok = ds[0]
    assert frames.shape == (31, 32, 32, 3) and frames.dtype == torch.uint8 and ok
    assert target.tolist() == [0, 0, 1]  # label, noise, difficulty
    frames, target, ok = ds[1]  # the broken file sorts second in its class folder
    assert not ok and frames.shape == (31, 32, 32, 3)


# -- regenerated sequences ------------------------------------------------------------------------------------------

def test_regenerated_sequences_are_deterministic_224_and_lazy() -> None:
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    for name in ("gaussian_noise", "translate", "brightness"):
        a = list(perturbation_frames(img, name, 1, image_id="n01440764/x"))
        b = list(perturbation_frames(img, name, 1, image_id="n01440764/x"))
        assert len(a) == num_frames(name) and a[0].shape == (224, 224, 3) and a[0].dtype == np.uint8
        assert all(np.array_equal(x, y) for x, y in zip(a, b))
    c = list(perturbation_frames(img, "gaussian_noise", 1, image_id="n01440764/y"))
    assert not np.array_equal(c[1], list(perturbation_frames(img, "gaussian_noise", 1, image_id="n01440764/x"))[1])
    # noise sequences start from the clean crop; stronger noise at higher difficulty
    d1 = list(perturbation_frames(img, "gaussian_noise", 1, image_id="i"))
    d3 = list(perturbation_frames(img, "gaussian_noise", 3, image_id="i"))
    assert np.array_equal(d1[0], d3[0])
    assert np.abs(d3[5].astype(int) - d3[0]).mean() > np.abs(d1[5].astype(int) - d1[0]).mean()
    # lazy: taking one frame does not generate the others
    gen = perturbation_frames(img, "motion_blur", 1, image_id="i")
    assert next(gen).shape == (224, 224, 3)


def test_sequence_seed_is_stable_across_processes() -> None:
    # fixed value: SHA-256 based, not Python's salted hash()
    assert sequence_seed("n01440764/ILSVRC2012_val_00000293", "gaussian_noise", 1) == sequence_seed(
        "n01440764/ILSVRC2012_val_00000293", "gaussian_noise", 1)
    assert sequence_seed("a", "gaussian_noise", 1) != sequence_seed("a", "gaussian_noise", 2)
    assert 0 <= sequence_seed("a", "snow") < 2 ** 63


@pytest.mark.slow
def test_every_perturbation_regenerates() -> None:
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (256, 256, 3), dtype=np.uint8))
    for name in PERTURBATIONS:
        frames = list(perturbation_frames(img, name, 1, image_id="z"))
        assert len(frames) == num_frames(name) and all(f.shape == (224, 224, 3) for f in frames)


def test_motion_blur_magick_known_answers() -> None:
    x = np.zeros((5, 9))
    x[:, 4] = 1.0
    flat = motion_blur_magick(np.ones((5, 9)), radius=2, sigma=1, angle=0)
    assert np.allclose(flat, 1.0)  # weights sum to one
    out = motion_blur_magick(x, radius=2, sigma=1, angle=0)  # smear along +x: output(x) reads x + i
    k = np.exp(-np.arange(5) ** 2 / 2)
    k /= k.sum()
    assert np.allclose(out[2, 4], k[0]) and np.allclose(out[2, 2], k[2]) and np.allclose(out[2, 5], 0)


def test_regenerated_source_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown ImageNet-P perturbation"):
        RegeneratedVideos(tmp_path, "blur")
    with pytest.raises(UserError, match="does not exist"):
        _ = RegeneratedVideos(tmp_path / "missing", "rotate").items


# -- end to end -----------------------------------------------------------------------------------------------------

def test_released_tree_end_to_end_matches_formula(tmp_path: Path) -> None:
    patterns = make_p_tree(tmp_path / "p")
    sources = [ReleasedVideos(tmp_path / "p", p, 1) for p in ("rotate", "gaussian_noise")]
    with ResultsStore(tmp_path / "out") as store:
        # batch_size 7 frames: a 31-frame video goes through the model in 5 pieces
        res = evaluate_imagenet_p(_loaded(BrightnessNet()), sources, store, batch_size=7, workers=0)
        rotate, noise = res
        assert rotate.videos == 6 and rotate.skipped == 0 and not rotate.regenerated
        assert rotate.flip_probability == pytest.approx(flip_probability(patterns["rotate"], noise=False))
        assert noise.flip_probability == pytest.approx(flip_probability(patterns["gaussian_noise"], noise=True))
        # top-1 classes are 0/1 and the tail is fixed: each flip swaps ranks 1 and 2 -> T5D = 2 * FP
        assert rotate.top5_distance == pytest.approx(2 * rotate.flip_probability)
        assert rotate.flip_rate == pytest.approx(rotate.flip_probability / 0.13104)
        # the store holds the sums to recompute FP, and one cell per perturbation with severity = difficulty
        cells = {c["condition"]: c for c in store.cells(task="imagenet_p")}
        assert set(cells) == {"rotate", "gaussian_noise"} and cells["rotate"]["severity"] == 1
        assert cells["rotate"]["extra"]["pairs"] == 6 * 30
        assert cells["rotate"]["extra"]["fp_sum"] / cells["rotate"]["n"] == pytest.approx(rotate.flip_probability)
        # a rerun is served from the store
        again = evaluate_imagenet_p(_loaded(BrightnessNet()), sources, store, batch_size=64, workers=0)
        assert all(r.cached for r in again) and again[0].flip_probability == rotate.flip_probability
    # difficulty 2 and 3 pair frames along chains
    for d in (2, 3):
        [r] = evaluate_imagenet_p(_loaded(BrightnessNet()), [ReleasedVideos(tmp_path / "p", "rotate", d)], None,
                                  batch_size=31, workers=0)
        assert r.flip_probability == pytest.approx(flip_probability(patterns["rotate"], False, d))
    summary = summarize_imagenet_p(res)
    assert summary["mfr"] is None and any("missing" in n for n in summary["notes"])
    assert any("unnormalised" in n for n in summary["notes"])


def test_regenerated_end_to_end(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for k, w in enumerate(WNIDS[:2]):
        (tmp_path / "val" / w).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(tmp_path / "val" / w / f"{k}.png")
    src = RegeneratedVideos(tmp_path / "val", "brightness", 1)
    assert src.regenerated and [it.id for it in src.items] == [f"{WNIDS[0]}/0", f"{WNIDS[1]}/1"]
    [a] = evaluate_imagenet_p(_loaded(BrightnessNet()), [src], None, batch_size=16, workers=0)
    [b] = evaluate_imagenet_p(_loaded(BrightnessNet()), [src], None, batch_size=31, workers=0)
    assert a.regenerated and a.videos == 2 and a.flip_probability == b.flip_probability
    # brightness ramps from dark to bright: the brightness net flips exactly once per video
    assert a.flip_probability == pytest.approx(1 / 30)
    assert a.dataset.startswith("imagenet_p_regenerated:")
    summary = summarize_imagenet_p([a])
    assert any("regenerated" in n for n in summary["notes"])


def test_summary_mfr_from_results() -> None:
    from attnprobe import protocol
    from attnprobe.benchmarks.imagenet_p import PResult

    alex = protocol.alexnet_flip_probabilities()
    results = [PResult(perturbation=p, difficulty=1, videos=10, skipped=0, flip_probability=2 * alex[p],
                       flip_rate=2.0, top5_distance=float(i), frame0_accuracy=0.5, frame_accuracy=0.5,
                       regenerated=False, cached=False, dataset="d")
               for i, p in enumerate(protocol.test_perturbations())]
    summary = summarize_imagenet_p(results)
    assert summary["mfr"] == pytest.approx(2.0) and summary["mean_top5_distance"] == pytest.approx(4.5)
    assert not any("missing" in n for n in summary["notes"]) and not any("regenerated" in n for n in summary["notes"])


def _dist_worker(rank: int, world: int, port: int, root: str, out: str, queue: object) -> None:
    import os

    from attnprobe import distributed as D

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    ctx = D.init_from_env(device="cpu")
    try:
        store = ResultsStore(out) if ctx.is_main else None
        sources = [ReleasedVideos(root, p, 1) for p in ("rotate", "gaussian_noise")]
        res = evaluate_imagenet_p(_loaded(BrightnessNet()), sources, store, batch_size=31, workers=0)
        queue.put((rank, [(r.videos, r.flip_probability, r.top5_distance) for r in res]))  # type: ignore[attr-defined]
        if store is not None:
            store.close()
    finally:
        D.cleanup()


@pytest.mark.slow
def test_two_gloo_processes_give_single_process_flip_probabilities(tmp_path: Path) -> None:
    import socket

    import torch.multiprocessing as mp

    make_p_tree(tmp_path / "p", per_class=1)  # 3 videos per perturbation: uneven split over 2 ranks
    sources = [ReleasedVideos(tmp_path / "p", p, 1) for p in ("rotate", "gaussian_noise")]
    single = [(r.videos, r.flip_probability, r.top5_distance)
              for r in evaluate_imagenet_p(_loaded(BrightnessNet()), sources, None, batch_size=31, workers=0)]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    procs = [ctx.Process(target=_dist_worker, args=(r, 2, port, str(tmp_path / "p"), str(tmp_path / "out"), queue))
             for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    got = dict(queue.get() for _ in range(2))
    for rank in (0, 1):
        assert [v for v, _, _ in got[rank]] == [v for v, _, _ in single]
        assert [fp for _, fp, _ in got[rank]] == pytest.approx([fp for _, fp, _ in single])
        assert [t for _, _, t in got[rank]] == pytest.approx([t for _, _, t in single])
