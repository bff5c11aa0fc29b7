"""The report never mixes data sources: released / regenerated / on-the-fly data and `--limit` subsets are kept apart,
and every Table 2 number says which data it comes from and on how many images."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from attnprobe.benchmarks.imagenet_p import evaluate_imagenet_p, summarize_imagenet_p
from attnprobe.data.imagenet_p import ReleasedVideos
from attnprobe.errors import UserError
from attnprobe import protocol
from attnprobe.report import build_report
from attnprobe.report import tables as T
from attnprobe.report.loaders import cells_frame, chunks_frame
from attnprobe.report.sources import cell_source, choose_group, group_cells, parse_source
from attnprobe.report.summary import counting_summary
from attnprobe.store import CellKey, ChunkCounts, ResultsStore
from tests.test_imagenet_p import BrightnessNet, _loaded, make_p_tree


def add_cell(store: ResultsStore, key: CellKey, n: int, correct: int, info: dict, extra: dict | None = None) -> None:
    """One finished single-chunk cell, written the way the engine writes it."""
    store.add_chunk(key, 0, ChunkCounts(n=n, correct=correct, extra=extra))
    store.finish_cell(key, 1, {**info, "n_samples": n})


# -- what a cell's source is -------------------------------------------------------------------------------------

def test_cell_source_reads_fingerprint_and_info() -> None:
    rel = cell_source("imagenet_p", "imagenet_p:0123", {"regenerated": False, "root": "/d/p"})
    regen = cell_source("imagenet_p", "imagenet_p_regenerated:ab", {"regenerated": True, "limit": 2})
    otf = cell_source("imagenet_c", "imagenet_c_otf:cd", {"source": "on_the_fly", "backend": "torch"})
    assert (rel.kind, rel.family, rel.subset, rel.root) == ("released", "released", False, "/d/p")
    assert (regen.kind, regen.family, regen.limit) == ("regenerated", "generated", 2)
    assert otf.family == "generated" and "backend torch" in otf.words()
    assert regen.words() == "--limit 2 subset of ImageNet-P regenerated"
    # stores written before the driver recorded a source still get one from the fingerprint
    assert cell_source("imagenet_c", "imagenet_c:ef", {}).kind == "released"
    assert cell_source("clean", "ds-1", {}).kind == "unlabelled"
    # another attack or difficulty is another measurement, never pooled with the standard one
    assert cell_source("pgd", "imagenet_val:1", {}, "pgd-eps2-step1-steps10-seed0").setting is not None
    assert cell_source("pgd", "imagenet_val:1", {}, "pgd5").setting is None
    assert cell_source("imagenet_p", "imagenet_p:1", {}, "rotate", 2).setting == "difficulty 2"
    demo = cell_source("imagenet_c", "synthetic-shapes-v1:seed=0:val:64px:first=300", {"source": "on_the_fly"})
    assert demo.words() == "ImageNet-C generated on the fly from synthetic shapes"
    assert cell_source("clean", "synthetic-shapes-v1:x", {"source": "synthetic"}).words() == \
        "clean images of the synthetic shapes set"
    assert parse_source("on-the-fly") == parse_source("regenerated") == "generated"
    assert parse_source(None) is None
    with pytest.raises(UserError, match="--source 'bogus'"):
        parse_source("bogus")


def _p_cells(tmp_path: Path, variants: dict[str, dict]) -> pd.DataFrame:
    """A store with one ImageNet-P cell of model 'm' per variant name -> info (fingerprint prefix in 'kind')."""
    with ResultsStore(tmp_path) as store:
        for i, (name, info) in enumerate(variants.items()):
            key = CellKey("m", "sha", "imagenet_p", f"{info.pop('kind')}:{i}", "pre", "rotate", 1)
            add_cell(store, key, info.pop("n"), 0, info, {"fp_sum": 1.0})
        return cells_frame(store)


def test_choose_group_prefers_full_then_released(tmp_path: Path) -> None:
    cells = _p_cells(tmp_path, {"regen": {"kind": "imagenet_p_regenerated", "n": 500, "regenerated": True},
                                "subset": {"kind": "imagenet_p", "n": 2, "limit": 2, "regenerated": False},
                                "full": {"kind": "imagenet_p", "n": 300, "regenerated": False}})
    groups = group_cells(cells)[("m", "imagenet_p")]
    assert len(groups) == 3
    assert choose_group(groups).source.signature == ("released", None, None, None, None)
    assert choose_group(groups, "generated").source.kind == "regenerated"
    only_subset = [g for g in groups if g.source.subset]
    assert choose_group(only_subset).source.limit == 2  # a subset is shown when it is all there is (and marked)
    assert choose_group([g for g in groups if g.source.kind == "regenerated"], "released") is None


# -- the mFR case of issue 17 ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mixed_p_store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Released ImageNet-P (full and --limit 2) through the real driver, plus regenerated cells, in one store."""
    tmp = tmp_path_factory.mktemp("mixed_p")
    tests = protocol.test_perturbations()
    make_p_tree(tmp / "p", tuple(tests), per_class=1, size=16)  # 3 videos per perturbation
    lm = _loaded(BrightnessNet())
    with ResultsStore(tmp / "out") as store:
        store.register_model(lm.name, lm.checkpoint_sha256)
        full = evaluate_imagenet_p(lm, [ReleasedVideos(tmp / "p", p, 1) for p in tests], store, workers=0)
        sub = evaluate_imagenet_p(lm, [ReleasedVideos(tmp / "p", p, 1, limit=2) for p in tests], store, workers=0)
        # regenerated sequences (what `mfr --on-the-fly` stores), written directly: generating them is slow
        alex = protocol.alexnet_flip_probabilities()
        for i, p in enumerate(tests):
            key = CellKey(lm.name, lm.checkpoint_sha256, "imagenet_p", f"imagenet_p_regenerated:{i:04x}",
                          lm.preprocessing.key(), p, 1)
            add_cell(store, key, 4, 2, {"regenerated": True, "source": "regenerated", "root": str(tmp / "val"),
                                        "limit": None}, {"fp_sum": 4 * 3 * alex[p], "pairs": 120})
    return {"root": tmp / "out", "released": summarize_imagenet_p(full)["mfr"],
            "subset": summarize_imagenet_p(sub)["mfr"], "regenerated": 3.0, "tmp": tmp}


def _table(res, name: str) -> tuple[pd.DataFrame, str]:
    entry = next(t for t in res.tables if t.name == name)
    csv = next(p for p in entry.files if p.suffix == ".csv")
    md = next(p for p in entry.files if p.suffix == ".md")
    return pd.read_csv(csv, index_col=0), md.read_text()


def test_report_mfr_equals_the_released_mfr_and_shows_the_others_apart(mixed_p_store: dict) -> None:
    released, subset = mixed_p_store["released"], mixed_p_store["subset"]
    assert released is not None and subset is not None and abs(released - subset) > 1e-3  # the sets differ
    res = build_report(mixed_p_store["root"], mixed_p_store["tmp"] / "report", formats=("png",), n_resamples=20)
    t2, md = _table(res, "table2_summary")
    assert t2.loc["brightness", "mfr"] == pytest.approx(100 * released, rel=1e-5)
    assert t2.loc["brightness", "mfr_source"] == "released" and t2.loc["brightness", "mfr_n"] == 3
    assert "IN-P mFR: released ImageNet-P, 3 videos per perturbation (10 perturbations)." in md
    assert "†" in md  # 3 videos is a handful, and the table says so
    src, src_md = _table(res, "table2_sources")
    rows = src[src["column"] == "mfr"].set_index("source")
    assert rows.loc["released", "value"] == pytest.approx(100 * released, rel=1e-5)
    assert rows.loc["released", "in_table2"]
    assert rows.loc["released, limit 2", "value"] == pytest.approx(100 * subset, rel=1e-5)
    assert rows.loc["regen.", "value"] == pytest.approx(100 * mixed_p_store["regenerated"], rel=1e-5)
    assert not rows.loc["released, limit 2", "in_table2"] and not rows.loc["regen.", "in_table2"]
    assert "--limit 2 subset of released ImageNet-P" in src_md and "ImageNet-P regenerated" in src_md
    assert any("several data sources for IN-P mFR of brightness" in n for n in res.notes)


def test_report_source_option_selects_the_regenerated_set(mixed_p_store: dict) -> None:
    res = build_report(mixed_p_store["root"], mixed_p_store["tmp"] / "report_regen", formats=("png",),
                       n_resamples=20, source="regenerated")
    t2, md = _table(res, "table2_summary")
    assert t2.loc["brightness", "mfr"] == pytest.approx(100 * mixed_p_store["regenerated"], rel=1e-5)
    assert "IN-P mFR: ImageNet-P regenerated, 4 videos per perturbation" in md


def test_summary_never_builds_a_number_from_two_sources(mixed_p_store: dict) -> None:
    with ResultsStore(mixed_p_store["root"], readonly=True) as store:
        cells = cells_frame(store)
    # drop one perturbation from the full released set: the table must not fill it from the subset
    cut = cells[~((cells["dataset"].str.startswith("imagenet_p:")) & (cells["condition"] == "rotate")
                  & (cells["n"] == 3))]
    s = counting_summary(cut, None)
    assert s.table.loc["brightness", "mfr_partial"]
    g = s.sources[("brightness", "mfr")]
    assert g.source.limit is None and len(g.cells) == 9 and set(g.cells["n"]) == {3}


# -- several models on different data ----------------------------------------------------------------------------

def _c_store(root: Path) -> ResultsStore:
    """Model 'a' on released ImageNet-C, 'b' on the fly; both with clean accuracy on 3 images and PGD on 8."""
    from attnprobe.protocol import benchmark_corruptions

    store = ResultsStore(root)
    for model, prefix, info in (("a", "imagenet_c", {"source": "released"}),
                                ("b", "imagenet_c_otf", {"source": "on_the_fly", "backend": "torch"})):
        store.register_model(model, "sha-" + model)
        for c in benchmark_corruptions()[:2]:
            for s in range(1, 6):
                add_cell(store, CellKey(model, "sha-" + model, "imagenet_c", f"{prefix}:1", "pre", c, s), 1000,
                         600 - 20 * s, {**info, "limit": None})
        add_cell(store, CellKey(model, "sha-" + model, "clean", "imagenet_val:1", "pre", "clean", 0), 3, 2,
                 {"source": "clean", "root": "/val", "limit": None})
        add_cell(store, CellKey(model, "sha-" + model, "pgd", "imagenet_val:2", "pre", "pgd5", 0), 8, 4,
                 {"limit": 8})
    return store


def test_models_on_different_sources_are_lettered_and_not_subtracted(tmp_path: Path) -> None:
    with _c_store(tmp_path) as store:
        s = counting_summary(cells_frame(store), chunks_frame(store), baseline="a", n_resamples=50)
    assert "mce" not in s.differences.get("b", {})  # released vs on the fly: no change is computed
    assert "clean" in s.differences["b"]  # the same clean folder: compared
    t = T.summary_table(s.table, baseline="a", intervals=s.intervals, sources=s.sources, notes=s.notes)
    mce = t.display["IN-C mCE ↓"]
    assert mce["a"].endswith("*ᵃ") and mce["b"].endswith("*ᵇ") and "(" not in mce["b"]  # 1000 images: no †
    notes = " ".join(t.notes)
    assert "ᵃ released ImageNet-C" in notes and "ᵇ ImageNet-C generated on the fly (backend torch)" in notes
    # clean accuracy on 3 images and PGD on 8 (a --limit run) are marked and their counts stated
    assert t.display["Clean acc. ↑"]["a"].split(" ± ")[1].endswith("†")
    assert "Clean acc.: clean images in /val, n = 3 images." in t.notes
    assert "PGD: --limit 8 subset of PGD-5 on clean images, n = 8 images." in t.notes
    assert T.to_latex(t).count(r"$^b$") >= 1
