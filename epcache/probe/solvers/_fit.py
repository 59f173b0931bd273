"""Fit one solver head on pooled features and score it: k-NN, ridge, logistic C-path, NCM.

Every solver follows the same honest protocol as the trained heads: its hyperparameter (the
(k, T) pair, λ, C) is chosen on the train holdout with the model fitted on the remaining
train rows (or, under the plan's cvK rule, on the pooled folds: ``_cv.py``, which passes the
chosen ``select_index`` here); then the final model is fitted on the refit rows (all train, or
the few-shot draw) and the eval split is scored once. ``oracle_eval_top1`` is the best value over the grid on the
eval split, recorded for comparison with papers that select there (never used to rank).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from epcache._progress import SlowSteps
from epcache.errors import ConfigError
from epcache.probe.results.metrics import Metrics, MetricsAccumulator
from epcache.probe.solvers._knn import knn_table
from epcache.probe.solvers._logreg import LogregFit, c_grid, fit_logreg, logreg_path
from epcache.probe.solvers._ncm import fit_ncm
from epcache.probe.solvers._ridge import BIAS_VALUE, EigenPath, RidgeStats, ridge_lambdas, ridge_system, standardiser
from epcache.probe.solvers._spec import FIXED_KNN_PAIR, SolverSpec
from epcache.probe.solvers._standardize import Standardizer

__all__ = ["SolverInputs", "SolverOutcome", "fit_solver"]

_BATCH = 8192


@dataclass(frozen=True)
class SolverInputs:
    """Pooled features (on the compute device and dtype) and int64 labels of each role."""

    fit_x: Tensor  # rows the hyperparameter path is fitted on
    fit_y: Tensor
    hold_x: Tensor | None  # holdout rows that choose the hyperparameter (None without a holdout)
    hold_y: Tensor | None
    eval_x: Tensor
    eval_y: Tensor
    num_classes: int
    refit_with_holdout: bool  # the final model sees fit + holdout rows (False: fit rows only, e.g. few-shot)
    select_index: int | None = None  # without a holdout: the grid index cross-validation chose (None: the first)

    @property
    def refit_x(self) -> Tensor:
        """Rows of the final model."""
        if self.refit_with_holdout and self.hold_x is not None:
            return torch.cat([self.fit_x, self.hold_x])
        return self.fit_x

    @property
    def refit_y(self) -> Tensor:
        if self.refit_with_holdout and self.hold_y is not None:
            return torch.cat([self.fit_y, self.hold_y])
        return self.fit_y


@dataclass
class SolverOutcome:
    """What a solver produced for one spec."""

    holdout: Metrics | None  # at the selected hyperparameter, model fitted on fit rows
    eval: Metrics  # the final model on the eval split
    oracle_eval_top1: float  # best over the grid on eval (the paper's protocol; never used to rank)
    holdout_curve: list[float]  # holdout top-1 along the grid (empty without a holdout)
    params: int  # numbers in the saved state (0 for k-NN)
    flops: int  # multiply-adds x2 per query image
    state: dict[str, Tensor] | None  # to save (compute dtype, raw coordinates; None: k-NN saves its config)
    details: dict[str, Any] = field(default_factory=dict)  # solver-specific record (grid, choice, iterations)


def fit_solver(spec: SolverSpec, data: SolverInputs, *, say: Callable[[str], None] | None = None) -> SolverOutcome:
    """Run ``spec``'s solver on ``data``; ``say`` (None: silent) gets the logistic C path's progress when it is slow.

    Raises:
        ConfigError: fewer than 2 classes in the fit rows, or k larger than the bank.
    """
    present = int(torch.unique(data.fit_y).numel())
    if present < 2:
        raise ConfigError(
            f"{spec.name}: the training rows hold {present} class(es); a classifier needs at least 2. "
            "Check the store's labels or use a split with several classes"
        )
    if not spec.standardize:
        return _run_fitter(spec, data, say)
    scaler = Standardizer.fit(data.fit_x)  # the fit rows only: the holdout and eval are scored like new images
    data = dataclasses.replace(data, fit_x=scaler(data.fit_x), eval_x=scaler(data.eval_x),
                               hold_x=None if data.hold_x is None else scaler(data.hold_x))
    outcome = _run_fitter(spec, data, say)
    outcome.state = scaler.fold(outcome.state)
    outcome.details["standardize"] = {"constant_features": scaler.constant}
    return outcome


# ---------------------------------------------------------------------------------------------- k-NN


def _fit_knn(spec: SolverSpec, d: SolverInputs) -> SolverOutcome:
    ks, ts = spec.option("k"), spec.option("T")
    kw: dict[str, Any] = {"ks": ks, "temperatures": ts, "num_classes": d.num_classes,
                          "metric": spec.option("metric"), "weighting": spec.option("weighting")}
    pairs = [(k, t) for k in ks for t in ts]
    hold_table = None
    if d.hold_x is not None and d.hold_y is not None:
        hold_table = knn_table(d.fit_x, d.fit_y, d.hold_x, d.hold_y, **kw)
    if spec.option("select") == "holdout" and hold_table is not None:
        acc = hold_table.top1()
        k, t = pairs[max(range(len(pairs)), key=lambda i: (acc.flat[i], -i))]  # ties: smallest k, then T
    elif d.select_index is not None and hold_table is None:  # chosen by cross-validation over the same pairs
        k, t = pairs[d.select_index]
    else:  # DINO's k=20, T=0.07; a bank smaller than 20 has its largest k instead (the k list was capped)
        k, t = min(FIXED_KNN_PAIR[0], max(ks)), FIXED_KNN_PAIR[1]
    eval_table = knn_table(d.refit_x, d.refit_y, d.eval_x, d.eval_y, **kw, confusion=True)
    details: dict[str, Any] = {}
    by_k = eval_table.top1()[:, ts.index(t)]
    if len(by_k) >= 3 and bool((np.diff(by_k) < 0).all()):  # EP's CLIP log at T=0.07 (docs/PROBE_FAMILIES.md §4.5)
        details["warning"] = (f"k-NN accuracy falls steadily with k at T={t} ({100 * by_k[0]:.1f}% -> "
                              f"{100 * by_k[-1]:.1f}%): check the features (normalisation, layer) and try a larger T")
    return SolverOutcome(
        holdout=None if hold_table is None else hold_table.metrics(k, t),
        eval=eval_table.metrics(k, t),
        oracle_eval_top1=float(eval_table.top1().max()),
        holdout_curve=[] if hold_table is None else hold_table.top1().ravel().tolist(),
        params=0,
        flops=2 * d.refit_x.shape[0] * d.refit_x.shape[1],
        state=None,
        details={**details, "k": k, "T": t, "select": spec.option("select"), "bank": d.refit_x.shape[0],
                 "holdout_table": None if hold_table is None else hold_table.to_json(),
                 "eval_table": eval_table.to_json()},
    )


# ---------------------------------------------------------------------------------------------- ridge


def _fit_ridge(spec: SolverSpec, d: SolverInputs) -> SolverOutcome:
    D, C = d.fit_x.shape[1], d.num_classes
    dev = d.fit_x.device
    fit_stats = RidgeStats.accumulate(_batches(d.fit_x, d.fit_y), dim=D, num_classes=C, device=dev)
    rel, lams = ridge_lambdas(spec.option("grid"), fit_stats.n)
    curve: list[float] = []
    best = d.select_index or 0
    if d.hold_x is not None and d.hold_y is not None:
        best = 0
        path, mu, s, _ = _ridge_path(fit_stats, lambda: (d.fit_x, d.fit_y), C)
        xh = _augment(d.hold_x, mu, s)
        curve = [float((path.scores(lam, xh).argmax(1) == d.hold_y).double().mean()) for lam in lams]
        for i, a in enumerate(curve):
            if a >= curve[best]:  # ties go to the larger lambda (the stronger ridge)
                best = i
    hold_metrics = None
    if d.hold_x is not None and d.hold_y is not None:
        w_hold = path.weights(lams[best])
        hold_metrics = _score(lambda x: _augment(x, mu, s) @ w_hold, d.hold_x, d.hold_y, C)
    refit_stats = fit_stats
    if d.refit_with_holdout and d.hold_x is not None and d.hold_y is not None:  # totals = fit + holdout sums
        refit_stats = fit_stats + RidgeStats.accumulate(_batches(d.hold_x, d.hold_y), dim=D, num_classes=C,
                                                        device=dev)
    rpath, rmu, rs, clamped = _ridge_path(refit_stats, lambda: (d.refit_x, d.refit_y), C)
    lam_star = rel[best] * refit_stats.n
    W = rpath.weights(lam_star)  # (D+1, C) on standardised features + bias column
    weight = (W[:D] / rs[:, None]).T  # fold the standardisation back: logits = x·wᵀ + b in raw coordinates
    bias = BIAS_VALUE * W[D] - (rmu / rs) @ W[:D]
    eval_metrics = _score(lambda x: x.to(torch.float64) @ weight.T + bias, d.eval_x, d.eval_y, C, confusion=True)
    oracle = max(float(((_augment(d.eval_x, rmu, rs) @ rpath.weights(r * refit_stats.n)).argmax(1) == d.eval_y)
                       .double().mean()) for r in rel) if len(rel) > 1 else eval_metrics.top1
    return SolverOutcome(
        holdout=hold_metrics, eval=eval_metrics, oracle_eval_top1=oracle, holdout_curve=curve,
        params=D * C + C, flops=2 * D * C,
        state={"weight": weight, "bias": bias},
        details={"grid": spec.option("grid") if isinstance(spec.option("grid"), str) else "list",
                 "lambda_relative": [float(r) for r in rel], "selected_index": best, "lambda": lam_star,
                 "branch": rpath.branch, "clamped_dims": clamped, "n_refit": refit_stats.n},
    )


def _ridge_path(
    stats: RidgeStats, rows: Callable[[], tuple[Tensor, Tensor]], C: int
) -> tuple[EigenPath, Tensor, Tensor, int]:
    """Eigen path of one fit set: primal from the streamed sums when n ≥ D+1, else dual from X̃ (n small)."""
    mu, s, clamped = standardiser(stats)
    D = stats.sum_x.shape[0]
    if stats.n >= D + 1:
        G, R = ridge_system(stats, mu, s)
        return EigenPath(G=G, R=R), mu, s, clamped
    x, y = rows()
    X = _augment(x, mu, s)
    Y = 2 * torch.nn.functional.one_hot(y, C).to(torch.float64) - 1
    return EigenPath(X=X, Y=Y), mu, s, clamped


def _augment(x: Tensor, mu: Tensor, s: Tensor) -> Tensor:
    """X̃ = [(x − μ)/s, 100] in float64."""
    z = (x.to(torch.float64) - mu) / s
    return torch.cat([z, torch.full((z.shape[0], 1), BIAS_VALUE, dtype=z.dtype, device=z.device)], 1)


# ---------------------------------------------------------------------------------------------- logreg


def _run_fitter(spec: SolverSpec, d: SolverInputs, say: Callable[[str], None] | None) -> SolverOutcome:
    # only the C path runs long enough to need progress: k-NN, ridge and NCM are one pass or one solve
    return _fit_logreg(spec, d, say=say) if spec.kind == "logreg" else _FITTERS[spec.kind](spec, d)


def _fit_logreg(spec: SolverSpec, d: SolverInputs, *, say: Callable[[str], None] | None = None) -> SolverOutcome:
    C = d.num_classes
    preset = spec.option("C")
    Cs = c_grid(preset)
    steps = SlowSteps(say)

    def on_fit(i: int, fit: LogregFit, acc: float) -> None:
        steps.step(lambda: f"{spec.name}: C {i + 1}/{len(Cs)} = {fit.C:.3g}: holdout {100 * acc:.1f}%, "
                   f"{fit.n_iter} L-BFGS iterations ({steps.elapsed:.0f} s)")
    max_iter, tol = int(spec.option("max_iter")), float(spec.option("tol"))
    mu = d.fit_x.mean(0)
    sd = d.fit_x.std(0, unbiased=False)
    sd = torch.where(sd > 1e-12, sd, torch.ones_like(sd))  # a constant dimension keeps scale 1
    z_fit = (d.fit_x - mu) / sd
    curve: list[float] = []
    best, init, path_iters, hits = d.select_index or 0, None, [], 0
    hold_metrics = None
    if d.hold_x is not None and d.hold_y is not None:
        z_hold = (d.hold_x - mu) / sd
        best, fits, curve = logreg_path(z_fit, d.fit_y, z_hold, d.hold_y, Cs, num_classes=C, max_iter=max_iter,
                                        tol=tol, on_fit=on_fit)
        path_iters = [f.n_iter for f in fits]
        hits = sum(f.hit_max_iter for f in fits)
        sel = fits[best]
        init = (sel.weight, sel.bias)
        hold_metrics = _score(lambda x: torch.addmm(sel.bias, (x - mu) / sd, sel.weight.T), d.hold_x, d.hold_y, C)
    z_refit = (d.refit_x - mu) / sd  # the fit rows' scaler, as RAPTOR keeps the train_sub scaler for the refit
    final = fit_logreg(z_refit, d.refit_y, Cs[best], num_classes=C, init=init, max_iter=max_iter, tol=tol)
    steps.done(lambda: f"{spec.name}: {f'C path ({len(curve)} values) and ' if curve else ''}refit at "
               f"C = {Cs[best]:.3g} in {steps.elapsed:.1f} s")
    weight = final.weight / sd[None, :]  # raw coordinates: w = w_std/σ, b = b_std − w·μ
    bias = final.bias - weight @ mu
    eval_metrics = _score(lambda x: torch.addmm(bias, x, weight.T), d.eval_x, d.eval_y, C, confusion=True)
    return SolverOutcome(
        holdout=hold_metrics, eval=eval_metrics, oracle_eval_top1=eval_metrics.top1, holdout_curve=curve,
        params=weight.numel() + bias.numel(), flops=2 * weight.numel(),
        state={"weight": weight, "bias": bias},
        details={"grid": preset if isinstance(preset, str) else "list", "C_values": list(Cs),
                 "selected_index": best, "C": Cs[best], "path_iterations": path_iters, "max_iter_hits": hits,
                 "refit_iterations": final.n_iter, "refit_hit_max_iter": final.hit_max_iter},
    )


# ---------------------------------------------------------------------------------------------- ncm


def _fit_ncm(spec: SolverSpec, d: SolverInputs) -> SolverOutcome:
    C = d.num_classes
    hold_metrics = None
    if d.hold_x is not None and d.hold_y is not None:
        model = fit_ncm(d.fit_x, d.fit_y, num_classes=C)
        hold_metrics = _score(model.scores, d.hold_x, d.hold_y, C)
    final = fit_ncm(d.refit_x, d.refit_y, num_classes=C)
    eval_metrics = _score(final.scores, d.eval_x, d.eval_y, C, confusion=True)
    return SolverOutcome(
        holdout=hold_metrics, eval=eval_metrics, oracle_eval_top1=eval_metrics.top1,
        holdout_curve=[] if hold_metrics is None else [hold_metrics.top1],
        params=final.centroids.numel() + final.centre.numel(), flops=2 * final.centroids.numel(),
        state={"centre": final.centre, "centroids": final.centroids},
        details={"rule": "SimpleShot CL2N: centre on the train mean, L2-normalise, nearest centroid"},
    )


# ---------------------------------------------------------------------------------------------- helpers


def _batches(x: Tensor, y: Tensor) -> Iterator[tuple[Tensor, Tensor]]:
    for i in range(0, x.shape[0], _BATCH):
        yield x[i : i + _BATCH], y[i : i + _BATCH]


def _score(logits: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, num_classes: int, *,
           confusion: bool = False) -> Metrics:
    acc = MetricsAccumulator(1, num_classes, x.device, confusion=confusion)
    for xb, yb in _batches(x, y):
        acc.update(logits(xb).unsqueeze(0), yb)
    return acc.metrics()[0]


_FITTERS: dict[str, Callable[[SolverSpec, SolverInputs], SolverOutcome]] = {
    "knn": _fit_knn,
    "ridge": _fit_ridge,
    "logreg": _fit_logreg,
    "ncm": _fit_ncm,
}
