"""Efficient Probing (EP), docs/EP_SPEC.md §1: M learned queries on raw tokens, one value slice each.

The reference computes ``V = X W_Vᵀ`` for every token and then lets query j pool slice j of V.
Because keys are the raw tokens and ``W_V`` is linear without bias, the same numbers come out
of pooling first (docs/EP_SPEC.md §1.5): ``Z = A X`` then ``y_j = Z_j · W_V[slice_j]ᵀ``. That replaces
the ``N·D·D'`` value projection by ``M·N·D + D·D'`` work (11x fewer FLOPs at ViT-B, M=32).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from epcache.errors import HeadSpecError

from ._base import Pooling
from ._infer import accept, need

__all__ = ["EPOrder", "EfficientProbing"]

EPOrder = Literal["pool_first", "reference"]
_ORDERS: tuple[str, ...] = ("pool_first", "reference")


class EfficientProbing(Pooling):
    """EP pooling: ``(B, N, D) -> (B, D/d_out)``; query j owns value channels ``[j·c, (j+1)·c)``.

    Works on whatever tokens it is given: patch tokens for ``ep``, ``[CLS; patches]`` for the
    ``ep_all`` variant (the caller selects them; CLS is then just another key/value token).

    Args:
        dim: token width D.
        queries: number of queries M (EP_M).
        d_out: width divisor; the pooled width is ``D / d_out``.
        num_heads: must be 1; the reference squeezes the head axis, so other values break it.
        order: ``"pool_first"`` (default, cheap) or ``"reference"`` (value projection first, as
            in the official code); both give the same numbers up to rounding.

    Raises:
        HeadSpecError: ``D`` is not divisible by ``d_out·M``, ``num_heads != 1`` or an unknown order.
    """

    kind: ClassVar[str] = "ep"

    def __init__(
        self,
        dim: int,
        *,
        queries: int = 32,
        d_out: int = 1,
        num_heads: int = 1,
        order: EPOrder = "pool_first",
    ) -> None:
        _validate(dim, queries, d_out, num_heads)
        super().__init__(dim, dim // d_out)
        self.queries = queries
        self.d_out = d_out
        self.scale = dim**-0.5  # full width, not the slice width (docs/EP_SPEC.md §1.2)
        self.order = order
        # Construction order matters for seeded reproduction: v first, then the queries.
        self.v = nn.Linear(dim, dim // d_out, bias=False)
        self.cls_token = nn.Parameter(torch.randn(1, queries, dim) * 0.02)

    @property
    def order(self) -> EPOrder:
        """Evaluation order of the forward; switchable at any time, parameters are shared."""
        return self._order

    @order.setter
    def order(self, value: EPOrder) -> None:
        if value not in _ORDERS:
            raise HeadSpecError(f"EP order must be one of {_ORDERS}, got {value!r}")
        self._order = value

    @property
    def slice_width(self) -> int:
        """Value channels per query, ``c = D / (d_out·M)``."""
        return self.out_dim // self.queries

    def forward(self, tokens: Tensor, *, uniform_queries: Sequence[int] | None = None) -> Tensor:
        """Pooled features ``(B, D/d_out)``.

        Args:
            tokens: ``(B, N, D)``.
            uniform_queries: queries whose attention is replaced by the uniform ``1/N``
                (docs/EP_SPEC.md §6.2 ablation); their slice becomes ``GAP(X)·W_V[slice]ᵀ``.
        """
        B, N, _ = self._check(tokens)
        M, c = self.queries, self.slice_width
        attn = self._attention(tokens, uniform_queries)  # (B, M, N)
        if self._order == "pool_first":
            pooled = attn @ tokens  # (B, M, D): attention-weighted token sums
            w = self.v.weight.view(M, c, self.in_dim)  # (M, c, D): slice j of W_V
            y = torch.einsum("bmd,mcd->bmc", pooled, w)
        else:
            v = self.v(tokens).view(B, N, M, c).permute(0, 2, 1, 3)  # (B, M, N, c)
            y = (attn.unsqueeze(2) @ v).squeeze(2)  # (B, M, c)
        return y.reshape(B, M * c)

    def attention(self, tokens: Tensor) -> Tensor:
        """``softmax_n(Q Xᵀ/√D)``, shape ``(B, M, N)``; independent of W_V, BN and classifier."""
        self._check(tokens)
        return self._attention(tokens, None)

    def _attention(self, tokens: Tensor, uniform_queries: Sequence[int] | None) -> Tensor:
        q = self.cls_token[0] * self.scale  # (M, D)
        attn = (q @ tokens.transpose(1, 2)).softmax(dim=-1)  # (M, D) @ (B, D, N) -> (B, M, N)
        if uniform_queries is None or len(uniform_queries) == 0:
            return attn
        idx = list(uniform_queries)
        bad = [j for j in idx if not 0 <= j < self.queries]
        if bad:
            raise HeadSpecError(f"uniform_queries {bad} out of range for M={self.queries} queries")
        mask = torch.zeros(self.queries, dtype=torch.bool, device=attn.device)
        mask[idx] = True
        uniform = attn.new_full((), 1.0 / attn.shape[-1])
        return torch.where(mask[None, :, None], uniform, attn)

    @classmethod
    def config_from_state(cls, sd: Mapping[str, Tensor], **config: Any) -> dict[str, Any]:
        """Constructor arguments implied by a pooling state dict (``cls_token``, ``v.weight``)."""
        accept(cls.kind, config, ())
        _, M, D = need(cls.kind, sd, "cls_token", ndim=3).shape
        width = need(cls.kind, sd, "v.weight", ndim=2).shape[0]
        if width == 0 or D % width:
            raise HeadSpecError(f"EP state dict: v.weight width {width} does not divide D={D}")
        return {"dim": D, "queries": M, "d_out": D // width}


def _validate(dim: int, queries: int, d_out: int, num_heads: int) -> None:
    if num_heads != 1:
        raise HeadSpecError(f"EP needs num_heads=1 (the reference squeezes the head axis), got num_heads={num_heads}")
    if dim < 1 or queries < 1 or d_out < 1:
        raise HeadSpecError(f"EP needs positive D, M, d_out; got D={dim}, M={queries}, d_out={d_out}")
    if dim % d_out:
        valid_d = [k for k in range(1, dim + 1) if dim % k == 0]
        raise HeadSpecError(f"EP needs D divisible by d_out: D={dim}, d_out={d_out}; valid d_out: {valid_d}")
    if dim % (d_out * queries):
        width = dim // d_out
        valid_m = [m for m in range(1, width + 1) if width % m == 0]
        raise HeadSpecError(
            f"EP needs D divisible by d_out*M: D={dim}, M={queries}, d_out={d_out}; "
            f"valid M for D={dim}, d_out={d_out}: {valid_m}"
        )
