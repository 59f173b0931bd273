"""dense-logreg: the refit equals scikit-learn's LogisticRegression on the same standardised patches."""

from __future__ import annotations

import numpy as np
import torch
from dense_synth import IGNORE, synth_dense

from epcache.probe.dense.inputs import labelled_patches
from epcache.probe.dense.logreg import fit_dense_logreg, run_dense_logreg


def test_refit_equals_sklearn_lbfgs_multinomial_at_float64() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    data = synth_dense(n_train=30, noise=2.0, dim=8, dtype=np.float64, seed=1)
    C = 0.1
    head = fit_dense_logreg(data, C, tol=1e-10, max_iter=5000, dtype=torch.float64)
    D = data.train_feats.shape[-1]
    scaler = StandardScaler().fit(data.train_feats.reshape(-1, D))  # every training patch, labelled or not
    x, y = labelled_patches(data.train_feats, data.train_patch_labels, IGNORE)
    ref = LogisticRegression(C=C, tol=1e-10, max_iter=5000).fit(scaler.transform(x), y)
    np.testing.assert_allclose(head.scaler.mean.numpy(), scaler.mean_, rtol=1e-10)
    np.testing.assert_allclose(head.fit.weight.numpy(), ref.coef_, atol=1e-6, rtol=0)
    np.testing.assert_allclose(head.fit.bias.numpy(), ref.intercept_, atol=1e-6, rtol=0)
    q = data.eval_feats.reshape(-1, D)
    np.testing.assert_array_equal(head.predict(data.eval_feats).ravel(), ref.predict(scaler.transform(q)))


def test_run_chooses_C_on_a_train_holdout() -> None:
    data = synth_dense(noise=1.0)
    res, head = run_dense_logreg(data, Cs=(1e-3, 1e-1, 10.0))
    assert [p["C"] for p, _ in res.holdout] == [1e-3, 1e-1, 10.0]
    best = max(s for _, s in res.holdout)
    first_best = next(p["C"] for p, s in res.holdout if s == best)  # a tie keeps the smaller C
    assert res.chosen["C"] == first_best == head.fit.C
    assert res.miou > 0.8 and res.pixel_acc > 0.8
