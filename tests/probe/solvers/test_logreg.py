"""Logistic C-path: scikit-learn lbfgs parity at a fixed C, the same C chosen on a small grid, the presets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from epcache.errors import ConfigError
from epcache.probe.solvers import c_grid, fit_logreg, logreg_path


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X, y = X[:500], y[:500]
    sd = X.std(0)
    return (X - X.mean(0)) / np.where(sd > 0, sd, 1.0), y


def test_fixed_C_matches_sklearn_lbfgs(digits: tuple[np.ndarray, np.ndarray]) -> None:
    from sklearn.linear_model import LogisticRegression

    Z, y = digits
    C = 0.05
    ref = LogisticRegression(C=C, tol=1e-9, max_iter=5000).fit(Z, y)
    fit = fit_logreg(torch.from_numpy(Z), torch.from_numpy(y), C, num_classes=10, tol=1e-9, max_iter=5000)
    W = fit.weight.numpy()
    assert np.linalg.norm(W - ref.coef_) / np.linalg.norm(ref.coef_) < 1e-3
    assert np.array_equal((Z @ W.T + fit.bias.numpy()).argmax(1), ref.predict(Z))
    assert not fit.hit_max_iter and fit.n_iter > 0
    # the multinomial optimum is class-centred: the columns of W sum to zero (docs/PROBE_FAMILIES.md §2.2)
    assert np.abs(W.sum(0)).max() < 1e-6 * np.abs(W).max()


def test_path_picks_the_same_C_as_sklearn_looped(digits: tuple[np.ndarray, np.ndarray]) -> None:
    from sklearn.linear_model import LogisticRegression

    Z, y = digits
    Cs = c_grid([1e-3, 1e-2, 3e-2, 1e-1, 1.0])
    fit_z, fit_y, hold_z, hold_y = Z[:350], y[:350], Z[350:], y[350:]
    ref_acc = [LogisticRegression(C=C, tol=1e-6, max_iter=2000).fit(fit_z, fit_y).score(hold_z, hold_y) for C in Cs]
    ref_best = int(np.argmax(ref_acc))  # first maximum: ties keep the smallest C
    best, fits, accs = logreg_path(torch.from_numpy(fit_z), torch.from_numpy(fit_y), torch.from_numpy(hold_z),
                                   torch.from_numpy(hold_y), Cs, num_classes=10, tol=1e-6)
    assert abs(best - ref_best) <= 1
    assert np.allclose(accs, ref_acc, atol=2 / len(hold_y))  # at most two holdout predictions differ per C
    assert [f.C for f in fits] == list(Cs)


def test_presets_and_bad_grids() -> None:
    assert len(c_grid("dinov2")) == 45 and c_grid("dinov2")[0] == pytest.approx(1e-6)
    assert c_grid("dinov2")[-1] == pytest.approx(1e5)
    assert len(c_grid("clip")) == 96 and len(c_grid("raptor")) == 100
    assert list(c_grid([1.0, 0.1])) == [0.1, 1.0]  # ascending: warm starts go from strong to weak ridge
    with pytest.raises(ConfigError, match="must be > 0"):
        c_grid([0.1, 0.0])
    with pytest.raises(ConfigError, match="unknown C preset"):
        c_grid("sklearn")


def test_carried_curvature_reaches_the_same_optimum_with_fewer_evaluations(
    digits: tuple[np.ndarray, np.ndarray],
) -> None:
    z, y = torch.from_numpy(digits[0]), torch.from_numpy(digits[1])
    Cs = c_grid(list(np.logspace(-4, 1, 12)))
    _, carried, acc_c = logreg_path(z, y, z, y, Cs, num_classes=10, tol=1e-4)
    _, warm, acc_w = logreg_path(z, y, z, y, Cs, num_classes=10, tol=1e-4, carry_curvature=False)
    assert sum(f.n_eval for f in carried) < sum(f.n_eval for f in warm)
    assert np.allclose(acc_c, acc_w, atol=2 / len(y))
    cold = fit_logreg(z, y, Cs[5], num_classes=10, tol=1e-4)
    for fit in (carried[5], warm[5]):
        assert torch.linalg.norm(fit.weight - cold.weight) / torch.linalg.norm(cold.weight) < 1e-2
