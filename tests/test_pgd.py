"""PGD-5: stays in the eps-ball and the pixel range, is seeded, lowers the accuracy of a trained model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attnprobe.attacks import PGD5, normalize, pgd

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _tiny_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(16, 5))


def _images(n: int = 6, size: int = 8, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g)
    x[:, :, 0, :] = 0.0  # pixels at the bounds: the clamp must keep them valid
    x[:, :, -1, :] = 1.0
    return x


def test_pgd5_constants() -> None:
    assert PGD5 == {"eps": 1 / 255, "step": 0.5 / 255, "steps": 5}


@pytest.mark.parametrize("eps,step,steps", [(1 / 255, 0.5 / 255, 5), (8 / 255, 2 / 255, 7), (4 / 255, 4 / 255, 0)])
def test_stays_in_eps_ball_and_pixel_range(eps: float, step: float, steps: int) -> None:
    model, x = _tiny_cnn(), _images()
    y = torch.arange(6) % 5
    adv = pgd(model, x, y, MEAN, STD, eps=eps, step=step, steps=steps, seed=3)
    assert adv.shape == x.shape and not adv.requires_grad
    assert float((adv - x).abs().max()) <= eps + 1e-6
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    assert float((adv - x).abs().max()) > 0.5 * eps  # it did move


def test_seeded_and_per_sample_seeds_are_batch_independent() -> None:
    model, x = _tiny_cnn(), _images()
    y = torch.zeros(6, dtype=torch.long)
    a = pgd(model, x, y, MEAN, STD, seed=7)
    assert torch.equal(a, pgd(model, x, y, MEAN, STD, seed=7))
    assert not torch.equal(a, pgd(model, x, y, MEAN, STD, seed=8))
    seeds = [100, 101, 102, 103, 104, 105]
    full = pgd(model, x, y, MEAN, STD, seed=seeds)
    part = pgd(model, x[2:4], y[2:4], MEAN, STD, seed=seeds[2:4])
    assert torch.allclose(full[2:4], part, atol=1e-7)
    with pytest.raises(ValueError, match="seeds"):
        pgd(model, x, y, MEAN, STD, seed=[1, 2])


def test_restores_mode_and_leaves_no_parameter_gradients() -> None:
    model = _tiny_cnn()
    model.train()
    pgd(model, _images(), torch.zeros(6, dtype=torch.long), MEAN, STD)
    assert model.training
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    with torch.no_grad():  # works inside no_grad, as in an evaluation loop
        pgd(model, _images(), torch.zeros(6, dtype=torch.long), MEAN, STD)


def test_uses_eval_mode_during_the_attack() -> None:
    seen = []

    class Probe(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(self.training)
            return x.flatten(1)[:, :3] * 1.0

    model = nn.Sequential(Probe())
    model.train()
    pgd(model, _images(2), torch.zeros(2, dtype=torch.long), MEAN, STD, steps=2)
    assert seen == [False, False] and model.training


def test_equals_attack_in_normalised_space_with_eps_over_std() -> None:
    """Pixel-space PGD == PGD on normalised inputs with per-channel budget eps/std, step/std and clamp bounds."""
    model, x = _tiny_cnn(), _images()
    y = torch.arange(6) % 5
    eps, step, steps = 2 / 255, 1 / 255, 3
    ours = pgd(model, x, y, MEAN, STD, eps=eps, step=step, steps=steps, random_start=False)

    m, s = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    xn = (x - m) / s
    lo, hi = (0 - m) / s, (1 - m) / s
    d = torch.zeros_like(xn)
    for _ in range(steps):
        d.requires_grad_(True)
        loss = nn.functional.cross_entropy(model(xn + d), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, d)
        d = torch.max(torch.min(d.detach() + step / s * g.sign(), eps / s), -eps / s)
        d = torch.max(torch.min(xn + d, hi), lo) - xn
    theirs = (xn + d) * s + m
    assert torch.allclose(ours, theirs, atol=1e-5)


def _toy(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat grey images slightly brighter (class 1) or darker (class 0) than 0.5, by 0.3/255 to 3/255, plus noise."""
    label = torch.randint(0, 2, (n,), generator=g)
    margin = (0.3 + 2.7 * torch.rand(n, generator=g)) / 255
    level = 0.5 + (label * 2 - 1) * margin
    x = level.view(n, 1, 1, 1) + 0.02 * torch.randn(n, 3, 8, 8, generator=g)
    return x.clamp(0, 1), label


def test_lowers_accuracy_of_a_small_trained_model() -> None:
    """A linear classifier trained on a toy task: accurate on held-out clean inputs, much less so under PGD-5."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x, y = _toy(400, g)
    xt, yt = _toy(200, g)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(100):
        opt.zero_grad()
        nn.functional.cross_entropy(model(normalize(x, MEAN, STD)), y).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        clean = (model(normalize(xt, MEAN, STD)).argmax(1) == yt).float().mean().item()
    adv = pgd(model, xt, yt, MEAN, STD, **PGD5, seed=0)
    with torch.no_grad():
        robust = (model(normalize(adv, MEAN, STD)).argmax(1) == yt).float().mean().item()
    assert clean > 0.85
    assert robust < clean - 0.2
    assert float((adv - xt).abs().max()) <= PGD5["eps"] + 1e-6
    # a zero-step attack from the clean point changes nothing
    same = pgd(model, xt, yt, MEAN, STD, steps=0, random_start=False)
    assert torch.equal(same, xt)


# -- the driver -------------------------------------------------------------------------------------------------

class _MeanNet(nn.Module):
    """Class 1 if the mean (normalised) pixel is above 0 (i.e. brighter than 0.5), else class 0; tiny margins."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.mean(dim=(1, 2, 3)) * 1000
        logits = torch.zeros(x.shape[0], 1000)
        logits[:, 0], logits[:, 1] = -z, z
        return logits


def _grey_tree(root, levels: dict[str, int], per_class: int = 3):  # noqa: ANN001, ANN202
    from PIL import Image

    for wnid, level in levels.items():
        (root / wnid).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            Image.new("RGB", (20, 24), (level,) * 3).save(root / wnid / f"{k}.png")
    return root


def test_evaluate_pgd_driver(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    from types import SimpleNamespace

    from attnprobe.benchmarks.pgd import evaluate_pgd, pgd_condition
    from attnprobe.store import ResultsStore
    from attnprobe.zoo import Preprocessing

    # labels 0 and 1 (canonical order): images 0.5/255 below and above 0.5 -> correct but within 1/255 of flipping
    data = _grey_tree(tmp_path / "val", {"n01440764": 127, "n01443537": 128})
    lm = SimpleNamespace(model=_MeanNet(), name="mean", checkpoint_sha256="test",
                         preprocessing=Preprocessing(input_size=16, crop_pct=1.0, interpolation="bilinear",
                                                     mean=(0.5,) * 3, std=(0.5,) * 3))
    with ResultsStore(tmp_path / "out") as store:
        res = evaluate_pgd(lm, data, store, batch_size=4, workers=0)
        assert res.n == 6 and res.clean_accuracy == 1.0 and res.robust_accuracy == 0.0
        [cell] = store.cells(task="pgd")
        assert cell["condition"] == "pgd5" and cell["extra"]["clean_correct"] == 6
        assert cell["info"]["eps"] == pytest.approx(1 / 255) and cell["info"]["steps"] == 5
        assert evaluate_pgd(lm, data, store, batch_size=4, workers=0).cached
    # zero budget: nothing changes; per-image seeds: any batch size gives the same counts
    none = evaluate_pgd(lm, data, None, eps=0.0, step=0.0, workers=0)
    assert none.robust_accuracy == 1.0
    import attnprobe.benchmarks.pgd as ee

    seen: list[list[int]] = []

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        seen.append(list(kwargs["seed"]))
        return pgd(*args, **kwargs)

    monkeypatch.setattr(ee, "pgd", spy)
    evaluate_pgd(lm, data, None, batch_size=1, workers=0)
    by_one = [s for batch in seen for s in batch]
    seen.clear()
    evaluate_pgd(lm, data, None, batch_size=4, workers=0)
    assert [len(b) for b in seen] == [4, 2] and [s for batch in seen for s in batch] == by_one
    assert len(set(by_one)) == 6  # one seed per image
    seen.clear()
    evaluate_pgd(lm, data, None, batch_size=4, workers=0, seed=1)
    assert [s for batch in seen for s in batch] != by_one
    assert pgd_condition(2 / 255, 1 / 255, 10, 0) == "pgd-eps2-step1-steps10-seed0"
