"""Multinomial L2 logistic regression over a C path, full-batch L-BFGS in torch (docs/PROBE_FAMILIES.md §2.2, §3.2).

Objective (scikit-learn's and cuML's, so C means the same thing): ½‖W‖²_F + C·Σᵢ CE(Wzᵢ + b, yᵢ),
bias unpenalised. It is minimised in the equivalent scaled form mean CE + ‖W‖²/(2Cn) (the same
optimum; gradients of order one at any n) with ``torch.optim.LBFGS`` and a strong-Wolfe line
search, the loss summed in float64. Along a path of ascending C each fit starts from the last
one (warm start), so later fits take a few iterations where a cold fit takes hundreds: that is
where the path beats scikit-learn looped over the same C values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from epcache.errors import ConfigError

__all__ = ["C_PRESETS", "LogregFit", "c_grid", "fit_logreg", "logreg_path"]

C_PRESETS: tuple[str, ...] = ("dinov2", "clip", "raptor")


@dataclass(frozen=True)
class LbfgsMemory:
    """L-BFGS curvature pairs (s, y) of a finished fit, for the next C of a path.

    Two objectives of the path differ only by the quadratic (reg' − reg)‖W‖², so a pair measured
    on one becomes an exact pair of the other by adding 2(reg' − reg)·s to the W part of y: the
    next fit starts with the curvature the last one learned instead of a steepest-descent step.
    """

    steps: tuple[Tensor, ...]  # s_i, flattened [W, b]
    grads: tuple[Tensor, ...]  # y_i, for the objective with ``reg``
    reg: float  # the ‖W‖² coefficient the y_i belong to
    num_weights: int  # length of the W part of the flat vectors


@dataclass(frozen=True)
class LogregFit:
    """One fit at one C."""

    C: float
    weight: Tensor  # (classes, D) in the coordinates it was fitted in
    bias: Tensor  # (classes,)
    n_iter: int  # L-BFGS iterations
    n_eval: int  # loss + gradient evaluations (passes over the data are twice this)
    hit_max_iter: bool  # stopped by max_iter, not by the tolerance
    loss: float  # final scaled objective (mean CE + ‖W‖²/(2Cn))
    memory: LbfgsMemory | None = None  # curvature pairs at the end (for warm-starting the next C)


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
    memory: LbfgsMemory | None = None,
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
    reg = 1.0 / (2.0 * C * n)
    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=max_iter, tolerance_grad=tol, tolerance_change=0.0,
                            history_size=history, line_search_fn="strong_wolfe")
    zt = z.T  # (D, n) view: logits as (C, n) = W zᵀ is the faster GEMM shape with few classes
    cols = torch.arange(n, device=z.device)

    def closure() -> Tensor:
        # Loss and gradient by hand (no autograd graph): 2 passes over z per evaluation, the minimum.
        logits = torch.addmm(b[:, None], W, zt)  # (C, n)
        lse = torch.logsumexp(logits, dim=0)
        loss = (lse.to(torch.float64).sum() - logits[y, cols].to(torch.float64).sum()) / n
        g = torch.exp(logits - lse)  # softmax over classes, (C, n)
        g[y, cols] -= 1
        g /= n
        W.grad = torch.addmm(W, g, z, beta=2 * reg)  # (C, D): g z + 2·reg·W
        b.grad = g.sum(1)
        return (loss + reg * (W.to(torch.float64) ** 2).sum()).to(dt)

    state = opt.state[W]
    start = _inject_memory(state, memory, reg) if memory is not None else 0
    with torch.no_grad():
        opt.step(closure)  # returns the loss at the start, not the end
        n_iter = int(state.get("n_iter", start)) - start
        loss = float(closure())
    W.grad = b.grad = None
    steps, grads = state.get("old_stps") or [], state.get("old_dirs") or []
    out_memory = LbfgsMemory(tuple(steps), tuple(grads), reg, W.numel()) if steps else memory
    return LogregFit(C, W, b, n_iter, int(state.get("func_evals", 0)), n_iter >= max_iter, loss, out_memory)


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
    carry_curvature: bool = True,
    on_fit: Callable[[int, LogregFit, float], None] | None = None,
) -> tuple[int, list[LogregFit], list[float]]:
    """Fit every C (ascending, warm-started; ``carry_curvature`` also hands on the L-BFGS pairs), score the holdout.

    ``on_fit(index, fit, holdout_top1)`` is called after each C: a path over 100 C values on a large
    training set runs for minutes, and the caller reports its progress.

    Returns:
        The index of the selected C (best holdout top-1, strict ``>``: a tie keeps the smallest C,
        the strongest ridge, as RAPTOR), the fits and the holdout accuracies.
    """
    fits: list[LogregFit] = []
    accs: list[float] = []
    init = None
    memory = None
    for C in Cs:
        fit = fit_logreg(z_fit, y_fit, C, num_classes=num_classes, init=init, memory=memory, max_iter=max_iter,
                         tol=tol)
        init, memory = (fit.weight, fit.bias), fit.memory if carry_curvature else None
        pred = torch.addmm(fit.bias, z_hold, fit.weight.T).argmax(1)
        accs.append(float((pred == y_hold).double().mean()))
        fits.append(fit)
        if on_fit is not None:
            on_fit(len(fits) - 1, fit, accs[-1])
    best = 0
    for i, a in enumerate(accs):
        if a > accs[best]:
            best = i
    return best, fits, accs


def _inject_memory(state: dict[str, Any], memory: LbfgsMemory, reg: float) -> int:
    """Seed ``torch.optim.LBFGS``'s state with the previous fit's pairs, corrected to this ``reg``.

    The first iteration then takes a quasi-Newton step (state ``n_iter`` > 0) and adds no pair
    of its own (``t = 0`` makes its step zero). Returns the iteration count it starts from.
    """
    delta = 2.0 * (reg - memory.reg)
    steps, grads, ro = [], [], []
    for s, y in zip(memory.steps, memory.grads, strict=True):
        y = y.clone()
        y[: memory.num_weights] += delta * s[: memory.num_weights]
        ys = float(y.dot(s))
        if ys > 1e-10:
            steps.append(s)
            grads.append(y)
            ro.append(1.0 / ys)
    if not steps:
        return 0
    last_s, last_y = steps[-1], grads[-1]
    state.update({
        "n_iter": 1,
        "func_evals": 0,
        "d": torch.zeros_like(last_s),
        "t": 0.0,
        "prev_flat_grad": torch.zeros_like(last_s),
        "prev_loss": 0.0,
        "old_stps": steps,
        "old_dirs": grads,
        "ro": ro,
        "H_diag": last_s.dot(last_y) / last_y.dot(last_y),
    })
    return 1
