"""Cross-validated selection of a solver's hyperparameter, so solver rows follow the plan's rule as trained rows do.

With the rule cvK every fold is held out once: the solver's whole path (k-NN (k, T) table, ridge λ
eigen path, logistic C path, NCM) is fitted on the other K-1 folds and scores the held fold; the
per-grid-value counts (correct and total per class, cross-entropy where the solver has logits) are
summed over the folds, and the value is picked on the pooled counts by the rule the solver applies
to a holdout. The final model is then fitted once on every training row (``fit_solver`` with the
chosen index) and scores the eval split. The ``standardize`` scaler of each fold is fitted on that
fold's fit rows only. A few-shot draw is cross-validated within its own shots; a draw with a single
sample in a class cannot be, and takes the solver's default instead (rule ``none``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from epcache._progress import SlowSteps
from epcache.probe.data.folds import selection_text, stratified_folds
from epcache.probe.results.metrics import Metrics, MetricsAccumulator
from epcache.probe.solvers._fit import SolverInputs, SolverOutcome, _augment, _ridge_path, fit_solver
from epcache.probe.solvers._knn import KnnTable, knn_table
from epcache.probe.solvers._logreg import LogregFit, c_grid, logreg_path
from epcache.probe.solvers._ncm import fit_ncm
from epcache.probe.solvers._ridge import RidgeStats, ridge_lambdas
from epcache.probe.solvers._spec import FIXED_KNN_PAIR, SolverSpec
from epcache.probe.solvers._standardize import Standardizer

__all__ = ["DEFAULT_FOLDS", "NONE_DEFAULTS", "SOLVER_RULE", "DrawSelection", "draw_selection", "fit_cv",
           "selection_record"]

DEFAULT_FOLDS = 5  # K of a few-shot draw under a rule without its own K (auto: at most 5, as trained heads)
SOLVER_RULE = "the grid value with the best top-1 (the solver's tie rule)"
NONE_DEFAULTS = ("k-NN k=20 (or the largest k), T=0.07; ridge big_vision's lambda=1024; logreg scikit-learn's C=1; "
                 "NCM has no hyperparameter")
_LOGIT_BUDGET = 1 << 24  # grid values x rows x classes of logits scored at once


@dataclass(frozen=True)
class DrawSelection:
    """The rule one solver row applies to its fit rows, and the folds (stored rows) it needs."""

    rule: str  # holdout | cvK | none
    reason: str
    folds: tuple[np.ndarray, ...] = ()


def draw_selection(rule: str, labels: np.ndarray, fit: np.ndarray, *, shots: int | None,
                   plan_folds: Sequence[np.ndarray], seed: int) -> DrawSelection:
    """The rule of one spec's fit rows under the plan's ``rule``: its folds, or none for a 1-sample class.

    Without shots the plan's folds are the fit rows' folds; a few-shot draw is split in
    K = min(the rule's K, its smallest class) stratified folds of its own.
    """
    if rule == "holdout":
        return DrawSelection("holdout", "the holdout selects")
    if shots is None and plan_folds:
        return DrawSelection(f"cv{len(plan_folds)}", "the plan's folds", tuple(plan_folds))
    k = int(rule[2:]) if rule.startswith("cv") else DEFAULT_FOLDS
    counts = np.unique(np.asarray(labels)[fit], return_counts=True)[1]
    smallest = int(counts.min()) if counts.size else 0
    k = min(k, smallest)
    if k < 2:
        return DrawSelection("none", f"a class of the fit rows has a single sample: no selection possible; "
                                     f"the solver's default ({NONE_DEFAULTS})")
    return DrawSelection(f"cv{k}", f"few-shot draw, smallest class {smallest}",
                         stratified_folds(labels, fit, k, seed))


def selection_record(sel: DrawSelection) -> dict[str, Any]:
    """The row's ``protocol`` section: the rule's name and text, as trained rows record them."""
    text = f"none ({sel.reason})" if sel.rule == "none" else selection_text(sel.rule, SOLVER_RULE)
    return {"selection_rule": sel.rule, "selection": text}


def fit_cv(spec: SolverSpec, sel: DrawSelection, fit_rows: np.ndarray, x: Tensor, y: Tensor, eval_x: Tensor,
           eval_y: Tensor, num_classes: int, *, say: Callable[[str], None] | None = None) -> SolverOutcome:
    """Select by ``sel`` (cvK over ``x``/``y``, the fit rows; or none), refit on every fit row, score eval once."""
    if sel.rule == "none":
        outcome = fit_solver(_default_spec(spec), SolverInputs(x, y, None, None, eval_x, eval_y, num_classes,
                                                               refit_with_holdout=False), say=say)
        outcome.details["selection"] = "none"
        return outcome
    positions = [np.searchsorted(fit_rows, f) for f in sel.folds]
    index, holdout, curve, extra = _select(spec, positions, x, y, num_classes, say)
    outcome = fit_solver(spec, SolverInputs(x, y, None, None, eval_x, eval_y, num_classes, refit_with_holdout=False,
                                            select_index=index), say=say)
    outcome.holdout = holdout
    outcome.holdout_curve = curve
    outcome.details.update(extra, selection=sel.rule, folds=[len(f) for f in sel.folds])
    return outcome


def _default_spec(spec: SolverSpec) -> SolverSpec:
    """``spec`` with a grid of its documented default alone (nothing can choose among several values)."""
    options = dict(spec.options)
    if spec.kind == "ridge":
        options["grid"] = "bigvision"
    elif spec.kind == "logreg":
        options["C"] = (1.0,)
    elif spec.kind == "knn":
        headline = min(FIXED_KNN_PAIR[0], max(options["k"]))
        options.update(select="fixed", k=tuple(sorted({*options["k"], headline})),
                       T=tuple(dict.fromkeys((*options["T"], FIXED_KNN_PAIR[1]))))
    return dataclasses.replace(spec, options=tuple(sorted(options.items())))


def _folds(positions: Sequence[np.ndarray], x: Tensor, y: Tensor,
           standardize: bool) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
    """``(fit x, fit y, held x, held y)`` per fold, standardised by the fold's fit rows when asked."""
    out = []
    n = x.shape[0]
    for held in positions:
        keep = np.ones(n, bool)
        keep[held] = False
        fit_idx = torch.from_numpy(np.flatnonzero(keep)).to(x.device)
        held_idx = torch.from_numpy(np.asarray(held, np.int64)).to(x.device)
        fx, hx = x[fit_idx], x[held_idx]
        if standardize:
            scaler = Standardizer.fit(fx)
            fx, hx = scaler(fx), scaler(hx)
        out.append((fx, y[fit_idx], hx, y[held_idx]))
    return out


def _select(spec: SolverSpec, positions: Sequence[np.ndarray], x: Tensor, y: Tensor, C: int,
            say: Callable[[str], None] | None) -> tuple[int | None, Metrics, list[float], dict[str, Any]]:
    """``(chosen index or None for k-NN's fixed pair, pooled metrics there, pooled curve, details)``."""
    folds = _folds(positions, x, y, spec.standardize)
    if spec.kind == "knn":
        return _select_knn(spec, folds, C)
    grid: Sequence[Any]
    if spec.kind == "ridge":
        grid = ridge_lambdas(spec.option("grid"), x.shape[0])[0]  # the index into the refit's grid, fold λ below
    elif spec.kind == "logreg":
        grid = c_grid(spec.option("C"))
    else:
        grid = (None,)
    acc = MetricsAccumulator(len(grid), C, x.device)
    steps = SlowSteps(say)  # only the C paths run long enough to need progress
    fits: list[list[LogregFit]] = []  # logreg: each fold's path, for the row's iteration counts
    for f, (fx, fy, hx, hy) in enumerate(folds):
        def on_fit(i: int, fit: LogregFit, a: float, f: int = f) -> None:
            steps.step(lambda: f"{spec.name}: fold {f + 1}/{len(folds)}, C {i + 1}/{len(grid)} = {fit.C:.3g}: held "
                       f"fold {100 * a:.1f}%, {fit.n_iter} L-BFGS iterations ({steps.elapsed:.0f} s)")
        for logits in _fold_logits(spec, grid, fx, fy, hx, hy, C, on_fit, fits):
            acc.update(*logits)
    if spec.kind == "logreg":
        steps.done(lambda: f"{spec.name}: C path ({len(grid)} values) on {len(folds)} folds in {steps.elapsed:.1f} s")
    curve = acc.top1().tolist()
    best = 0
    for i, a in enumerate(curve):
        # ridge: ties go to the larger lambda; logreg: strict, a tie keeps the smaller C (as on a holdout)
        if a > curve[best] or (spec.kind == "ridge" and a == curve[best]):
            best = i
    extra = {"path_iterations": [[f.n_iter for f in path] for path in fits],  # per fold, per C
             "max_iter_hits": sum(f.hit_max_iter for path in fits for f in path)} if fits else {}
    return (None if spec.kind == "ncm" else best), acc.metrics()[best], curve, extra


def _fold_logits(spec: SolverSpec, grid: Sequence[Any], fx: Tensor, fy: Tensor, hx: Tensor, hy: Tensor, C: int,
                 on_fit: Callable[[int, LogregFit, float], None],
                 paths: list[list[LogregFit]]) -> list[tuple[Tensor, Tensor]]:
    """The held fold's ``(logits (G, b, C), labels (b,))`` batches for every grid value."""
    if spec.kind == "ridge":
        stats = RidgeStats.accumulate([(fx, fy)], dim=fx.shape[1], num_classes=C, device=fx.device)
        path, mu, s, _ = _ridge_path(stats, lambda: (fx, fy), C)
        xh = _augment(hx, mu, s)
        lams = ridge_lambdas(spec.option("grid"), stats.n)[1]  # this fold's λ values, as a holdout fit has them
        score = lambda rows: torch.stack([path.scores(lam, xh[rows]) for lam in lams])  # noqa: E731
    elif spec.kind == "logreg":
        mu = fx.mean(0)
        sd = fx.std(0, unbiased=False)
        sd = torch.where(sd > 1e-12, sd, torch.ones_like(sd))
        zh = (hx - mu) / sd
        _, fits, _ = logreg_path((fx - mu) / sd, fy, zh, hy, grid, num_classes=C,
                                 max_iter=int(spec.option("max_iter")), tol=float(spec.option("tol")), on_fit=on_fit)
        paths.append(fits)
        score = lambda rows: torch.stack([torch.addmm(f.bias, zh[rows], f.weight.T) for f in fits])  # noqa: E731
    else:
        model = fit_ncm(fx, fy, num_classes=C)
        score = lambda rows: model.scores(hx[rows]).unsqueeze(0)  # noqa: E731
    step = max(1, _LOGIT_BUDGET // (len(grid) * C))
    return [(score(slice(i, i + step)), hy[i : i + step]) for i in range(0, hx.shape[0], step)]


def _select_knn(spec: SolverSpec, folds: Sequence[tuple[Tensor, Tensor, Tensor, Tensor]],
                C: int) -> tuple[int | None, Metrics, list[float], dict[str, Any]]:
    ks, ts = spec.option("k"), spec.option("T")
    kw: dict[str, Any] = {"ks": ks, "temperatures": ts, "num_classes": C, "metric": spec.option("metric"),
                          "weighting": spec.option("weighting")}
    tables = [knn_table(fx, fy, hx, hy, **kw) for fx, fy, hx, hy in folds]
    pooled = KnnTable(tables[0].ks, tables[0].temperatures, np.sum([t.correct1 for t in tables], axis=0),
                      np.sum([t.correct5 for t in tables], axis=0), np.sum([t.total for t in tables], axis=0))
    pairs = [(k, t) for k in ks for t in ts]
    acc = pooled.top1()
    index: int | None = None
    if spec.option("select") == "holdout":
        index = max(range(len(pairs)), key=lambda i: (acc.flat[i], -i))  # ties: smallest k, then T
        k, t = pairs[index]
    else:
        k, t = min(FIXED_KNN_PAIR[0], max(ks)), FIXED_KNN_PAIR[1]
    return index, pooled.metrics(k, t), acc.ravel().tolist(), {"holdout_table": pooled.to_json()}
