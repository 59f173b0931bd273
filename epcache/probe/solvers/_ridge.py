"""Closed-form ridge least squares, big_vision's ``fewshot_lsr`` (docs/PROBE_FAMILIES.md §3.1, §3.4).

Features are standardised with the fit set's mean and population std (+1e-5, clamped from
below at 1e-3 x median so a constant dimension cannot blow up), a constant column of 100 is the
(almost unregularised) bias, and targets are ±1. The sufficient statistics (n, Σx, Σxxᵀ, per-
class sums and counts) are accumulated in ONE streamed pass in float64, so G = X̃ᵀX̃ and
R = X̃ᵀ(2Y−1) come from sums without ever materialising X̃. One ``eigh`` of the smaller Gram
matrix (G, primal, when n ≥ D+1; X̃X̃ᵀ, dual, otherwise) turns every λ of a grid into a diagonal
rescale: W(λ) = L·diag(1/(Λ+λ))·R'.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from epcache.errors import ConfigError

__all__ = [
    "BIAS_VALUE",
    "RIDGE_GRIDS",
    "EigenPath",
    "RidgeStats",
    "ridge_lambdas",
    "ridge_system",
    "standardiser",
]

BIAS_VALUE = 100.0  # big_vision's bias column: penalty λ·w_b² on a bias of 100·w_b
STD_EPS = 1e-5  # big_vision adds this to the population std
RIDGE_GRIDS: tuple[str, ...] = ("scaled", "bigvision")  # n·logspace(-8, 1, 37) | λ = 1024


@dataclass
class RidgeStats:
    """Sufficient statistics of a labelled feature set, float64."""

    n: int
    sum_x: Tensor  # (D,)
    sum_xx: Tensor  # (D, D)
    class_sum: Tensor  # (C, D)
    class_n: Tensor  # (C,) float64 counts

    @classmethod
    def zeros(cls, dim: int, num_classes: int, device: torch.device | str = "cpu") -> RidgeStats:
        f = torch.float64
        return cls(0, torch.zeros(dim, dtype=f, device=device), torch.zeros(dim, dim, dtype=f, device=device),
                   torch.zeros(num_classes, dim, dtype=f, device=device),
                   torch.zeros(num_classes, dtype=f, device=device))

    @classmethod
    def accumulate(
        cls, batches: Iterable[tuple[Tensor, Tensor]], *, dim: int, num_classes: int, device: torch.device | str = "cpu"
    ) -> RidgeStats:
        """One pass over ``(x (b, D), y (b,))`` batches, each cast to float64 on ``device``."""
        st = cls.zeros(dim, num_classes, device)
        for x, y in batches:
            x = x.to(device=device, dtype=torch.float64)
            y = y.to(device)
            st.n += x.shape[0]
            st.sum_x += x.sum(0)
            st.sum_xx += x.T @ x
            st.class_sum.index_add_(0, y, x)
            st.class_n.index_add_(0, y, torch.ones_like(y, dtype=torch.float64))
        return st

    def __add__(self, other: RidgeStats) -> RidgeStats:
        return RidgeStats(self.n + other.n, self.sum_x + other.sum_x, self.sum_xx + other.sum_xx,
                          self.class_sum + other.class_sum, self.class_n + other.class_n)


def standardiser(stats: RidgeStats, *, min_std_rel: float = 1e-3) -> tuple[Tensor, Tensor, int]:
    """Mean, std (population, +1e-5, clamped at ``min_std_rel`` x median) and how many were clamped."""
    n = stats.n
    mu = stats.sum_x / n
    var = (torch.diagonal(stats.sum_xx) / n - mu * mu).clamp_min(0)
    s = var.sqrt() + STD_EPS
    floor = min_std_rel * float(s.median())
    clamped = int((s < floor).sum())
    return mu, s.clamp_min(floor), clamped


def ridge_system(stats: RidgeStats, mu: Tensor, s: Tensor, *, bias: float = BIAS_VALUE) -> tuple[Tensor, Tensor]:
    """``G = X̃ᵀX̃`` ((D+1)²) and ``R = X̃ᵀ(2Y−1)`` ((D+1, C)) from sums, X̃ = [(x−μ)/s, bias].

    Exact identities (no X̃ needed): X̃ᵀX̃ = S⁻¹(Σxxᵀ − Σx μᵀ − μ Σxᵀ + nμμᵀ)S⁻¹ (the middle
    reduces to Σxxᵀ − nμμᵀ when μ is the mean of this same set); the cross term with the bias
    column is bias·(Σx − nμ)/s; column c of R is (2S_c − Σx − μ(2n_c − n))/s, bias row
    bias·(2n_c − n).
    """
    n, D = stats.n, stats.sum_x.shape[0]
    sx, sxx = stats.sum_x, stats.sum_xx
    centred = sxx - torch.outer(sx, mu) - torch.outer(mu, sx) + n * torch.outer(mu, mu)
    G = torch.empty(D + 1, D + 1, dtype=torch.float64, device=sx.device)
    G[:D, :D] = centred / torch.outer(s, s)
    cross = bias * (sx - n * mu) / s
    G[:D, D] = cross
    G[D, :D] = cross
    G[D, D] = bias * bias * n
    two_n = 2 * stats.class_n - n  # (C,)
    R = torch.empty(D + 1, stats.class_n.shape[0], dtype=torch.float64, device=sx.device)
    R[:D] = ((2 * stats.class_sum - sx[None, :]) - two_n[:, None] * mu[None, :]).T / s[:, None]
    R[D] = bias * two_n
    return G, R


class EigenPath:
    """Ridge weights for any λ from one ``eigh``: primal (of G) or dual (of X̃X̃ᵀ).

    Args:
        G: primal Gram matrix X̃ᵀX̃ (D+1, D+1); with ``R`` (D+1, C).
        R: X̃ᵀ(2Y−1).
        X: for the dual branch, the explicit X̃ (n, D+1) and ``Y`` (n, C) ±1 targets instead.
    """

    def __init__(self, *, G: Tensor | None = None, R: Tensor | None = None, X: Tensor | None = None,
                 Y: Tensor | None = None) -> None:
        if G is not None and R is not None:
            self.branch = "primal"
            lam, Q = torch.linalg.eigh(G)
            self.L, self.right = Q, Q.T @ R
        elif X is not None and Y is not None:
            self.branch = "dual"
            lam, Q = torch.linalg.eigh(X @ X.T)
            self.L, self.right = X.T @ Q, Q.T @ Y
        else:
            raise ValueError("EigenPath needs G and R (primal) or X and Y (dual)")
        self.eigenvalues = lam.clamp_min(0)  # fp64 rounding can give tiny negative values of a PSD matrix

    def weights(self, lam: float) -> Tensor:
        """W(λ) = L diag(1/(Λ+λ)) R', shape (D+1, C)."""
        return self.L @ (self.right / (self.eigenvalues + lam)[:, None])

    def scores(self, lam: float, X: Tensor) -> Tensor:
        """``X W(λ)`` for standardised rows ``X`` (n, D+1)."""
        return X @ self.weights(lam)


def ridge_lambdas(grid: str | Sequence[float], n: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(relative values, absolute λ at n)``: the ``scaled`` grid is n·logspace(−8, 1, 37), ``bigvision`` 1024.

    A relative value r means λ = r·n (scale with the data, §3.6); ``bigvision`` is absolute, so
    its relative value is 1024/n.

    Raises:
        ConfigError: unknown grid name or a non-positive λ.
    """
    if isinstance(grid, str):
        if grid == "scaled":
            rel = tuple(float(v) for v in np.logspace(-8, 1, 37))
        elif grid == "bigvision":
            rel = (1024.0 / n,)
        else:
            raise ConfigError(f"unknown ridge grid {grid!r}; choose {', '.join(RIDGE_GRIDS)} or give lambdas")
    else:
        rel = tuple(float(v) / n for v in grid)
    if not rel or any(not r > 0 for r in rel):
        raise ConfigError(f"ridge lambdas must be > 0, got {list(grid)}")
    return rel, tuple(r * n for r in rel)
