"""The selection rule: holdout or stratified K-fold cross-validation, resolved once by the plan and recorded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from probe_helpers import config, write_store
from typer.testing import CliRunner

from epcache.cli import app
from epcache.errors import ConfigError
from epcache.probe import probe_store
from epcache.probe.data.folds import CV_BELOW, parse_select, stratified_folds

SMALL = {"head": "linear", "tokens": "gap", "queries": (), "epochs": 3, "batch_size": 16}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_store(tmp_path_factory.mktemp("select") / "needle.zarr", n_train=120, n_val=40)


def test_stratified_folds_partition_the_rows_and_spread_every_class() -> None:
    labels = np.repeat(np.arange(5), [23, 7, 5, 3, 12])
    rows = np.flatnonzero(np.arange(len(labels)) % 10 != 3)  # some rows are not usable
    folds = stratified_folds(labels, rows, 5, seed=7)
    assert len(folds) == 5
    together = np.concatenate(folds)
    assert sorted(together.tolist()) == rows.tolist()  # disjoint, and covering exactly the given rows
    assert all((np.diff(f) > 0).all() for f in folds)  # sorted ascending
    for c in range(5):
        counts = [int((labels[f] == c).sum()) for f in folds]
        assert max(counts) - min(counts) <= 1  # every class dealt across the folds
        if (labels[rows] == c).sum() >= 5:
            assert min(counts) >= 1
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 1
    again = stratified_folds(labels, rows, 5, seed=7)
    assert all((a == b).all() for a, b in zip(folds, again, strict=True))
    other = stratified_folds(labels, rows, 5, seed=8)
    assert any(not np.array_equal(a, b) for a, b in zip(folds, other, strict=True))


def test_parse_select() -> None:
    assert parse_select("auto") == ("auto", 0) and parse_select("holdout") == ("holdout", 0)
    assert parse_select("cv5") == ("cv", 5) and parse_select("CV2") == ("cv", 2)
    for bad in ("cv1", "cv", "kfold", "cv0"):
        with pytest.raises(ConfigError, match="cvK"):
            parse_select(bad)


def test_auto_cross_validates_a_small_training_set(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "cv"
    res = probe_store(config(store, holdout=None, refit=True, out=str(out), **SMALL), progress=False)
    assert CV_BELOW > 120
    (row,) = res.rows
    p = row["protocol"]
    assert p["selection_rule"] == "cv5" and "5-fold cross-validation" in p["selection"]
    assert row["data"]["num_holdout"] == 0 and sum(row["data"]["folds"]) == 120
    assert row["metrics"]["holdout"]["n"] == 120  # the pooled selection score counts every training row once
    assert row["refit"]["enabled"] and row["refit"]["train_size"] == 120
    assert row["refit"]["steps"] == row["selected_epoch"] * p["steps_per_epoch"]
    curve = row["curves"]["holdout_top1"]
    assert len(curve) == 3 and curve[row["selected_epoch"] - 1] == max(curve)
    assert row["refit"]["eval_curve"] is True and row["oracle"]["curve"] == "refit"  # cv: the refit's eval curve
    assert row["oracle"]["eval_top1"] >= row["metrics"]["eval"]["top1"] and res.best is not None
    assert sum("selection: stratified 5-fold" in n for n in res.notes) == 1
    plan = json.loads((out / "plan.json").read_text())
    assert plan["selection"]["rule"] == "cv5" and "1000" in plan["selection"]["reason"]
    assert not list((out / "ckpt").iterdir())


def test_explicit_holdout_keeps_holdout_selection(store: Path) -> None:
    given = probe_store(config(store, holdout=0.2, **SMALL), progress=False).rows[0]
    assert given["protocol"]["selection_rule"] == "holdout" and given["data"]["num_holdout"] == 24
    chosen = probe_store(config(store, holdout=None, select="holdout", **SMALL), progress=False).rows[0]
    assert chosen["protocol"]["selection_rule"] == "holdout" and chosen["data"]["num_holdout"] > 0
    assert "folds" not in chosen["data"]


def test_few_shot_folds_follow_the_smallest_class(store: Path) -> None:
    three = probe_store(config(store, holdout=None, shots=3, refit=True, **{**SMALL, "batch_size": 4}),
                        progress=False).rows[0]
    assert three["protocol"]["selection_rule"] == "cv3" and three["data"]["folds"] == [4, 4, 4]
    assert three["refit"]["train_size"] == 12
    one = probe_store(config(store, holdout=None, shots=1, refit=True, **{**SMALL, "batch_size": 4}),
                      progress=False)
    row = one.rows[0]
    assert row["protocol"]["selection_rule"] == "none" and row["selected_epoch"] == 3  # the last epoch
    assert row["refit"]["enabled"] is False
    assert any("selection: none" in n for n in one.notes)


def test_auto_without_refit_holds_out(store: Path) -> None:
    row = probe_store(config(store, holdout=None, refit=False, **SMALL), progress=False).rows[0]
    assert row["protocol"]["selection_rule"] == "holdout" and row["data"]["num_holdout"] > 0
    assert row["refit"] == {"enabled": False, "reason": "--no-refit"}


def test_cv_without_refit_is_refused(store: Path) -> None:
    with pytest.raises(ConfigError, match="drop --no-refit"):
        probe_store(config(store, select="cv5", refit=False, **SMALL), progress=False)
    result = CliRunner().invoke(app, ["probe", "--store", str(store), "--head", "linear", "--select", "cv5",
                                      "--no-refit", "--device", "cpu", "--no-progress"])
    assert result.exit_code == 2 and "--no-refit" in result.output
