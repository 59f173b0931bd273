"""LARS, AdamW and SGD over stacked parameters, each config slice with its own lr and wd.

A stacked tensor ``(K, ...)`` holds K configs; a torch optimiser would treat it as one
parameter (one LARS trust ratio over all K configs, one lr). Here every rule is applied per
slice: LARS norms are taken over ``param[k]`` only, learning rate and weight decay are ``(K, 1,
..., 1)`` tensors. Each rule follows the single-head optimiser in ``epcache.probe.train.optim``
(MAE's LARS) or torch (AdamW, SGD) operation by operation, so a config trained in a stack gets
the weights it gets alone (tests compare them in float64).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from epcache.errors import ConfigError
from epcache.probe.train.stacks import ParamSlot

__all__ = ["SlicedOptimizer"]


class SlicedOptimizer:
    """One optimiser rule over many :class:`ParamSlot` s.

    Args:
        name: ``"lars"``, ``"adamw"`` or ``"sgd"``.
        slots: the parameters with their owning configs.
        momentum: LARS momentum (default 0.9) / SGD momentum (default 0, as ``build_optimizer``).
        betas: AdamW betas.
        eps: AdamW epsilon.
        trust_coefficient: LARS η.

    Raises:
        ConfigError: unknown optimiser name.
    """

    def __init__(
        self,
        name: str,
        slots: Sequence[ParamSlot],
        *,
        momentum: float | None = None,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        trust_coefficient: float = 0.001,
    ) -> None:
        if name not in ("lars", "adamw", "adam", "sgd"):
            raise ConfigError(f"unknown optimizer {name!r}; choose one of lars, adamw, adam, sgd")
        self.name = name
        self.slots = list(slots)
        self.momentum = (0.9 if name == "lars" else 0.0) if momentum is None else momentum
        self.betas = betas
        self.eps = eps
        self.trust = trust_coefficient
        self.steps = 0
        self.state: dict[str, dict[str, Tensor]] = {s.name: {} for s in self.slots}

    def zero_grad(self) -> None:
        for s in self.slots:
            s.param.grad = None

    @torch.no_grad()
    def step(self, lr: Tensor, wd: Tensor) -> None:
        """One update; ``lr`` and ``wd`` are ``(num_configs,)`` vectors indexed by each slot's configs."""
        self.steps += 1
        for s in self.slots:
            if s.param.grad is None:
                continue
            p, g = s.view(s.param.data), s.view(s.param.grad)
            shape = (p.shape[0],) + (1,) * (p.ndim - 1)
            lr_k, wd_k = lr[s.index].view(shape).to(p.dtype), wd[s.index].view(shape).to(p.dtype)
            state = self.state[s.name]
            if self.name == "lars":
                self._lars(s, p, g, lr_k, wd_k, state)
            elif self.name == "adamw":
                self._adamw(p, g, lr_k, wd_k, state)
            elif self.name == "adam":  # L2 added to the gradient (torch.optim.Adam's weight_decay)
                self._adamw(p, g + wd_k * p, lr_k, torch.zeros_like(wd_k), state)
            else:
                self._sgd(p, g, lr_k, wd_k, state)

    def _lars(self, s: ParamSlot, p: Tensor, g: Tensor, lr: Tensor, wd: Tensor, state: dict[str, Tensor]) -> None:
        step = g
        if s.single_ndim > 1:
            step = g + wd * p
            p_norm = torch.linalg.vector_norm(p.flatten(1), dim=1)  # per config slice
            s_norm = torch.linalg.vector_norm(step.flatten(1), dim=1)
            ratio = torch.where((p_norm > 0) & (s_norm > 0), self.trust * p_norm / s_norm, 1.0)
            step = step * ratio.view(lr.shape)
        if "mu" not in state:
            state["mu"] = torch.zeros_like(p)
        mu = state["mu"]
        mu.mul_(self.momentum).add_(step)
        p.sub_(lr * mu)

    def _adamw(self, p: Tensor, g: Tensor, lr: Tensor, wd: Tensor, state: dict[str, Tensor]) -> None:
        beta1, beta2 = self.betas
        if "exp_avg" not in state:
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        m, v = state["exp_avg"], state["exp_avg_sq"]
        p.mul_(1 - lr * wd)
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        bc1 = 1 - beta1**self.steps
        bc2_sqrt = math.sqrt(1 - beta2**self.steps)
        denom = (v.sqrt() / bc2_sqrt).add_(self.eps)
        p.sub_((lr / bc1) * m / denom)

    def _sgd(self, p: Tensor, g: Tensor, lr: Tensor, wd: Tensor, state: dict[str, Tensor]) -> None:
        d = g + wd * p
        if self.momentum != 0:
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = d.clone()
            else:
                state["momentum_buffer"].mul_(self.momentum).add_(d)
            d = state["momentum_buffer"]
        p.sub_(lr * d)

    def state_tensors(self) -> dict[str, Tensor]:
        """Optimiser state for a checkpoint, keyed ``<slot>.<state>``."""
        return {f"{slot}.{k}": t for slot, st in self.state.items() for k, t in st.items()}

    def load_state_tensors(self, tensors: dict[str, Tensor], steps: int) -> None:
        """Restore what :meth:`state_tensors` returned (tensors already on the right device)."""
        self.steps = steps
        for slot, st in self.state.items():
            st.clear()
            for key in ("mu", "exp_avg", "exp_avg_sq", "momentum_buffer"):
                name = f"{slot}.{key}"
                if name in tensors:
                    st[key] = tensors[name].clone()
