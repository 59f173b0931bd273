"""Attentive Layer Fusion (ALF): learned queries over the CLS and GAP token of every selected layer.

Ciernik et al., "Beyond the Final Layer: Attentive Multi-Layer Fusion for Vision Transformers"
(arXiv 2601.09322): task information is spread over the depth of a ViT, so the probe attends over
the 2L summary tokens ``[CLS_1, GAP_1, ..., CLS_L, GAP_L]`` instead of one layer's tokens. The
equations, with the choices the paper leaves open, are in docs/ALF.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from epcache.errors import HeadSpecError

from ._base import Pooling, check_heads, merge_heads, softmax_attention, split_heads, trunc_normal_
from ._infer import accept, need

__all__ = ["AttentiveLayerFusion"]


class AttentiveLayerFusion(Pooling):
    """``(B, 2L, D) -> (B, M·D)``: M queries cross-attend over LayerNorm(tokens + layer/type embedding).

    Tokens come in pairs, layer by layer: ``2l`` is CLS of layer l, ``2l+1`` its GAP. The embedding
    table has one learned row per (layer, type) position, so the query can tell layers apart even
    where their tokens look alike. Trainable parameters: ``2L·D`` (embedding) ``+ 2D`` (LayerNorm)
    ``+ M·D`` (queries) ``+ 4D² + 4D`` (projections with biases).

    Args:
        dim: token width D.
        num_tokens: 2L, two summary tokens per fused layer.
        queries: learned queries M; their outputs are concatenated.
        num_heads: attention heads H; D must be divisible by H.
    """

    kind: ClassVar[str] = "alf"

    def __init__(self, dim: int, *, num_tokens: int, queries: int = 1, num_heads: int = 8) -> None:
        check_heads(self.kind, dim, num_heads)
        if num_tokens < 2 or num_tokens % 2:
            raise HeadSpecError(f"'alf' reads a CLS and a GAP token per layer (2L tokens); got {num_tokens} tokens")
        if queries < 1:
            raise HeadSpecError(f"'alf' needs queries >= 1, got {queries}")
        super().__init__(dim, queries * dim)
        self.num_tokens = num_tokens
        self.queries = queries
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.embed = nn.Parameter(torch.zeros(1, num_tokens, dim))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.query = nn.Parameter(torch.zeros(1, queries, dim))
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        trunc_normal_(self.embed, std=0.02)
        trunc_normal_(self.query, std=0.02)

    @property
    def num_layers(self) -> int:
        """Layers fused, L."""
        return self.num_tokens // 2

    def forward(self, tokens: Tensor) -> Tensor:
        B = self._check_tokens(tokens)
        z = self.norm(tokens + self.embed)
        attn = self._attention(z)  # (B, H, M, 2L)
        v = split_heads(self.v(z), self.num_heads)  # (B, H, 2L, dh)
        return self.proj(merge_heads(attn @ v)).reshape(B, self.out_dim)

    def attention(self, tokens: Tensor) -> Tensor:
        """Per-head weights of every query over the 2L tokens, ``(B, H·M, 2L)`` (the layer heatmap)."""
        B = self._check_tokens(tokens)
        return self._attention(self.norm(tokens + self.embed)).reshape(B, -1, self.num_tokens)

    def _attention(self, z: Tensor) -> Tensor:
        B = z.shape[0]
        q = split_heads(self.q(self.query).expand(B, -1, -1), self.num_heads)  # (B, H, M, dh)
        return softmax_attention(q, split_heads(self.k(z), self.num_heads), self.scale)

    def _check_tokens(self, tokens: Tensor) -> int:
        B, N, _ = self._check(tokens)
        if self.num_tokens != N:
            raise HeadSpecError(
                f"'alf' head built for {self.num_layers} layers ({self.num_tokens} tokens) got {N} tokens"
            )
        return B

    @classmethod
    def config_from_state(cls, sd: Mapping[str, Tensor], **config: Any) -> dict[str, Any]:
        """``dim``/``num_tokens`` from ``embed``, ``queries`` from ``query``; ``num_heads`` is not in the tensors."""
        accept(cls.kind, config, ("num_heads",))
        _, n, d = need(cls.kind, sd, "embed", ndim=3).shape
        m = need(cls.kind, sd, "query", ndim=3).shape[1]
        return {"dim": d, "num_tokens": n, "queries": m, "num_heads": config.get("num_heads", 8)}
