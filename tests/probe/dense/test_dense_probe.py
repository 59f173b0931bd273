"""`epcache probe --head dense-*`: dense rows from a store with masks, beside classification rows in one sweep."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from dense_helpers import dense_store
from typer.testing import CliRunner

from epcache.cli import app
from epcache.probe import ProbeConfig, probe_store
from epcache.probe.results.predictions import read_predictions
from epcache.probe.results.ranking import rank_rows

runner = CliRunner()


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return (dense_store(tmp_path_factory.mktemp("masks")),
            dense_store(tmp_path_factory.mktemp("plain"), masks=False))


def test_dense_heads_beat_the_majority_and_rerun_skips(stores: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = ProbeConfig(store=str(stores[0]), head=("seg-linear", "dense-logreg(Cs=[0.1,1.0,10.0])", "ridge"),
                         layers=(1,), out=str(out))
    result = probe_store(config, progress=False)
    dense = [r for r in result.rows if r.get("task") == "dense"]
    assert {r["kind"] for r in dense} == {"seg-linear", "dense-logreg"}
    assert any(r["config"]["kind"] == "ridge" for r in result.rows if r.get("task") != "dense")
    for r in dense:
        ev = r["metrics"]["eval"]
        assert ev["miou"] > ev["majority_miou"] + 0.2, (r["kind"], ev)
        assert set(ev["per_class_iou"]) == set(r["data"]["class_map"]) == {"background", "circle", "square",
                                                                             "triangle"}
        assert r["metrics"]["holdout"]["miou"] == max(h["miou"] for h in r["holdout_scores"])
        assert r["input"]["layers"] == [1] and r["store"]["provenance"] and r["protocol"]["selection"]
        pred = read_predictions(out / r["dense_file"])
        assert pred["pred"].dtype == np.uint8 and pred["pred"].shape == pred["truth"].shape
        assert pred["pred"].shape[1:] == (64, 64)
    assert len(next(r for r in dense if r["kind"] == "dense-logreg")["holdout_scores"]) == 3
    # one ranking: classification groups first, the dense ones among themselves by holdout mIoU
    ranked = [g.rows[0] for g in rank_rows(result.rows)]
    dense_ranked = [r for r in ranked if r.get("task") == "dense"]
    assert ranked[-len(dense_ranked):] == dense_ranked
    assert [r["metrics"]["holdout"]["miou"] for r in dense_ranked] == sorted(
        (r["metrics"]["holdout"]["miou"] for r in dense_ranked), reverse=True)
    assert "dense: 2 configs" in result.summary and "majority" in result.summary
    assert "dense: 2 configs" in (out / "summary.txt").read_text()
    lines = (out / "results.jsonl").read_text().splitlines()
    again = probe_store(config, progress=False)
    assert set(again.skipped) == {r["id"] for r in result.rows}
    assert (out / "results.jsonl").read_text().splitlines() == lines  # nothing appended
    assert [r["id"] for r in again.rows] == [r["id"] for r in result.rows]


def test_hummingbird_and_knn_rank_by_a_holdout(stores: tuple[Path, Path], tmp_path: Path) -> None:
    result = probe_store(ProbeConfig(store=str(stores[0]), head=("hummingbird", "dense-knn(ks=[1,3])"), layers=(1,),
                                     out=str(tmp_path / "run")), progress=False)
    rows = {r["kind"]: r for r in result.rows}
    assert set(rows) == {"hummingbird", "dense-knn"} and result.best is not None
    assert len(rows["dense-knn"]["holdout_scores"]) == 2 * 2  # 2 metrics x 2 ks
    assert len(rows["hummingbird"]["holdout_scores"]) == 1  # no grid: its own score on the same image holdout
    for r in rows.values():
        assert 0 < r["metrics"]["holdout"]["miou"] <= 1
        assert r["metrics"]["eval"]["miou"] > r["metrics"]["eval"]["majority_miou"]


@pytest.mark.parametrize(("args", "words"), [
    (["--head", "dense-knn,linear"], ["split 'train'", "--masks"]),
    (["--head", "seg-linear(lrs=[0.1],bogus=1)"], ["unknown option", "bogus"]),
])
def test_refusals_exit_2_and_write_nothing(stores: tuple[Path, Path], tmp_path: Path, args: list[str],
                                           words: list[str]) -> None:
    store = stores[1] if "--masks" in words else stores[0]
    out = tmp_path / "run"
    res = runner.invoke(app, ["probe", "--store", str(store), "--out", str(out), "--no-progress", *args])
    assert res.exit_code == 2, res.output
    for w in words:
        assert w in res.output, res.output
    assert not out.exists() or not any(out.iterdir())


def test_dense_rows_are_recorded_like_other_rows(stores: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    probe_store(ProbeConfig(store=str(stores[0]), head=("dense-logreg(Cs=[1.0])",), layers=(0, 1), out=str(out)),
                progress=False)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["input"]["layers"][0] for r in rows) == [0, 1]  # one row per layer
    assert all(r["head"] == "dense-logreg(Cs=[1.0])" and r["chosen"]["C"] == 1.0 for r in rows)


def test_memory_heads_read_every_stored_view_and_the_plan_says_so(tmp_path: Path) -> None:
    store = dense_store(tmp_path / "views", views=2)  # the eval view and 2 augmented ones
    result = probe_store(ProbeConfig(store=str(store), head=("hummingbird", "dense-logreg(Cs=[1.0])"), layers=(1,)),
                         progress=False)
    views = {r["kind"]: r["input"]["views"] for r in result.rows}
    assert views == {"hummingbird": 3, "dense-logreg": 1}
    note = next(n for n in result.notes if n.startswith("plan: 2 dense configs"))
    assert "all 3 views for hummingbird, view 0 for the others" in note
    assert all(r["metrics"]["eval"]["miou"] > r["metrics"]["eval"]["majority_miou"] for r in result.rows)


def test_a_store_without_a_patch_grid_is_refused_before_any_work(tmp_path: Path) -> None:
    store = dense_store(tmp_path / "light", keep="cls,gap")  # one averaged token per image, masks beside it
    out = tmp_path / "run"
    res = runner.invoke(app, ["probe", "--store", str(store), "--head", "hummingbird,linear", "--out", str(out),
                              "--no-progress"])
    assert res.exit_code == 2 and "light store" in res.output and "no patch grid" in res.output, res.output
    assert not out.exists() or not any(out.iterdir())


def test_a_tap_has_no_masks_and_says_where_they_are(tmp_path: Path) -> None:
    store = dense_store(tmp_path / "taps", taps="attn_norm")  # masks in the parent, none in the tap store
    out = tmp_path / "run"
    res = runner.invoke(app, ["probe", "--store", str(store), "--tap", "attn_norm", "--head", "seg-linear",
                              "--out", str(out), "--no-progress"])
    assert res.exit_code == 2 and "tap 'attn_norm'" in res.output and "without --tap" in res.output, res.output
    assert not out.exists() or not any(out.iterdir())


def test_layer_mixes_join_the_layers_patch_by_patch(stores: tuple[Path, Path], tmp_path: Path) -> None:
    from epcache.probe.dense import DenseData
    from epcache.probe.dense.registry import run_dense_head
    from epcache.store import open_store

    head = "dense-logreg(Cs=[1.0])"
    result = probe_store(ProbeConfig(store=str(stores[0]), head=(head,), layers=(0, 1),
                                     layer_mix=("none", "concat", "mean")), progress=False)
    rows = {(tuple(r["input"]["layers"]), r["input"]["layer_mix"]): r for r in result.rows}
    assert sorted(rows) == [((0,), "none"), ((0, 1), "concat"), ((0, 1), "mean"), ((1,), "none")]
    assert rows[((0, 1), "concat")]["name"].endswith("L0+1 concat")
    with open_store(stores[0]) as s:
        p, (h, w) = s.meta.layout.num_prefix, s.meta.layout.grid

        def feats(split: str, layer: int) -> np.ndarray:
            x = s.read_rows(split, layer, np.arange(s.split(split).num_samples))[:, 0, p:]
            return np.asarray(x, np.float32).reshape(x.shape[0], h, w, -1)

        info = s.dense_info()
        assert info is not None
        both = {split: (feats(split, 0), feats(split, 1)) for split in ("train", "val")}
        masks = {split: s.read_masks(split, slice(None)).astype(np.int64) for split in ("train", "val")}
    dim, classes = both["train"][0].shape[-1], len(info.classes)
    for mix, join in (("concat", lambda a, b: np.concatenate([a, b], -1)), ("mean", lambda a, b: (a + b) / 2)):
        data = DenseData(join(*both["train"]), masks["train"], join(*both["val"]), masks["val"], classes,
                         info.ignore_index)
        want = run_dense_head("dense-logreg", data, {"Cs": (1.0,)})
        got = rows[((0, 1), mix)]
        assert got["metrics"]["eval"]["miou"] == pytest.approx(want.miou, abs=1e-9)
        width = 2 * dim if mix == "concat" else dim
        assert got["params"] == width * classes + classes
    res = runner.invoke(app, ["probe", "--store", str(stores[0]), "--head", "seg-linear", "--layers", "0,1",
                              "--layer-mix", "tokens", "--out", str(tmp_path / "run"), "--no-progress"])
    assert res.exit_code == 2 and "concat or mean" in res.output, res.output
