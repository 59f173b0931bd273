"""The ``standardize`` option of the solver heads: scikit-learn's ``StandardScaler``, fit on the fit rows only.

The scaler's mean and population std (ddof=0) come from the rows the solver fits its path on
(``SolverInputs.fit_x``: never the holdout that picks the hyperparameter, never the eval split),
and the same affine map is applied to the fit, holdout, refit and eval vectors before the solver
sees them, so the holdout and eval are scored the way a new image would be. A feature whose
variance is zero up to rounding keeps scale 1, with scikit-learn's test for "zero".

It runs before each solver's own preprocessing: k-NN (cosine) and NCM standardise, then
L2-normalise; logreg's internal fit-row scaler and ridge's big_vision standardiser then see
already-standardised features (close to identities). Linear heads are folded back into raw
store coordinates, so a saved ridge/logreg head still reads raw pooled features; an NCM head
keeps the scaler in its saved state (``input_mean``, ``input_scale``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Standardizer"]


@dataclass(frozen=True)
class Standardizer:
    """Per-feature mean and scale of the fit rows, float64."""

    mean: Tensor  # (D,)
    scale: Tensor  # (D,) population std, 1 where the feature is constant
    constant: int  # features scaled by 1 because their variance is zero

    @classmethod
    def fit(cls, x: Tensor) -> Standardizer:
        """As ``StandardScaler().fit(x)``: float64 mean and ddof=0 std, constant features scaled by 1."""
        x64 = x.to(torch.float64)
        n = x64.shape[0]
        mean = x64.mean(0)
        var = ((x64 - mean) ** 2).mean(0)
        eps = torch.finfo(torch.float64).eps
        constant = var <= n * eps * var + (n * mean * eps) ** 2  # sklearn's _is_constant_feature
        scale = torch.where(constant, torch.ones_like(var), var.sqrt())
        return cls(mean, scale, int(constant.sum()))

    def __call__(self, x: Tensor) -> Tensor:
        """``(x − mean) / scale`` in ``x``'s dtype."""
        return ((x.to(torch.float64) - self.mean) / self.scale).to(x.dtype)

    def fold(self, state: dict[str, Tensor] | None) -> dict[str, Tensor] | None:
        """The saved state in raw coordinates: linear heads folded, others carrying the scaler."""
        if state is None:
            return None
        if "weight" in state and "bias" in state:  # logits = z·wᵀ + b with z = (x − μ)/σ
            weight = state["weight"].to(torch.float64) / self.scale[None, :]
            bias = state["bias"].to(torch.float64) - weight @ self.mean
            return {**state, "weight": weight.to(state["weight"].dtype), "bias": bias.to(state["bias"].dtype)}
        return {**state, "input_mean": self.mean.to(torch.float32), "input_scale": self.scale.to(torch.float32)}
