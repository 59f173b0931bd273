"""Reference learned-query cross-attention poolers: V-JEPA, SigLIP MAP, AIM, CAE, CaiT, CoCa.

Each class reproduces one pooling of the official EP repository (docs/EP_SPEC.md §2-3, vectors README
§3): same forward, same state-dict key names and the same construction/initialisation order,
so a seeded construction draws the same numbers as the reference. Attention is computed
explicitly (not with fused SDPA) so the weights can be returned by ``attention()``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from epcache.errors import HeadSpecError

from ._base import (
    Mlp,
    Pooling,
    batch_norm_no_update,
    check_heads,
    merge_heads,
    softmax_attention,
    split_heads,
    trunc_normal_,
    trunc_normal_tf_,
)
from ._infer import accept, need

__all__ = ["AIMPooler", "CAEPooler", "JEPAPooler", "SigLIPPooler"]


# --------------------------------------------------------------------------------------- V-JEPA


class _JEPACrossAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def attention(self, q: Tensor, xn: Tensor) -> tuple[Tensor, Tensor]:
        """Weights ``(B, H, Lq, N)`` and values ``(B, H, N, dh)``."""
        k, v = self.kv(xn).chunk(2, dim=-1)  # first D channels are K, next D are V
        qh = split_heads(self.q(q), self.num_heads)
        return softmax_attention(qh, split_heads(k, self.num_heads), self.scale), split_heads(v, self.num_heads)


class _JEPABlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.xattn = _JEPACrossAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))


class JEPAPooler(Pooling):
    """V-JEPA attentive pooler (``jepa``): ``q += XAttn(q, LN(X))``; ``q += MLP(LN(q))``.

    Only the tokens are layer-normed, not the query. Parameters ``12D² + 14D``.

    Args:
        dim: token width D.
        num_heads: heads of the cross-attention (reference ``--num_heads``, default 16).
        mlp_ratio: MLP hidden width / D.
    """

    kind: ClassVar[str] = "jepa"

    def __init__(self, dim: int, *, num_heads: int = 16, mlp_ratio: float = 4.0) -> None:
        check_heads(self.kind, dim, num_heads)
        super().__init__(dim, dim)
        self.query_tokens = nn.Parameter(torch.zeros(1, 1, dim))
        self.cross_attention_block = _JEPABlock(dim, num_heads, mlp_ratio)
        # Reference init order: query, then every Linear/LayerNorm in registration order, then
        # the residual-branch output weights shrink by sqrt(2) (layer id 1).
        with torch.no_grad():
            trunc_normal_(self.query_tokens, std=0.02)
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    trunc_normal_(m.weight, std=0.02)
                    nn.init.zeros_(m.bias)
                elif isinstance(m, nn.LayerNorm):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
            self.cross_attention_block.xattn.proj.weight.div_(math.sqrt(2.0))
            self.cross_attention_block.mlp.fc2.weight.div_(math.sqrt(2.0))

    def forward(self, tokens: Tensor) -> Tensor:
        B, _, _ = self._check(tokens)
        blk = self.cross_attention_block
        q = self.query_tokens.expand(B, -1, -1)
        attn, v = blk.xattn.attention(q, blk.norm1(tokens))
        q = q + blk.xattn.proj(merge_heads(attn @ v))
        q = q + blk.mlp(blk.norm2(q))
        return q[:, 0]

    def attention(self, tokens: Tensor) -> Tensor:
        """Per-head weights of the query over the tokens, ``(B, H, N)``."""
        B, _, _ = self._check(tokens)
        blk = self.cross_attention_block
        return blk.xattn.attention(self.query_tokens.expand(B, -1, -1), blk.norm1(tokens))[0][:, :, 0]

    @classmethod
    def config_from_state(cls, sd: Mapping[str, Tensor], **config: Any) -> dict[str, Any]:
        """``dim`` and MLP width from tensors; ``num_heads`` is config (reference default 16)."""
        accept(cls.kind, config, ("num_heads",))
        _, Q, D = need(cls.kind, sd, "query_tokens", ndim=3).shape
        if Q != 1:
            raise HeadSpecError(f"'jepa' with {Q} query tokens is not supported (the probe uses 1)")
        hidden = need(cls.kind, sd, "cross_attention_block.mlp.fc1.weight", ndim=2).shape[0]
        return {"dim": D, "num_heads": config.get("num_heads", 16), "mlp_ratio": hidden / D}


# ------------------------------------------------------------------------------------- SigLIP


class SigLIPPooler(Pooling):
    """SigLIP MAP head (timm ``AttentionPoolLatent``, ``siglip``): ``o = MHA(latent, X)``; ``o + MLP(o)``.

    Tokens are not normalised, the norm before the MLP is Identity and there is no residual from
    the latent. Parameters ``12D² + 10D``.

    Args:
        dim: token width D.
        num_heads: heads (the constructor default 8; the reference does not pass ``--num_heads``).
        mlp_ratio: MLP hidden width / D.
    """

    kind: ClassVar[str] = "siglip"

    def __init__(self, dim: int, *, num_heads: int = 8, mlp_ratio: float = 4.0) -> None:
        check_heads(self.kind, dim, num_heads)
        super().__init__(dim, dim)
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.latent = nn.Parameter(torch.zeros(1, 1, dim))
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        trunc_normal_tf_(self.latent, std=dim**-0.5)

    def forward(self, tokens: Tensor) -> Tensor:
        self._check(tokens)
        attn, v = self._attention(tokens)
        o = self.proj(merge_heads(attn @ v))
        return (o + self.mlp(o))[:, 0]

    def attention(self, tokens: Tensor) -> Tensor:
        """Per-head weights of the latent, ``(B, H, N)``."""
        self._check(tokens)
        return self._attention(tokens)[0][:, :, 0]

    def _attention(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        q = split_heads(self.q(self.latent).expand(tokens.shape[0], -1, -1), self.num_heads)
        k, v = self.kv(tokens).chunk(2, dim=-1)
        k, v = split_heads(k, self.num_heads), split_heads(v, self.num_heads)
        return softmax_attention(q, k, self.scale), v

    @classmethod
    def config_from_state(cls, sd: Mapping[str, Tensor], **config: Any) -> dict[str, Any]:
        """``dim`` and MLP width from tensors; ``num_heads`` is config (default 8)."""
        accept(cls.kind, config, ("num_heads",))
        _, L, D = need(cls.kind, sd, "latent", ndim=3).shape
        if L != 1:
            raise HeadSpecError(f"'siglip' with latent_len={L} is not supported (the probe uses 1)")
        hidden = need(cls.kind, sd, "mlp.fc1.weight", ndim=2).shape[0]
        return {"dim": D, "num_heads": config.get("num_heads", 8), "mlp_ratio": hidden / D}


# ---------------------------------------------------------------------------------------- AIM


class AIMPooler(Pooling):
    """AIM attention-pooling classifier (``aim``): BN over tokens, then ``MHA(q, X W_K, X W_V)``.

    No query, output or bias projections; outputs of several queries are averaged. The internal
    BatchNorm (affine=False) normalises each channel over batch and tokens. Parameters ``2D² + M·D``.

    Args:
        dim: token width D.
        num_heads: heads (reference ``--num_heads``, default 16).
        queries: learned queries, averaged at the output (the reference uses 1).
    """

    kind: ClassVar[str] = "aim"

    def __init__(self, dim: int, *, num_heads: int = 16, queries: int = 1) -> None:
        check_heads(self.kind, dim, num_heads)
        super().__init__(dim, dim)
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.cls_token = nn.Parameter(torch.randn(1, queries, dim) * 0.02)
        self.bn = nn.BatchNorm1d(dim, affine=False, eps=1e-6)

    def forward(self, tokens: Tensor) -> Tensor:
        self._check(tokens)
        xb = self.bn(tokens.transpose(1, 2)).transpose(1, 2)  # stats over batch and tokens
        attn = self._attention(xb)  # (B, H, M, N)
        return merge_heads(attn @ split_heads(self.v(xb), self.num_heads)).mean(dim=1)

    def attention(self, tokens: Tensor) -> Tensor:
        """Per-(query, head) weights, ``(B, M·H, N)`` (query-major); ``(B, H, N)`` for one query."""
        B, N, _ = self._check(tokens)
        xb = batch_norm_no_update(self.bn, tokens.transpose(1, 2)).transpose(1, 2)
        return self._attention(xb).transpose(1, 2).reshape(B, -1, N)

    def _attention(self, xb: Tensor) -> Tensor:
        q = split_heads(self.cls_token.expand(xb.shape[0], -1, -1), self.num_heads)
        return softmax_attention(q, split_heads(self.k(xb), self.num_heads), self.scale)

    @classmethod
    def config_from_state(cls, sd: Mapping[str, Tensor], **config: Any) -> dict[str, Any]:
        """``dim``/``queries`` from ``cls_token``; ``num_heads`` is config (reference default 16)."""
        accept(cls.kind, config, ("num_heads",))
        _, M, D = need(cls.kind, sd, "cls_token", ndim=3).shape
        return {"dim": D, "num_heads": config.get("num_heads", 16), "queries": M}


# ---------------------------------------------------------------------------------------- CAE


class _CAECrossAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim)


class CAEPooler(Pooling):
    """CAE attentive block (``cae``): ``proj(MHA(LN_q(query), LN_k(X), LN_v(X)))``.

    The query starts at zero, so attention is exactly uniform at init. ``norm2_cross`` is never
    used but is trainable and counted, as in the reference. Parameters ``4D² + 10D``.

    Args:
        dim: token width D.
        num_heads: heads (constructor default 8).
    """

    kind: ClassVar[str] = "cae"

    def __init__(self, dim: int, *, num_heads: int = 8) -> None:
        check_heads(self.kind, dim, num_heads)
        super().__init__(dim, dim)
        self.query_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.norm1_q = nn.LayerNorm(dim)
        self.norm1_k = nn.LayerNorm(dim)
        self.norm1_v = nn.LayerNorm(dim)
        self.norm2_cross = nn.LayerNorm(dim)
        self.cross_attn = _CAECrossAttention(dim, num_heads)

    def forward(self, tokens: Tensor) -> Tensor:
        self._check(tokens)
        ca = self.cross_attn
        v = split_heads(ca.v(self.norm1_v(tokens)), ca.num_heads)
        return ca.proj(merge_heads(self._attention(tokens) @ v))[:, 0]

    def attention(self, tokens: Tensor) -> Tensor:
        """Per-head weights of the query, ``(B, H, N)``."""
        self._check(tokens)
        return self._attention(tokens)[:, :, 0]

    def _attention(self, tokens: Tensor) -> Tensor:
        ca = self.cross_attn
        q = ca.q(self.norm1_q(self.query_token)).expand(tokens.shape[0], -1, -1)
        k = ca.k(self.norm1_k(tokens))
        return softmax_attention(split_heads(q, ca.num_heads), split_heads(k, ca.num_heads), ca.scale)

    @classmethod
    def config_from_state(cls, sd: Mapping[str, Tensor], **config: Any) -> dict[str, Any]:
        """``dim`` from ``query_token``; ``num_heads`` is config (default 8)."""
        accept(cls.kind, config, ("num_heads",))
        return {"dim": need(cls.kind, sd, "query_token", ndim=3).shape[-1], "num_heads": config.get("num_heads", 8)}


# --------------------------------------------------------------------------------------- CaiT
