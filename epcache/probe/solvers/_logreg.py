"""Multinomial L2 logistic regression over a C path, full-batch L-BFGS in torch (PROBE_FAMILIES.md §2.2, §3.2).

Objective (scikit-learn's and cuML's, so C means the same thing): ½‖W‖²_F + C·Σᵢ CE(Wzᵢ + b, yᵢ),
bias unpenalised. It is minimised in the equivalent scaled form mean CE + ‖W‖²/(2Cn) (the same
optimum; gradients of order one at any n) with ``torch.optim.LBFGS`` and a strong-Wolfe line
search, the loss summed in float64. Along a path of ascending C each fit starts from the last
one (warm start), so later fits take a few iterations where a cold fit takes hundreds: that is
where the path beats scikit-learn looped over the same C values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from epcache.errors import ConfigError

__all__ = ["C_PRESETS", "LogregFit", "c_grid", "fit_logreg", "logreg_path"]

C_PRESETS: tuple[str, ...] = ("dinov2", "clip", "raptor")


@dataclass(frozen=True)
class LogregFit:
    """One fit at one C."""

    C: float
    weight: Tensor  # (classes, D) in the coordinates it was fitted in
    bias: Tensor  # (classes,)
    n_iter: int  # L-BFGS iterations
    hit_max_iter: bool  # stopped by max_iter, not by the tolerance
    loss: float  # final scaled objective (mean CE + ‖W‖²/(2Cn))


def c_grid(preset: str | Sequence[float]) -> tuple[float, ...]:
    """The C values of a preset, ascending: ``dinov2`` 10^linspace(−6, 5, 45); ``clip`` 96 steps
    over 10^−6..10^6 (CLIP paper App. A.3, λ = 1/C); ``raptor`` logspace(−4, 2, 100). A list is
    taken as given (sorted).

    Raises:
        ConfigError: unknown preset, or a non-positive C.
    """
    if isinstance(preset, str):
        grids = {
            "dinov2": np.logspace(-6, 5, 45),
            "clip": np.logspace(-6, 6, 96),
            "raptor": np.logspace(-4, 2, 100),
        }
        if preset not in grids:
            raise ConfigError(f"unknown C preset {preset!r}; choose {', '.join(C_PRESETS)} or give C values")
        return tuple(float(c) for c in grids[preset])
    values = tuple(float(c) for c in preset)
    bad = [c for c in values if not c > 0]
    if not values or bad:
        raise ConfigError(f"C values must be > 0 (C is the inverse L2 strength), got {bad or list(values)}")
    return tuple(sorted(set(values)))


def fit_logreg(
    z: Tensor,
    y: Tensor,
    C: float,
    *,
    num_classes: int,
    init: tuple[Tensor, Tensor] | None = None,
    max_iter: int = 1000,
    tol: float = 1e-6,
    history: int = 20,
) -> LogregFit:
    """Minimise ½‖W‖² + C·Σ CE(zW + b, y) by full-batch L-BFGS (strong Wolfe) from ``init`` or zeros.

    Stops when the largest gradient entry of the scaled objective is below ``tol`` (as
    scikit-learn's ``tol`` on the projected gradient) or after ``max_iter`` iterations.
    """
    n, D = z.shape
    dt = z.dtype
    W = torch.zeros(num_classes, D, dtype=dt, device=z.device) if init is None else init[0].clone().to(z)
    b = torch.zeros(num_classes, dtype=dt, device=z.device) if init is None else init[1].clone().to(z)
    W.requires_grad_(True)
    b.requires_grad_(True)
    reg = 1.0 / (2.0 * C * n)
    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=max_iter, tolerance_grad=tol, tolerance_change=0.0,
                            history_size=history, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad(set_to_none=False)
        logits = torch.addmm(b, z, W.T)
        ce = torch.nn.functional.cross_entropy(logits, y, reduction="none").to(torch.float64).sum() / n
        loss = ce.to(dt) + reg * (W * W).sum()
        loss.backward()
        return loss

    opt.step(closure)  # returns the loss at the start, not the end
    n_iter = int(opt.state[W].get("n_iter", 0))
    W, b = W.detach(), b.detach()
    with torch.no_grad():
        logits = torch.addmm(b, z, W.T)
        ce = torch.nn.functional.cross_entropy(logits, y, reduction="none").to(torch.float64).sum() / n
        loss = float(ce) + reg * float((W * W).sum())
    return LogregFit(C, W, b, n_iter, n_iter >= max_iter, loss)


def logreg_path(
    z_fit: Tensor,
    y_fit: Tensor,
    z_hold: Tensor,
    y_hold: Tensor,
    Cs: Sequence[float],
    *,
    num_classes: int,
    max_iter: int = 1000,
    tol: float = 1e-6,
) -> tuple[int, list[LogregFit], list[float]]:
    """Fit every C (ascending, warm-started) and score the holdout.

    Returns:
        The index of the selected C (best holdout top-1, strict ``>``: a tie keeps the smallest C,
        the strongest ridge, as RAPTOR), the fits and the holdout accuracies.
    """
    fits: list[LogregFit] = []
    accs: list[float] = []
    init = None
    for C in Cs:
        fit = fit_logreg(z_fit, y_fit, C, num_classes=num_classes, init=init, max_iter=max_iter, tol=tol)
        init = (fit.weight, fit.bias)
        pred = torch.addmm(fit.bias, z_hold, fit.weight.T).argmax(1)
        accs.append(float((pred == y_hold).double().mean()))
        fits.append(fit)
    best = 0
    for i, a in enumerate(accs):
        if a > accs[best]:
            best = i
    return best, fits, accs
