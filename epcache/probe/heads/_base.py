"""Shared pieces of every probe head: the pooling interface, the head wrapper, attention helpers.

docs/EP_SPEC.md §1.6: every probe is ``pooling -> BatchNorm1d(width, affine=False, eps=1e-6) -> Linear``.
The wrapper keeps the reference ``nn.Sequential`` key names (``0.*`` pooling, ``1.*`` BatchNorm,
``2.*`` classifier) so checkpoints of the official implementation load without renaming.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from epcache.errors import HeadSpecError

__all__ = ["Pooling", "ProbeHead"]


class Pooling(nn.Module):
    """A token pooling: tokens ``(B, N, D)`` -> pooled features ``(B, out_dim)``.

    Subclasses set ``kind`` (the registry name) and, when they have no attention map,
    ``attention_note`` (the reason, used in the error :meth:`attention` raises).
    """

    kind: ClassVar[str] = ""
    attention_note: ClassVar[str] = ""  # empty: the pooling has an attention map

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.out_dim = out_dim

    def pool(self, tokens: Tensor, **kwargs: Any) -> Tensor:
        """Pooled features ``(B, out_dim)``; the same as calling the module."""
        return self(tokens, **kwargs)

    def attention(self, tokens: Tensor) -> Tensor:
        """Attention weights ``(B, P, N')``, one row per attention predictor.

        Computing a map never updates BatchNorm running statistics, so it is safe to call in
        training mode between optimisation steps.

        Raises:
            HeadSpecError: the pooling has no attention map.
        """
        raise HeadSpecError(f"head kind {self.kind!r} has no attention map: {self.attention_note}")

    def _check(self, tokens: Tensor) -> tuple[int, int, int]:
        if tokens.ndim != 3 or tokens.shape[-1] != self.in_dim:
            raise HeadSpecError(
                f"{self.kind!r} head built for tokens (B, N, {self.in_dim}) got shape {tuple(tokens.shape)}"
            )
        B, N, D = tokens.shape
        return B, N, D


class ProbeHead(nn.Module):
    """``pooling -> BatchNorm1d(affine=False, eps=1e-6) -> Linear(width, C)``.

    The children are named as in the reference ``nn.Sequential``: ``0`` pooling, ``1`` BN,
    ``2`` classifier. A pooling without state (the linear probe's token selection) is kept
    under the name ``select`` instead, so it adds no keys and BN/classifier become ``0``/``1``,
    which is exactly the reference linear probe ``Sequential(BN, Linear)``.
    """

    def __init__(self, pooling: Pooling, classifier: nn.Linear, *, kind: str) -> None:
        super().__init__()
        if classifier.in_features != pooling.out_dim:
            raise HeadSpecError(f"classifier input width {classifier.in_features} != pooled width {pooling.out_dim}")
        stateless = not any(True for _ in pooling.parameters()) and not any(True for _ in pooling.buffers())
        self._names = ("select", "0", "1") if stateless else ("0", "1", "2")
        self.kind = kind
        self.add_module(self._names[0], pooling)
        self.add_module(self._names[1], nn.BatchNorm1d(pooling.out_dim, affine=False, eps=1e-6))
        self.add_module(self._names[2], classifier)

    @property
    def pooling(self) -> Pooling:
        """The pooling module (tokens -> pooled features)."""
        return self.get_submodule(self._names[0])  # type: ignore[return-value]

    @property
    def bn(self) -> nn.BatchNorm1d:
        """The non-affine BatchNorm between pooling and classifier."""
        return self.get_submodule(self._names[1])  # type: ignore[return-value]

    @property
    def classifier(self) -> nn.Linear:
        """The linear classifier."""
        return self.get_submodule(self._names[2])  # type: ignore[return-value]

    @property
    def width(self) -> int:
        """Width of the pooled features (the classifier's input)."""
        return self.pooling.out_dim

    @property
    def num_classes(self) -> int:
        """Number of classes (the classifier's output)."""
        return self.classifier.out_features

    def forward(self, tokens: Tensor, **pool_kwargs: Any) -> Tensor:
        """Logits ``(B, C)``; ``pool_kwargs`` go to the pooling (e.g. EP's ``uniform_queries``)."""
        return self.classifier(self.bn(self.pooling(tokens, **pool_kwargs)))

    def pool(self, tokens: Tensor, **pool_kwargs: Any) -> Tensor:
        """Pooled features ``(B, width)`` before BatchNorm."""
        return self.pooling(tokens, **pool_kwargs)

    def attention(self, tokens: Tensor) -> Tensor:
        """The pooling's attention weights ``(B, P, N')``; see :meth:`Pooling.attention`."""
        return self.pooling.attention(tokens)


def split_heads(t: Tensor, num_heads: int) -> Tensor:
    """``(B, L, H*dh) -> (B, H, L, dh)``: head h owns channels ``[h*dh, (h+1)*dh)``."""
    B, L, W = t.shape
    return t.reshape(B, L, num_heads, W // num_heads).transpose(1, 2)


def merge_heads(t: Tensor) -> Tensor:
    """``(B, H, L, dh) -> (B, L, H*dh)``, heads concatenated in order."""
    B, H, L, dh = t.shape
    return t.transpose(1, 2).reshape(B, L, H * dh)


def softmax_attention(q: Tensor, k: Tensor, scale: float) -> Tensor:
    """``softmax(q kᵀ · scale)`` over the key axis; ``q (..., Lq, d)``, ``k (..., Lk, d)``."""
    return (q @ k.transpose(-2, -1) * scale).softmax(dim=-1)


def check_heads(kind: str, dim: int, num_heads: int) -> None:
    """Reject a head count that does not split the width into equal heads."""
    if num_heads < 1 or dim % num_heads:
        raise HeadSpecError(f"{kind!r} head: width D={dim} is not divisible by num_heads={num_heads}")


def batch_norm_no_update(bn: nn.modules.batchnorm._BatchNorm, x: Tensor) -> Tensor:
    """``bn(x)`` in its current mode, but without touching the running statistics.

    Used when an attention map is requested in training mode: the map must be the one the
    forward would compute (batch statistics), yet asking for it must not count as a step.
    """
    use_batch_stats = bn.training or bn.running_mean is None
    return F.batch_norm(
        x,
        None if use_batch_stats else bn.running_mean,
        None if use_batch_stats else bn.running_var,
        bn.weight,
        bn.bias,
        training=use_batch_stats,
        momentum=0.0,
        eps=bn.eps,
    )


def square_side(kind: str, num_tokens: int) -> int:
    """Side of the square token grid that grid-based poolings (CBAM, DOLG) reshape to."""
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise HeadSpecError(f"{kind!r} head reshapes tokens to a square grid; N={num_tokens} is not square")
    return side


def trunc_normal_(t: Tensor, std: float, a: float = -2.0, b: float = 2.0) -> Tensor:
    """Truncated normal by inverse CDF, as timm/V-JEPA (and torch < 2.10) implement it.

    torch's own ``nn.init.trunc_normal_`` now rejection-samples, which draws a different
    number of random values; the reference weights were drawn this way, so seeded
    constructions only reproduce them with this exact recipe. ``a``/``b`` are absolute bounds.
    """
    with torch.no_grad():
        lo = (1.0 + math.erf(a / std / math.sqrt(2.0))) / 2.0
        hi = (1.0 + math.erf(b / std / math.sqrt(2.0))) / 2.0
        t.uniform_(2 * lo - 1, 2 * hi - 1)
        t.erfinv_()
        t.mul_(std * math.sqrt(2.0))
        return t.clamp_(min=a, max=b)


def trunc_normal_tf_(t: Tensor, std: float) -> Tensor:
    """timm's ``trunc_normal_tf_``: truncate at ±2 in standard-normal units, then scale by std."""
    with torch.no_grad():
        return trunc_normal_(t, std=1.0).mul_(std)


class Mlp(nn.Module):
    """``fc2(GELU(fc1(x)))`` with the reference key names ``fc1``/``fc2`` (exact-erf GELU)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))
