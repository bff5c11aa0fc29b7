"""The segmentation part of `attnprobe demo`: Table 4 and Fig. 6 on the bundled tiny segmentation models.

The two bundled models (`models/demo_seg_baseline.toml`, `models/demo_seg_tapadl.toml`: a tiny FAN-Hybrid and
TAP-FAN-Hybrid + SegFormer head, the second trained with ADL, both by `attnprobe train` on the synthetic street
scenes) are evaluated through the real readers on synthetic trees written into the demo's results folder:

* clean: a Cityscapes-style val tree (`seg_data/cityscapes`);
* Cityscapes-C: the 16 corruptions at their official severities (72 cells), corrupted on the fly with
  `imagecorruptions` at native size, as for real Cityscapes;
* ACDC val: the four adverse conditions rendered on top of other street scenes (`seg_data/acdc`);

keeping 2 predictions per cell for the mask figures, and the attention maps of one image (clean and Gaussian
noise) for supplementary Fig. IV. Everything goes to the demo's results store, so the report draws it like any run.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["SEG_DEMO_MODELS", "run_segmentation_demo", "segmentation_demo_available"]

#: The bundled tiny segmentation models, baseline first.
SEG_DEMO_MODELS = ("demo_seg_baseline", "demo_seg_tapadl")

Say = Callable[[str, int, int], None]


def segmentation_demo_available() -> bool:
    """Whether both tiny segmentation models are bundled (a trimmed install may lack them)."""
    from attnprobe import zoo

    cards = [zoo.load_card(m) for m in SEG_DEMO_MODELS]
    return all(c is not None and zoo.bundled_checkpoint(c) is not None for c in cards)


def _tree(path: Path, write: Callable[[Path], Any]) -> Path:
    """A synthetic tree written once (into a temporary sibling, then renamed: a killed demo leaves no half tree)."""
    if path.is_dir():
        return path
    tmp = path.with_name(path.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    write(tmp)
    tmp.rename(path)
    return path


def run_segmentation_demo(store: Any, store_dir: Path, quick: bool = False, say: Say | None = None
                          ) -> dict[str, Any]:
    """Evaluate the bundled segmentation models into `store` (resumable; a rerun reuses every finished cell).

    Args:
        store: the demo's open results store.
        store_dir: its folder (the synthetic trees go to `<store_dir>/seg_data`).
        quick: a smoke test: fewer images and three Cityscapes-C corruptions.
        say: `say(stage, done, total)` progress callback.

    Returns:
        {model name: {"cityscapes", "cityscapes_c", "acdc" mIoU fractions (None when partial)}}.
    """
    from attnprobe import diagnostics as Dg
    from attnprobe.benchmarks.segmentation import check_segmentation_inputs, evaluate_segmentation
    from attnprobe.data.selection import select_images
    from attnprobe.data.synthetic_seg import write_acdc_tree, write_cityscapes_tree
    from attnprobe.zoo import load_model

    say = say or (lambda stage, done, total: None)
    n_val, n_acdc = (4, 2) if quick else (16, 8)
    data = store_dir / "seg_data"
    data.mkdir(parents=True, exist_ok=True)
    cs = _tree(data / f"cityscapes_{n_val}", lambda p: write_cityscapes_tree(p, num_train=0, num_val=n_val))
    acdc = _tree(data / f"acdc_{n_acdc}", lambda p: write_acdc_tree(p, {"val": n_acdc}))
    corruptions = ["gaussian_noise", "defocus_blur", "snow"] if quick else None
    sets = [check_segmentation_inputs("cityscapes", cs),
            check_segmentation_inputs("cityscapes-c", cs, on_the_fly=True, corruptions=corruptions),
            check_segmentation_inputs("acdc", acdc)]
    for inputs in sets:  # NOTE: the committed report names the synthetic trees, not this machine's paths
        inputs.data_label = f"the demo's synthetic {inputs.data.name} (results/seg_data)"
    out: dict[str, Any] = {}
    for mi, name in enumerate(SEG_DEMO_MODELS):
        loaded = load_model(name)
        row = {}
        for inputs in sets:
            # NOTE: no loader workers: the corruptions run in this process, so numba compiles glass blur once
            rep = evaluate_segmentation(loaded, store, inputs, keep=2, batch_size=8, workers=0, device="cpu")
            row[inputs.task] = rep.miou
        out[name] = row
        say("segmentation", mi + 1, len(SEG_DEMO_MODELS))
    entries = [Dg.ModelEntry.from_loaded(load_model(m)) for m in SEG_DEMO_MODELS]
    images = select_images(data=str(cs / "leftImg8bit" / "val"), n=1)
    Dg.attention_maps(entries, images, corruption="gaussian_noise", severities=[3], store=store)
    return out
