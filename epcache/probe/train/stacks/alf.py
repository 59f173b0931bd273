"""Attentive Layer Fusion stacked, evaluated pooling-first like MHCA (docs/ALF.md)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from epcache.probe.train.stacks.base import TensorStack, attention_softmax

__all__ = ["ALFStack"]


class ALFStack(TensorStack):
    """ALF for K configs with the same (M, H, L): every config's normalised tokens, then MHCA pooling-first.

    Each config adds its own layer/type embedding and LayerNorm affine, so the keys ``z`` are
    ``(K, B, 2L, D)``; 2L is small (two tokens per layer), so that costs about what the input does.
    As in MHCA, ``W_K`` folds into a per-head query vector and ``W_V`` moves after the weighted sum.
    """

    def __init__(self, heads: Sequence[nn.Module], selection: str, config_index: Sequence[int]) -> None:
        super().__init__(heads, selection, config_index)
        pooling = heads[0].pooling  # type: ignore[union-attr]
        self.num_heads = int(pooling.num_heads)  # type: ignore[arg-type]
        self.norm_eps = float(pooling.norm.eps)  # type: ignore[union-attr,arg-type]

    def pool(self, x: Tensor) -> Tensor:
        B, _, D = x.shape
        p = self.pool_name
        query = self.t(f"{p}.query")  # (K, 1, M, D)
        K, _, M, _ = query.shape
        H = self.num_heads
        dh = D // H
        embed = self.t(f"{p}.embed")  # (K, 1, 2L, D)
        z = F.layer_norm(x.unsqueeze(0) + embed, (D,), eps=self.norm_eps)  # (K, B, 2L, D)
        z = z * self.t(f"{p}.norm.weight").view(K, 1, 1, D) + self.t(f"{p}.norm.bias").view(K, 1, 1, D)
        wq, bq = self.t(f"{p}.q.weight"), self.t(f"{p}.q.bias")  # (K, D, D), (K, D)
        wk, bk = self.t(f"{p}.k.weight"), self.t(f"{p}.k.bias")
        wv, bv = self.t(f"{p}.v.weight"), self.t(f"{p}.v.bias")
        q = torch.baddbmm(bq.unsqueeze(1), query.view(K, M, D), wq.transpose(1, 2)).view(K, M, H, dh)
        u = torch.einsum("kmhe,khed->kmhd", q, wk.view(K, H, dh, D))  # W_K,hᵀ q_mh
        shift = torch.einsum("kmhe,khe->kmh", q, bk.view(K, H, dh))  # q_mh·b_K,h, constant over tokens
        logits = (torch.einsum("kbnd,kmhd->kbmhn", z, u) + shift[:, None, :, :, None]) * dh**-0.5
        s = torch.einsum("kbmhn,kbnd->kbmhd", attention_softmax(logits).to(z.dtype), z)  # weighted token sums
        v = torch.einsum("kbmhd,khed->kbmhe", s, wv.view(K, H, dh, D)) + bv.view(K, 1, 1, H, dh)
        wo, bo = self.t(f"{p}.proj.weight"), self.t(f"{p}.proj.bias")
        out = torch.baddbmm(bo.unsqueeze(1), v.reshape(K, B * M, D), wo.transpose(1, 2))  # (K, B·M, D)
        return out.view(K, B, M * D)
