"""Class-attention poolers: CaiT's class-attention blocks and CoCa's attentional pooler (docs/EP_SPEC.md §3).

Split from ``_xattn_pools`` (the other cross-attention poolers); same conventions and key names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from epcache.errors import HeadSpecError

from ._base import (
    Mlp,
    Pooling,
    check_heads,
    merge_heads,
    softmax_attention,
    split_heads,
    trunc_normal_,
)
from ._infer import accept, count_indexed, need

__all__ = ["CaiTPooler", "CoCaPooler"]


class _ClassAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def attention(self, u: Tensor) -> Tensor:
        """Weights of the class token (row 0 of ``u``) over all of ``u``: ``(B, H, 1, N+1)``."""
        q = split_heads(self.q(u[:, :1]), self.num_heads)
        return softmax_attention(q, split_heads(self.k(u), self.num_heads), self.scale)


class _ClassAttentionBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, init_scale: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _ClassAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.gamma_1 = nn.Parameter(init_scale * torch.ones(dim))
        self.gamma_2 = nn.Parameter(init_scale * torch.ones(dim))

    def forward(self, x: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        u = self.norm1(torch.cat([c, x], dim=1))  # the class token is one of the keys
        attn = self.attn.attention(u)
        v = split_heads(self.attn.v(u), self.attn.num_heads)
        c = c + self.gamma_1 * self.attn.proj(merge_heads(attn @ v))
        c = c + self.gamma_2 * self.mlp(self.norm2(c))
        return c, attn


class CaiTPooler(Pooling):
    """CaiT class-attention pooling (``cait``): LayerScale class-attention block(s) + final LN.

    Only the class token emits a query; its keys/values include itself. LayerScale starts at
    1e-5, so the pooled features barely vary at init. Parameters ``12D² + 18D``.

    Args:
        dim: token width D.
        num_heads: heads (constructor default 4).
        iterations: number of class-attention blocks (the reference uses 1).
        mlp_ratio: MLP hidden width / D.
        init_scale: initial LayerScale value.
    """

    kind: ClassVar[str] = "cait"

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int = 4,
        iterations: int = 1,
        mlp_ratio: float = 4.0,
        init_scale: float = 1e-5,
    ) -> None:
        check_heads(self.kind, dim, num_heads)
        super().__init__(dim, dim)
        self.blocks_token_only = nn.ModuleList(
            [_ClassAttentionBlock(dim, num_heads, mlp_ratio, init_scale) for _ in range(iterations)]
        )
        self.norm = nn.LayerNorm(dim)  # eps 1e-5: a plain nn.LayerNorm in the reference
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        trunc_normal_(self.cls_token, std=0.02)

    def forward(self, tokens: Tensor) -> Tensor:
        return self._run(tokens)[0]

    def attention(self, tokens: Tensor) -> Tensor:
        """Per-head weights of the class token over ``[cls; X]``, ``(B, H, N+1)``; key 0 is the class
        token itself. With several iterations, the last block's map."""
        return self._run(tokens)[1][:, :, 0]

    def _run(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        B, _, _ = self._check(tokens)
        c = self.cls_token.expand(B, -1, -1)
        attn = tokens.new_empty(0)
        for blk in self.blocks_token_only:
            c, attn = blk(tokens, c)
        # The reference normalises [c; X] and keeps row 0; LayerNorm is per token, so only c matters.
        return self.norm(c)[:, 0], attn

    @classmethod
    def config_from_state(cls, sd: Mapping[str, Tensor], **config: Any) -> dict[str, Any]:
        """``dim``, depth and MLP width from tensors; ``num_heads`` is config (default 4)."""
        accept(cls.kind, config, ("num_heads",))
        D = need(cls.kind, sd, "cls_token", ndim=3).shape[-1]
        hidden = need(cls.kind, sd, "blocks_token_only.0.mlp.fc1.weight", ndim=2).shape[0]
        return {
            "dim": D,
            "num_heads": config.get("num_heads", 4),
            "iterations": count_indexed(sd, "blocks_token_only."),
            "mlp_ratio": hidden / D,
        }


# --------------------------------------------------------------------------------------- CoCa


class _GammaLayerNorm(nn.Module):
    """LayerNorm without a trainable bias (CoCa): ``beta`` is a zero buffer, not a parameter."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))
        self.register_buffer("beta", torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, x.shape[-1:], self.gamma, self.beta)


class CoCaPooler(Pooling):
    """CoCa attentional pooler (``coca``): multi-query attention with one shared 64-d K/V head.

    Q learned queries (randn, std 1) pass a gamma-only LayerNorm and ``to_q`` (8 heads of 64);
    ``to_kv`` makes a single K and V from the tokens; only query 0's output is returned. All Q
    queries are still computed, as in the reference, so the FLOP count matches it.
    Parameters ``(Q+1)·D + D·(2·H·dh + 2·dh)``.

    Args:
        dim: token width D.
        queries: number of learned queries Q (reference ``num_img_queries=196``).
        num_heads: query heads H.
        dim_head: per-head width dh (also the width of the single K/V head).
    """

    kind: ClassVar[str] = "coca"

    def __init__(self, dim: int, *, queries: int = 196, num_heads: int = 8, dim_head: int = 64) -> None:
        super().__init__(dim, dim)
        self.num_heads = num_heads
        self.scale = dim_head**-0.5
        inner = num_heads * dim_head
        self.norm = _GammaLayerNorm(dim)
        self.img_queries = nn.Parameter(torch.randn(queries, dim))
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * dim_head, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, tokens: Tensor) -> Tensor:
        self._check(tokens)
        attn, v = self._attention(tokens)  # (B, H, Q, N), (B, N, dh)
        out = attn @ v.unsqueeze(1)  # the single value head is shared by every query head
        return self.to_out(merge_heads(out))[:, 0]

    def attention(self, tokens: Tensor) -> Tensor:
        """Per-head weights of query 0 (the only one that reaches the output), ``(B, H, N)``."""
        self._check(tokens)
        return self._attention(tokens)[0][:, :, 0]

    def _attention(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        B = tokens.shape[0]
        q = self.to_q(self.norm(self.img_queries)).expand(B, -1, -1)  # (B, Q, H*dh)
        q = split_heads(q, self.num_heads) * self.scale
        k, v = self.to_kv(tokens).chunk(2, dim=-1)  # (B, N, dh) each
        sim = q @ k.unsqueeze(1).transpose(-2, -1)  # (B, H, Q, N)
        return sim.softmax(dim=-1), v

    @classmethod
    def config_from_state(cls, sd: Mapping[str, Tensor], **config: Any) -> dict[str, Any]:
        """Everything from tensors: ``img_queries`` (Q, D), ``to_kv`` (2·dh, D), ``to_q`` (H·dh, D)."""
        accept(cls.kind, config, ())
        Q, D = need(cls.kind, sd, "img_queries", ndim=2).shape
        dim_head = need(cls.kind, sd, "to_kv.weight", ndim=2).shape[0] // 2
        inner = need(cls.kind, sd, "to_q.weight", ndim=2).shape[0]
        if dim_head == 0 or inner % dim_head:
            raise HeadSpecError(f"'coca' state dict: to_q width {inner} is not a multiple of dim_head {dim_head}")
        return {"dim": D, "queries": Q, "num_heads": inner // dim_head, "dim_head": dim_head}
