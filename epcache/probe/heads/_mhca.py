"""Generic multi-head cross-attention pooling (docs/EP_SPEC.md §2.1), the baseline EP simplifies.

One learned query, full ``W_Q, W_K, W_V, W_O`` projections with biases, H heads. docs/EP_SPEC.md §1.4
shows W_Q/W_K collapse into free per-head queries and W_O into the classifier; this module keeps
them all so the cost of the conventional design can be measured next to EP.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ._base import Pooling, check_heads, merge_heads, softmax_attention, split_heads, trunc_normal_
from ._infer import accept, need

__all__ = ["MultiHeadCrossAttention"]


class MultiHeadCrossAttention(Pooling):
    """``y = W_O · concat_h softmax(Q_h K_hᵀ/√dh) V_h`` for one learned query; ``(B, N, D) -> (B, D)``.

    Trainable parameters: ``4D² + 4D`` (projections with biases) ``+ D`` (query).

    Args:
        dim: token width D.
        num_heads: attention heads H; D must be divisible by H.
    """

    kind: ClassVar[str] = "mhca"

    def __init__(self, dim: int, *, num_heads: int = 8) -> None:
        check_heads(self.kind, dim, num_heads)
        super().__init__(dim, dim)
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        trunc_normal_(self.query, std=0.02)

    def forward(self, tokens: Tensor) -> Tensor:
        self._check(tokens)
        attn = self._attention(tokens)  # (B, H, 1, N)
        v = split_heads(self.v(tokens), self.num_heads)  # (B, H, N, dh)
        return self.proj(merge_heads(attn @ v))[:, 0]

    def attention(self, tokens: Tensor) -> Tensor:
        """Per-head weights of the query, ``(B, H, N)``."""
        self._check(tokens)
        return self._attention(tokens)[:, :, 0]

    def _attention(self, tokens: Tensor) -> Tensor:
        B = tokens.shape[0]
        q = split_heads(self.q(self.query).expand(B, -1, -1), self.num_heads)  # (B, H, 1, dh)
        k = split_heads(self.k(tokens), self.num_heads)
        return softmax_attention(q, k, self.scale)

    @classmethod
    def config_from_state(cls, sd: Mapping[str, Tensor], **config: Any) -> dict[str, Any]:
        """``dim`` from ``query``; ``num_heads`` cannot be seen in the tensors (default 8)."""
        accept(cls.kind, config, ("num_heads",))
        return {"dim": need(cls.kind, sd, "query", ndim=3).shape[-1], "num_heads": config.get("num_heads", 8)}
