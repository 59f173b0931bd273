"""dense-logreg: multinomial logistic regression on patch tokens, CAPI's segmentation protocol.

1. Standardise: per-feature mean and population std (scikit-learn's ``StandardScaler``) from the
   training patches only, the evaluation split never seen.
2. C path: ``epcache.probe.solvers.logreg_path`` (½‖W‖² + C·Σ CE, scikit-learn's objective, warm
   started along ascending C) on the labelled patches of 90% of the training images; every C is
   scored by mIoU on the other 10% (whole images, seeded; the scaler of this step is fitted on the
   90% only). A tie keeps the smaller C, the stronger ridge.
3. Refit at the chosen C on every labelled training patch (scaler refitted on all training patches),
   starting from the path's fit at that C, and score the evaluation split once.

A patch's training label is the majority of its pixels (patch_labels.patch_majority); predictions
are per patch, upsampled to the pixels by nearest neighbour (docs/DENSE.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from epcache.probe.dense.inputs import (
    DenseData,
    DenseResult,
    as_tensor,
    holdout_split,
    labelled_patches,
    score_patch_labels,
)
from epcache.probe.solvers import LogregFit, Standardizer, c_grid, fit_logreg, logreg_path

__all__ = ["DENSE_LOGREG_CS", "DenseLogreg", "fit_dense_logreg", "run_dense_logreg"]

DENSE_LOGREG_CS: tuple[float, ...] = tuple(float(c) for c in np.logspace(-4, 2, 13))


@dataclass(frozen=True)
class DenseLogreg:
    """The refitted head: ``logits = ((x − mean) / scale) · weightᵀ + bias`` per patch."""

    scaler: Standardizer
    fit: LogregFit  # weight (C, D) and bias (C,) in standardised coordinates

    def predict(self, feats: np.ndarray) -> np.ndarray:
        """``[..., D]`` patch features -> ``[...]`` int64 classes."""
        z = self.scaler(as_tensor(feats.reshape(-1, feats.shape[-1]), self.fit.weight.dtype))
        return _argmax(z, self.fit).numpy().reshape(feats.shape[:-1])


def _argmax(z: Tensor, fit: LogregFit) -> Tensor:
    return torch.addmm(fit.bias, z, fit.weight.T).argmax(1)


def run_dense_logreg(
    data: DenseData,
    *,
    Cs: Sequence[float] = DENSE_LOGREG_CS,
    holdout: float = 0.1,
    seed: int = 0,
    max_iter: int = 1000,
    tol: float = 1e-6,
    dtype: torch.dtype = torch.float32,
) -> tuple[DenseResult, DenseLogreg]:
    """Select C on a held-out tenth of the training images by mIoU, refit on all of train, score eval once."""
    grid = c_grid(Cs)
    n, C = data.train_feats.shape[0], data.num_classes
    fit_rows, hold_rows = holdout_split(n, data.train_groups, fraction=holdout, seed=seed)
    plab = data.train_patch_labels
    scaler = Standardizer.fit(as_tensor(data.train_feats[fit_rows].reshape(-1, data.train_feats.shape[-1]), dtype))
    x_fit, y_fit = labelled_patches(data.train_feats[fit_rows], plab[fit_rows], data.ignore_index)
    x_hold, y_hold = labelled_patches(data.train_feats[hold_rows], plab[hold_rows], data.ignore_index)
    z_hold_all = scaler(as_tensor(data.train_feats[hold_rows].reshape(-1, data.train_feats.shape[-1]), dtype))
    _, fits, _ = logreg_path(scaler(as_tensor(x_fit, dtype)), torch.from_numpy(y_fit), scaler(as_tensor(x_hold, dtype)),
                             torch.from_numpy(y_hold), grid, num_classes=C, max_iter=max_iter, tol=tol)
    table: list[tuple[dict[str, object], float]] = []
    for fit in fits:
        pred = _argmax(z_hold_all, fit).numpy().reshape(plab[hold_rows].shape)
        m, _ = score_patch_labels(pred, data.train_labels[hold_rows], num_classes=C, ignore_index=data.ignore_index)
        table.append(({"C": fit.C}, m.miou))
    best = 0
    for i, (_, score) in enumerate(table):
        if score > table[best][1]:  # strict: a tie keeps the smaller C
            best = i
    head = fit_dense_logreg(data, grid[best], init=(fits[best].weight, fits[best].bias), max_iter=max_iter, tol=tol,
                            dtype=dtype)
    metrics, preview = score_patch_labels(head.predict(data.eval_feats), data.eval_labels, num_classes=C,
                                          ignore_index=data.ignore_index)
    chosen: dict[str, object] = {"C": grid[best], "standardize": True, "n_iter": head.fit.n_iter}
    return DenseResult("dense-logreg", metrics, chosen, table, preview), head


def fit_dense_logreg(
    data: DenseData,
    C: float,
    *,
    init: tuple[Tensor, Tensor] | None = None,
    max_iter: int = 1000,
    tol: float = 1e-6,
    dtype: torch.dtype = torch.float32,
) -> DenseLogreg:
    """Scaler on every training patch, logistic fit at ``C`` on the labelled ones (step 3 of the protocol)."""
    D = data.train_feats.shape[-1]
    scaler = Standardizer.fit(as_tensor(data.train_feats.reshape(-1, D), dtype))
    x, y = labelled_patches(data.train_feats, data.train_patch_labels, data.ignore_index)
    fit = fit_logreg(scaler(as_tensor(x, dtype)), torch.from_numpy(y), C, num_classes=data.num_classes, init=init,
                     max_iter=max_iter, tol=tol)
    return DenseLogreg(scaler, fit)
