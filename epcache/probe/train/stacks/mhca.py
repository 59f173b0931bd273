"""Generic multi-head cross-attention stacked, evaluated pooling-first (one learned query)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from epcache.probe.train.stacks.base import TensorStack, attention_softmax

__all__ = ["MHCAStack"]


class MHCAStack(TensorStack):
    """Generic MHCA with one learned query, K configs with the same head count, pooling-first.

    Per head h: ``logit[n] = (W_K,h x_n + b_K,h)·q_h / √dh`` = ``x_n·(W_K,hᵀ q_h)/√dh`` + a constant
    that softmax ignores; and ``Σ_n a[n] (W_V,h x_n + b_V,h) = W_V,h (Σ_n a[n] x_n) + b_V,h``. So
    the cost per image is ``K·H·N·D`` for attention and pooling plus small per-config matmuls,
    not ``K·N·D²`` for projecting every token. The constant is kept in the logits so ``b_K``
    gets its (numerically ~0) gradient exactly as in the module.
    """

    def __init__(self, heads: Sequence[nn.Module], selection: str, config_index: Sequence[int]) -> None:
        super().__init__(heads, selection, config_index)
        self.num_heads = int(heads[0].pooling.num_heads)  # type: ignore[union-attr,arg-type]

    def pool(self, x: Tensor) -> Tensor:
        B, _, D = x.shape
        p = self.pool_name
        query = self.t(f"{p}.query")  # (K, 1, 1, D)
        K = query.shape[0]
        wq, bq = self.t(f"{p}.q.weight"), self.t(f"{p}.q.bias")  # (K, D, D), (K, D)
        wk, bk = self.t(f"{p}.k.weight"), self.t(f"{p}.k.bias")
        wv, bv = self.t(f"{p}.v.weight"), self.t(f"{p}.v.bias")
        H = self.num_heads
        dh = D // H
        q = torch.baddbmm(bq.unsqueeze(1), query.view(K, 1, D), wq.transpose(1, 2)).view(K, H, dh)
        u = torch.einsum("khe,khed->khd", q, wk.view(K, H, dh, D))  # (K, H, D): W_K,hᵀ q_h
        shift = (q * bk.view(K, H, dh)).sum(-1)  # (K, H): q_h·b_K,h, constant over tokens
        scale = dh**-0.5
        logits = torch.matmul(u.reshape(K * H, D), x.transpose(1, 2))  # (B, K·H, N)
        logits = (logits + shift.reshape(1, K * H, 1)) * scale
        z = (attention_softmax(logits) @ x).view(B, K, H, D)  # attention-weighted token sums
        v = torch.einsum("bkhd,khed->kbhe", z, wv.view(K, H, dh, D)).reshape(K, B, D) + bv.unsqueeze(1)
        wo, bo = self.t(f"{p}.proj.weight"), self.t(f"{p}.proj.bias")
        return torch.baddbmm(bo.unsqueeze(1), v, wo.transpose(1, 2))
