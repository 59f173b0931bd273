"""The baselines a user would fit instead of epcache's default, and the per-cell targets, for probe_quality.

Each baseline is fitted on the training rows only, with its hyperparameter chosen by stratified 5-fold
cross-validation over those rows (fewer folds when a class has fewer than 5 rows: 2 per class gives 2
folds), then scored once on the eval rows. Inputs are the same pooled features the default head reads.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

C_GRID = np.logspace(-4, 4, 17)
ALPHA_GRID = np.logspace(-3, 5, 17)
BASELINES = ("lr_std", "lr_raw", "ridge", "ncm")
TOLERANCE = {20: 5.0, 200: 2.0, 2000: 2.0}  # points below the best baseline a cell may be and still pass


def folds(y: np.ndarray, seed: int = 0) -> object:
    """Stratified k-fold over the training rows: 5 folds, or as many as the rarest class has rows (at least 2)."""
    from sklearn.model_selection import StratifiedKFold

    k = int(max(2, min(5, np.bincount(y)[np.unique(y)].min())))
    return StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)


def _scored(search: object, x: np.ndarray, y: np.ndarray, xe: np.ndarray, ye: np.ndarray) -> float:
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    # one BLAS thread: these fits are small, and threads oversubscribe the cores the other jobs share
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", FutureWarning)  # sklearn's notices of changing defaults; ours are explicit
        return float(search.fit(x, y).score(xe, ye))


def _logreg_cv(grid: np.ndarray, y: np.ndarray, max_iter: int) -> object:
    """LogisticRegressionCV (lbfgs): the C path is warm-started per fold, then refitted on all rows at the best C."""
    from sklearn.linear_model import LogisticRegressionCV

    return LogisticRegressionCV(Cs=list(grid), cv=folds(y), max_iter=max_iter, scoring="accuracy", n_jobs=1)


def lr_std(x: np.ndarray, y: np.ndarray, xe: np.ndarray, ye: np.ndarray, grid: np.ndarray = C_GRID,
           max_iter: int = 1000) -> float:
    """StandardScaler fitted on the training rows, then LogisticRegression with C cross-validated."""
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x)
    return _scored(_logreg_cv(grid, y, max_iter), scaler.transform(x), y, scaler.transform(xe), ye)


def lr_raw(x: np.ndarray, y: np.ndarray, xe: np.ndarray, ye: np.ndarray, grid: np.ndarray = C_GRID,
           max_iter: int = 1000) -> float:
    """LogisticRegression on the features as stored, C cross-validated."""
    return _scored(_logreg_cv(grid, y, max_iter), x, y, xe, ye)


def ridge(x: np.ndarray, y: np.ndarray, xe: np.ndarray, ye: np.ndarray, grid: np.ndarray = ALPHA_GRID) -> float:
    """RidgeClassifier on the features as stored, alpha cross-validated."""
    from sklearn.linear_model import RidgeClassifier
    from sklearn.model_selection import GridSearchCV

    return _scored(GridSearchCV(RidgeClassifier(), {"alpha": list(grid)}, cv=folds(y), n_jobs=1), x, y, xe, ye)


def ncm(x: np.ndarray, y: np.ndarray, xe: np.ndarray, ye: np.ndarray) -> float:
    """Nearest class mean, Euclidean, on the features as stored; no hyperparameter."""
    classes = np.unique(y)
    means = np.stack([x[y == c].mean(0) for c in classes])
    d = ((xe[:, None, :] - means[None]) ** 2).sum(-1)
    return float((classes[d.argmin(1)] == ye).mean())


def baselines(x: np.ndarray, y: np.ndarray, xe: np.ndarray, ye: np.ndarray,
              c_grid: np.ndarray = C_GRID, alpha_grid: np.ndarray = ALPHA_GRID,
              max_iter: int = 1000) -> dict[str, float]:
    """Eval top-1 of every baseline, plus ``best``: the highest of them."""
    x, xe = x.astype(np.float64), xe.astype(np.float64)
    out = {"lr_std": lr_std(x, y, xe, ye, c_grid, max_iter), "lr_raw": lr_raw(x, y, xe, ye, c_grid, max_iter),
           "ridge": ridge(x, y, xe, ye, alpha_grid), "ncm": ncm(x, y, xe, ye)}
    out["best"] = max(out[k] for k in BASELINES)
    return out


@dataclass(frozen=True)
class Cell:
    """One (training size, regime) result: the default's and the baselines' eval top-1 (fractions)."""

    size: int
    regime: str
    ours: float
    theirs: dict[str, float]
    ours_sgd: float | None = None  # epcache's linear head with --linear-fit sgd (not judged: for reading)

    @property
    def gap(self) -> float:
        """The default minus the best baseline, in points (rounded to 1e-6 so an exact tie at the bound passes)."""
        return round(100 * (self.ours - self.theirs["best"]), 6)

    @property
    def gap_lr(self) -> float:
        """The default minus scikit-learn's logistic regression on standardised features: the same loss, in points."""
        return round(100 * (self.ours - self.theirs["lr_std"]), 6)

    @property
    def tolerance(self) -> float:
        return TOLERANCE.get(self.size, 2.0)

    def verdict(self) -> str:
        """PASS, or MISS with what failed: the gap to the best baseline, or falling below NCM."""
        why = []
        if self.gap < -self.tolerance:
            why.append(f"gap < -{self.tolerance:g}")
        if self.ours < self.theirs["ncm"]:
            why.append("below NCM")
        return "PASS" if not why else "MISS (" + ", ".join(why) + ")"


HEADER = (f"{'train':>5} {'regime':<6} {'epcache':>8} {'lr_std':>7} {'lr_raw':>7} {'ridge':>7} {'ncm':>7} "
          f"{'best':>7} {'gap':>7} {'vs_lr':>7} {'ep.sgd':>8}  target")


def row(cell: Cell) -> str:
    """One table line: top-1 in percent, the gap in points, and the verdict against this size's tolerance."""
    t = cell.theirs
    vals = " ".join(f"{100 * t[k]:>7.2f}" for k in (*BASELINES, "best"))
    ours_sgd = "-" if cell.ours_sgd is None else f"{100 * cell.ours_sgd:.2f}"
    return (f"{cell.size:>5} {cell.regime:<6} {100 * cell.ours:>8.2f} {vals} {cell.gap:>+7.2f} {cell.gap_lr:>+7.2f} "
            f"{ours_sgd:>8}  >= -{cell.tolerance:g}, >= ncm: {cell.verdict()}")
