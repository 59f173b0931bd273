"""Optimisers and the learning-rate schedule of the EP probing recipe (docs/EP_SPEC.md §4.1).

The recipe trains every head with MAE's LARS (momentum 0.9, trust coefficient 0.001, no
weight decay), ``lr = blr · batch / 256``, a linear warm-up from 0 and a per-iteration
half-cosine to 0. SGD and AdamW are offered with torch's semantics for comparison runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from epcache.errors import ConfigError

__all__ = ["LARS", "OPTIMIZERS", "build_optimizer", "lr_at"]

OPTIMIZERS: tuple[str, ...] = ("sgd", "lars", "adamw", "adam")


class LARS(torch.optim.Optimizer):
    """LARS as in MAE's ``util/lars.py``, the reference optimiser of the EP paper.

    For every parameter with ``ndim > 1`` (weights, and EP's ``(1, M, D)`` queries) the step is
    rescaled by the trust ratio ``η·‖w‖/‖g + wd·w‖`` (1 if either norm is 0); 1-D parameters
    (biases, norms) get plain momentum SGD without weight decay or scaling:

        g' = (g + wd·w) · ratio        (ndim > 1)      g' = g        (ndim <= 1)
        μ ← momentum·μ + g'            p ← p − lr·μ

    Note the momentum buffer accumulates the *scaled* step and lr multiplies it afterwards, so
    the buffer after the first step equals ``g'`` (no dampening).

    Args:
        params: parameters or param groups.
        lr: learning rate.
        weight_decay: L2 added to the gradient of ``ndim > 1`` parameters before scaling.
        momentum: momentum factor.
        trust_coefficient: η.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.0,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        trust_coefficient: float = 0.001,
    ) -> None:
        if lr < 0 or weight_decay < 0 or momentum < 0 or trust_coefficient <= 0:
            raise ConfigError(
                f"LARS needs lr, weight_decay, momentum >= 0 and trust_coefficient > 0; got lr={lr}, "
                f"weight_decay={weight_decay}, momentum={momentum}, trust_coefficient={trust_coefficient}"
            )
        defaults = {
            "lr": lr,
            "weight_decay": weight_decay,
            "momentum": momentum,
            "trust_coefficient": trust_coefficient,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                step = p.grad
                if p.ndim > 1:
                    step = step.add(p, alpha=group["weight_decay"])
                    p_norm, s_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(step)
                    ratio = torch.where((p_norm > 0) & (s_norm > 0), group["trust_coefficient"] * p_norm / s_norm, 1.0)
                    step = step.mul(ratio)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(group["momentum"]).add_(step)
                p.add_(mu, alpha=-group["lr"])
        return loss


def build_optimizer(
    name: str,
    param_groups: Iterable[Tensor] | Iterable[dict[str, Any]],
    *,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float | None = None,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    trust_coefficient: float = 0.001,
) -> torch.optim.Optimizer:
    """Optimiser by name, as the reference ``--optimizer {lars,adamw,sgd}`` builds it.

    Args:
        name: ``"lars"`` (the recipe), ``"sgd"`` or ``"adamw"``.
        param_groups: parameters or param groups (per-group ``lr`` etc. override the defaults).
        lr: learning rate (absolute, i.e. already ``blr · batch / 256``).
        weight_decay: weight decay (the recipe uses 0).
        momentum: LARS momentum (default 0.9) or SGD momentum (default 0, torch's default and
            what the reference passes); ignored by AdamW.
        betas: AdamW betas.
        eps: AdamW epsilon.
        trust_coefficient: LARS η.

    Raises:
        ConfigError: unknown optimiser name or invalid hyperparameters.
    """
    key = name.lower()
    if key == "lars":
        return LARS(
            param_groups,
            lr=lr,
            weight_decay=weight_decay,
            momentum=0.9 if momentum is None else momentum,
            trust_coefficient=trust_coefficient,
        )
    try:
        if key == "sgd":
            return torch.optim.SGD(
                param_groups, lr=lr, momentum=0.0 if momentum is None else momentum, weight_decay=weight_decay
            )
        if key == "adamw":
            return torch.optim.AdamW(param_groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        if key == "adam":
            return torch.optim.Adam(param_groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    except ValueError as e:  # torch's own hyperparameter checks
        raise ConfigError(f"invalid {key} settings: {e}") from None
    raise ConfigError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def lr_at(step: int | float, *, base_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Learning rate at iteration ``step``: linear warm-up from 0, then half-cosine to 0.

    ``base_lr · step / warmup_steps`` while ``step < warmup_steps``, then
    ``base_lr · ½(1 + cos(π (step − warmup_steps) / (total_steps − warmup_steps)))``; 0 from
    ``total_steps`` on. With ``step`` in iterations this is MAE's per-iteration schedule
    (fractional epochs, ``min_lr = 0``).

    Raises:
        ConfigError: negative step counts or ``warmup_steps > total_steps``.
    """
    if step < 0 or warmup_steps < 0 or total_steps <= 0 or warmup_steps > total_steps:
        raise ConfigError(
            f"lr schedule needs 0 <= step, 0 <= warmup_steps <= total_steps, total_steps > 0; "
            f"got step={step}, warmup_steps={warmup_steps}, total_steps={total_steps}"
        )
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    if step >= total_steps:
        return 0.0
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
