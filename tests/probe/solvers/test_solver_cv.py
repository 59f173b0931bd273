"""Solver heads apply the plan's selection rule: cvK selection equals a hand-written K-fold selection, same folds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from solver_helpers import class_store

from epcache.probe import ProbeConfig, probe_store
from epcache.probe.data.folds import stratified_folds
from epcache.probe.solvers import RidgeStats, ridge_lambdas, standardiser
from epcache.probe.solvers._cv import DrawSelection, draw_selection, fit_cv
from epcache.probe.solvers._fit import _augment
from epcache.probe.solvers._knn import knn_predict
from epcache.probe.solvers._logreg import c_grid, fit_logreg, logreg_path
from epcache.probe.solvers._ncm import fit_ncm
from epcache.probe.solvers._spec import SolverSettings, SolverSpec

C = 4
K = 4
SETTINGS = SolverSettings(0, 0.0, None, "float64", "train", "val", "p", "p", selection=f"cv{K}")


def _data(n: int = 96, m: int = 64, D: int = 6, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    centres = 1.5 * torch.randn(C, D, generator=g, dtype=torch.float64)
    y, ye = torch.arange(n) % C, torch.arange(m) % C
    scale = torch.linspace(0.3, 4.0, D, dtype=torch.float64)  # unequal scales: standardisation matters
    x = (centres[y] + 1.3 * torch.randn(n, D, generator=g, dtype=torch.float64)) * scale + 1.0
    xe = (centres[ye] + 1.3 * torch.randn(m, D, generator=g, dtype=torch.float64)) * scale + 1.0
    return x, y, xe, ye


def _spec(kind: str, **options: Any) -> SolverSpec:
    base: dict[str, dict[str, Any]] = {
        "knn": {"k": (1, 3, 9), "T": (0.07, 0.5), "select": "holdout", "metric": "cosine", "weighting": "softmax"},
        "ridge": {"grid": "scaled"},
        "logreg": {"C": (0.001, 0.01, 0.1, 1.0, 10.0), "max_iter": 500, "tol": 1e-8},
        "ncm": {},
    }
    opts = {**base[kind], "standardize": False, **options}
    return SolverSpec(kind, tuple(sorted(opts.items())), 0, "gap", None, 0, SETTINGS)


def _selection(y: torch.Tensor) -> DrawSelection:
    rows = np.arange(len(y))
    return DrawSelection(f"cv{K}", "test", stratified_folds(y.numpy(), rows, K, seed=3))


def _split(sel: DrawSelection, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for held in sel.folds:
        fit = np.setdiff1d(np.arange(n), held)
        out.append((fit, held))
    return out


def test_ridge_cv_equals_per_fold_closed_form_pooled_argmax() -> None:
    x, y, xe, ye = _data()
    sel = _selection(y)
    rel = ridge_lambdas("scaled", len(y))[0]
    hits = np.zeros(len(rel))
    for fit, held in _split(sel, len(y)):
        stats = RidgeStats.accumulate([(x[fit], y[fit])], dim=x.shape[1], num_classes=C)
        mu, s, _ = standardiser(stats)
        X = _augment(x[fit], mu, s)
        Y = 2 * torch.nn.functional.one_hot(y[fit], C).double() - 1
        for i, r in enumerate(rel):  # a direct solve per λ: no eigen path
            W = torch.linalg.solve(X.T @ X + r * len(fit) * torch.eye(X.shape[1], dtype=torch.float64), X.T @ Y)
            hits[i] += int(((_augment(x[held], mu, s) @ W).argmax(1) == y[held]).sum())
    best = max(i for i in range(len(rel)) if hits[i] == hits.max())  # ties: the larger λ
    stats = RidgeStats.accumulate([(x, y)], dim=x.shape[1], num_classes=C)
    mu, s, _ = standardiser(stats)
    X = _augment(x, mu, s)
    Y = 2 * torch.nn.functional.one_hot(y, C).double() - 1
    W = torch.linalg.solve(X.T @ X + rel[best] * len(y) * torch.eye(X.shape[1], dtype=torch.float64), X.T @ Y)
    eval_top1 = float(((_augment(xe, mu, s) @ W).argmax(1) == ye).double().mean())
    out = fit_cv(_spec("ridge"), sel, np.arange(len(y)), x, y, xe, ye, C)
    assert out.details["selected_index"] == best and out.details["lambda"] == pytest.approx(rel[best] * len(y))
    assert out.eval.top1 == eval_top1
    assert out.holdout is not None and out.holdout.n == len(y)
    assert out.holdout.top1 == pytest.approx(hits[best] / len(y))
    assert out.holdout_curve == pytest.approx((hits / len(y)).tolist())
    assert out.details["selection"] == f"cv{K}" and sum(out.details["folds"]) == len(y)


def test_logreg_cv_pools_the_fold_paths_and_keeps_the_smallest_tied_c() -> None:
    x, y, xe, ye = _data(seed=1)
    sel = _selection(y)
    Cs = c_grid((0.001, 0.01, 0.1, 1.0, 10.0))
    hits = np.zeros(len(Cs))
    for fit, held in _split(sel, len(y)):
        mu, sd = x[fit].mean(0), x[fit].std(0, unbiased=False)
        _, _, accs = logreg_path((x[fit] - mu) / sd, y[fit], (x[held] - mu) / sd, y[held], Cs, num_classes=C,
                                 max_iter=500, tol=1e-8)
        hits += np.round(np.array(accs) * len(held))
    best = int(np.argmax(hits))  # first maximum: a tie keeps the smaller C
    mu, sd = x.mean(0), x.std(0, unbiased=False)
    final = fit_logreg((x - mu) / sd, y, Cs[best], num_classes=C, max_iter=500, tol=1e-8)
    eval_top1 = float((torch.addmm(final.bias, (xe - mu) / sd, final.weight.T).argmax(1) == ye).double().mean())
    out = fit_cv(_spec("logreg"), sel, np.arange(len(y)), x, y, xe, ye, C)
    assert out.details["C"] == Cs[best] and out.details["selected_index"] == best
    assert [len(p) for p in out.details["path_iterations"]] == [len(Cs)] * K  # every fold's path is recorded
    assert out.eval.top1 == pytest.approx(eval_top1)
    assert out.holdout is not None and out.holdout.n == len(y) and out.holdout.top1 == pytest.approx(hits[best] / 96)


@pytest.mark.parametrize("standardize", [False, True])
def test_knn_cv_picks_the_pair_of_the_pooled_fold_votes(standardize: bool) -> None:
    x, y, xe, ye = _data(seed=2)
    sel = _selection(y)
    pairs = [(k, t) for k in (1, 3, 9) for t in (0.07, 0.5)]
    hits = np.zeros(len(pairs))
    for fit, held in _split(sel, len(y)):
        bank, queries = x[fit].numpy(), x[held].numpy()
        if standardize:  # the scaler of the fold's fit rows only
            mean, std = bank.mean(0), bank.std(0)
            bank, queries = (bank - mean) / std, (queries - mean) / std
        for i, (k, t) in enumerate(pairs):
            pred = knn_predict(torch.from_numpy(bank), y[fit], torch.from_numpy(queries), k=k, temperature=t,
                               num_classes=C)
            hits[i] += int((pred == y[held]).sum())
    best = int(np.argmax(hits))  # ties: smallest k, then T
    out = fit_cv(_spec("knn", standardize=standardize), sel, np.arange(len(y)), x, y, xe, ye, C)
    assert (out.details["k"], out.details["T"]) == pairs[best]
    assert out.holdout is not None and out.holdout.n == len(y) and out.holdout.top1 == pytest.approx(hits[best] / 96)
    assert np.ravel(out.details["holdout_table"]["top1"]).tolist() == pytest.approx((hits / 96).tolist())
    assert out.details["eval_table"] is not None and out.details["bank"] == len(y)


def test_ncm_cv_scores_each_fold_with_its_own_centroids() -> None:
    x, y, xe, ye = _data(seed=3)
    sel = _selection(y)
    hits = 0
    for fit, held in _split(sel, len(y)):
        hits += int((fit_ncm(x[fit], y[fit], num_classes=C).scores(x[held]).argmax(1) == y[held]).sum())
    out = fit_cv(_spec("ncm"), sel, np.arange(len(y)), x, y, xe, ye, C)
    final = fit_ncm(x, y, num_classes=C)
    assert out.holdout is not None and out.holdout.n == len(y) and out.holdout.top1 == pytest.approx(hits / 96)
    assert out.eval.top1 == float((final.scores(xe).argmax(1) == ye).double().mean())


def test_a_one_shot_draw_records_none_and_takes_the_solver_default() -> None:
    labels = np.repeat(np.arange(C), 10)
    draw = np.array([0, 10, 20, 30])
    sel = draw_selection("cv5", labels, draw, shots=1, plan_folds=(), seed=0)
    assert sel.rule == "none" and "single sample" in sel.reason and not sel.folds
    three = draw_selection("cv5", labels, np.arange(0, 40, 3), shots=3, plan_folds=(), seed=0)
    assert three.rule == "cv3" and len(three.folds) == 3  # K = min(the rule's K, the draw's smallest class)
    x, y, xe, ye = _data(n=4, seed=4)
    out = fit_cv(_spec("ridge"), sel, np.arange(4), x, y, xe, ye, C)
    assert out.holdout is None and out.details["lambda"] == 1024.0 and out.details["selection"] == "none"
    out = fit_cv(_spec("logreg"), sel, np.arange(4), x, y, xe, ye, C)
    assert out.details["C"] == 1.0


# ------------------------------------------------------------------------------------------ the sweep

HEADS = ("linear", "ridge", "logreg(C=[0.1,1.0])", "knn", "ncm")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return class_store(tmp_path_factory.mktemp("cv") / "s.zarr", n_train=80, n_val=40)


def _sweep(store: Path, out: Path, **kw: Any) -> list[dict[str, Any]]:
    cfg = ProbeConfig(store=str(store), head=kw.pop("head", HEADS), device="cpu", out=str(out), epochs=2,
                      batch_size=16, lr=(0.01,), **kw)
    return list(probe_store(cfg, progress=False).rows)


def test_mixed_sweep_trained_and_solver_rows_hold_out_every_training_row(store: Path, tmp_path: Path) -> None:
    rows = _sweep(store, tmp_path / "cv")
    assert {r["config"].get("solver", False) for r in rows} == {True, False}
    for r in rows:
        assert r["metrics"]["holdout"]["n"] == 80, r["name"]  # one truth: pooled cv counts of all 80 rows
        assert r["protocol"]["selection_rule"] == "cv5" and "5-fold cross-validation" in r["protocol"]["selection"]
        assert r["data"]["num_holdout"] == 0 and sum(r["data"]["folds"]) == 80
    solver = [r for r in rows if r["config"].get("solver")]
    assert all(r["data"]["num_refit"] == 80 and r["config"]["selection"] == "cv5" for r in solver)
    plan = json.loads((tmp_path / "cv" / "plan.json").read_text())
    trained_folds = plan["trained"][0]["rows"]["sha256"]
    for s in plan["solvers"]:
        assert s["settings"]["selection"] == "cv5"
        assert s["rows"]["holdout"] == 0 and s["rows"]["sha256"]["fold0"] == trained_folds["fold0"]


def test_explicit_holdout_keeps_holdout_for_both(store: Path, tmp_path: Path) -> None:
    rows = _sweep(store, tmp_path / "hold", holdout=0.25)
    for r in rows:
        hold = r["data"]["num_holdout"]
        assert hold == 20 and r["metrics"]["holdout"]["n"] == hold, r["name"]
    for r in rows:
        if r["config"].get("solver"):
            assert "selection" not in r["config"]  # ids as before the rule
            assert r["protocol"]["selection_rule"] == "holdout"  # every row kind names its rule
        else:
            assert r["protocol"]["selection_rule"] == "holdout"


def test_few_shot_solver_draws_select_within_their_shots(store: Path, tmp_path: Path) -> None:
    rows = _sweep(store, tmp_path / "fs", head=("ridge", "knn(k=[1,2],T=[0.07],select='holdout')"), shots=(1, 3))
    rules = {(r["config"]["kind"], r["config"]["shots"]): r["protocol"]["selection_rule"] for r in rows}
    assert rules == {("ridge", 1): "none", ("knn", 1): "none", ("ridge", 3): "cv3", ("knn", 3): "cv3"}
    for r in rows:
        if r["config"]["shots"] == 1:
            assert r["metrics"]["holdout"] is None and "single sample" in r["protocol"]["selection"]
        else:
            assert r["metrics"]["holdout"]["n"] == 12 and r["data"]["num_train"] == 12
