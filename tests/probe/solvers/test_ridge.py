"""Ridge: the eigen path equals direct solves (primal and dual), the one-pass sums equal the explicit Gram."""

from __future__ import annotations

import pytest
import torch

from epcache.errors import ConfigError
from epcache.probe.solvers import EigenPath, RidgeStats, ridge_lambdas, ridge_system, standardiser
from epcache.probe.solvers._fit import _augment

LAMBDAS = [1e-2, 1.0, 1024.0, 1e5]


def _data(n: int, D: int, C: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % C
    x = torch.randn(C, D, generator=g, dtype=torch.float64)[y] + torch.randn(n, D, generator=g, dtype=torch.float64)
    return x * torch.linspace(0.5, 3, D, dtype=torch.float64) + 2.0, y


def _explicit(x: torch.Tensor, y: torch.Tensor, C: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    stats = RidgeStats.accumulate([(x, y)], dim=x.shape[1], num_classes=C)
    mu, s, _ = standardiser(stats)
    X = _augment(x, mu, s)
    Y = 2 * torch.nn.functional.one_hot(y, C).double() - 1
    return X, Y, stats  # type: ignore[return-value]


def test_one_pass_sums_equal_the_explicit_gram() -> None:
    x, y = _data(120, 10, 4)
    batches = [(x[i : i + 25], y[i : i + 25]) for i in range(0, 120, 25)]  # streamed in pieces
    X, Y, _ = _explicit(x, y, 4)
    stats = RidgeStats.accumulate(batches, dim=10, num_classes=4)
    mu, s, _ = standardiser(stats)
    G, R = ridge_system(stats, mu, s)
    torch.testing.assert_close(G, X.T @ X, rtol=1e-10, atol=1e-8)
    torch.testing.assert_close(R, X.T @ Y, rtol=1e-10, atol=1e-8)


@pytest.mark.parametrize("lam", LAMBDAS)
def test_primal_path_equals_solve(lam: float) -> None:
    x, y = _data(200, 12, 5)
    X, Y, _ = _explicit(x, y, 5)
    G, R = X.T @ X, X.T @ Y
    path = EigenPath(G=G, R=R)
    assert path.branch == "primal"
    direct = torch.linalg.solve(G + lam * torch.eye(13, dtype=torch.float64), R)
    torch.testing.assert_close(path.weights(lam), direct, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("lam", LAMBDAS)
def test_dual_path_equals_solve_when_n_is_small(lam: float) -> None:
    x, y = _data(9, 20, 3)  # n = 9 < D + 1 = 21: the dual branch (CUB 1-shot's situation)
    X, Y, _ = _explicit(x, y, 3)
    path = EigenPath(X=X, Y=Y)
    assert path.branch == "dual"
    dual = X.T @ torch.linalg.solve(X @ X.T + lam * torch.eye(9, dtype=torch.float64), Y)
    primal = torch.linalg.solve(X.T @ X + lam * torch.eye(21, dtype=torch.float64), X.T @ Y)
    torch.testing.assert_close(path.weights(lam), dual, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(path.weights(lam), primal, rtol=1e-8, atol=1e-10)


def test_pm1_targets_predict_like_01_targets() -> None:
    x, y = _data(150, 8, 4)
    X, Y, _ = _explicit(x, y, 4)
    Y01 = (Y + 1) / 2
    for lam in LAMBDAS:
        w_pm = torch.linalg.solve(X.T @ X + lam * torch.eye(9, dtype=torch.float64), X.T @ Y)
        w_01 = torch.linalg.solve(X.T @ X + lam * torch.eye(9, dtype=torch.float64), X.T @ Y01)
        assert torch.equal((X @ w_pm).argmax(1), (X @ w_01).argmax(1))


def test_constant_dimension_is_clamped_not_exploded() -> None:
    x, y = _data(100, 6, 3)
    x[:, 2] = 4.0  # std 0
    stats = RidgeStats.accumulate([(x, y)], dim=6, num_classes=3)
    _, s, clamped = standardiser(stats)
    assert clamped == 1 and float(s[2]) >= 1e-3 * float(s.median())


def test_lambda_grids() -> None:
    rel, lams = ridge_lambdas("scaled", 1000)
    assert len(rel) == 37 and lams[0] == pytest.approx(1000 * 1e-8) and lams[-1] == pytest.approx(1000 * 10)
    assert ridge_lambdas("bigvision", 500)[1] == pytest.approx((1024.0,))
    with pytest.raises(ConfigError, match="must be > 0"):
        ridge_lambdas([1.0, -2.0], 10)
    with pytest.raises(ConfigError, match="unknown ridge grid"):
        ridge_lambdas("nope", 10)
