"""Efficient Probing stacked, pooling-first (docs/EP_SPEC.md §1.3, §1.5): all K·M queries in one matmul."""

from __future__ import annotations

import torch
from torch import Tensor

from epcache.probe.train.stacks.base import TensorStack, attention_softmax

__all__ = ["EPStack"]


class EPStack(TensorStack):
    """Efficient Probing, pooling-first, for K configs with the same (M, d_out).

    All K·M queries attend in one ``(B, K·M, N)`` matmul; then each query's weighted token sum
    meets its own ``c``-wide slice of its config's ``W_V`` (docs/EP_SPEC.md §1.3, §1.5).
    """

    def pool(self, x: Tensor) -> Tensor:
        B, _, D = x.shape
        q = self.t(f"{self.pool_name}.cls_token")  # (K, 1, M, D)
        w = self.t(f"{self.pool_name}.v.weight")  # (K, D', D)
        K, _, M, _ = q.shape
        c = w.shape[1] // M
        logits = torch.matmul(q.reshape(K * M, D) * D**-0.5, x.transpose(1, 2))  # (B, K·M, N)
        pooled = attention_softmax(logits) @ x  # (B, K·M, D)
        y = torch.einsum("bkmd,kmcd->kbmc", pooled.view(B, K, M, D), w.view(K, M, c, D))
        return y.reshape(K, B, M * c)
