"""Reference poolers whose query comes from the tokens: SimPool, eSimPool, AbMILP, DINOv2 block, CLIP.

Same forwards, key names and construction order as the official EP repository (docs/EP_SPEC.md §3,
vectors README §3).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from epcache.errors import HeadSpecError

from ._base import Mlp, Pooling, check_heads, merge_heads, softmax_attention, split_heads, trunc_normal_
from ._infer import accept, need

__all__ = ["ABMILPPooler", "CLIPPooler", "DinoViTPooler", "ESimPoolPooler", "SimPoolPooler"]


class SimPoolPooler(Pooling):
    """SimPool (``simpool``): the GAP of the raw tokens queries ``LN(X)``; values are ``LN(X)``.

    One head, ``W_q``/``W_k`` without bias, no value projection, γ (GeM) disabled.
    Parameters ``2D² + 2D``. Unlike the reference's ``.squeeze()``, a batch of one stays ``(1, D)``.

    Args:
        dim: token width D.
    """

    kind: ClassVar[str] = "simpool"

    def __init__(self, dim: int) -> None:
        super().__init__(dim, dim)
        self.scale = dim**-0.5
        self.norm_patches = nn.LayerNorm(dim, eps=1e-6)
        self.wq = nn.Linear(dim, dim, bias=False)
        self.wk = nn.Linear(dim, dim, bias=False)

    def forward(self, tokens: Tensor) -> Tensor:
        self._check(tokens)
        attn, xn = self._attention(tokens)
        return (attn @ xn)[:, 0]

    def attention(self, tokens: Tensor) -> Tensor:
        """Weights of the GAP query, ``(B, 1, N)``."""
        self._check(tokens)
        return self._attention(tokens)[0]

    def _attention(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        xn = self.norm_patches(tokens)
        q = self.wq(tokens.mean(dim=1, keepdim=True))  # (B, 1, D), from the raw tokens
        return softmax_attention(q, self.wk(xn), self.scale), xn

    @classmethod
    def config_from_state(cls, sd: Mapping[str, Tensor], **config: Any) -> dict[str, Any]:
        """``dim`` from ``wq.weight``."""
        accept(cls.kind, config, ())
        return {"dim": need(cls.kind, sd, "wq.weight", ndim=2).shape[1]}


class ESimPoolPooler(Pooling):
    """eSimPool / ``SimPool_nolinears`` (``esimpool``): ``MHA(LN(GAP X), LN(X), X)`` without projections.

    The same LayerNorm serves query and keys; values are the raw tokens. Parameters ``2D``.

    Args:
        dim: token width D.
        num_heads: heads (reference 12); D must be divisible by it.
    """

    kind: ClassVar[str] = "esimpool"

    def __init__(self, dim: int, *, num_heads: int = 12) -> None:
        check_heads(self.kind, dim, num_heads)
        super().__init__(dim, dim)
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.norm_patches = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, tokens: Tensor) -> Tensor:
        self._check(tokens)
        v = split_heads(tokens, self.num_heads)
        return merge_heads(self._attention(tokens) @ v)[:, 0]

    def attention(self, tokens: Tensor) -> Tensor:
        """Per-head weights of the GAP query, ``(B, H, N)``."""
        self._check(tokens)
        return self._attention(tokens)[:, :, 0]

    def _attention(self, tokens: Tensor) -> Tensor:
        q = split_heads(self.norm_patches(tokens.mean(dim=1, keepdim=True)), self.num_heads)
        k = split_heads(self.norm_patches(tokens), self.num_heads)
        return softmax_attention(q, k, self.scale)

    @classmethod
    def config_from_state(cls, sd: Mapping[str, Tensor], **config: Any) -> dict[str, Any]:
        """``dim`` from the LayerNorm; ``num_heads`` is config (reference 12)."""
        accept(cls.kind, config, ("num_heads",))
        return {
            "dim": need(cls.kind, sd, "norm_patches.weight", ndim=1).shape[0],
            "num_heads": config.get("num_heads", 12),
        }


class _SelfAttention(nn.Module):
    """timm/models_vit ``Attention``: qkv without bias, proj with bias."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Output ``(B, N, D)`` and weights ``(B, H, N, N)``."""
        q, k, v = (split_heads(t, self.num_heads) for t in self.qkv(x).chunk(3, dim=-1))
        attn = softmax_attention(q, k, self.scale)
        return self.proj(merge_heads(attn @ v)), attn


class ABMILPPooler(Pooling):
    """AbMILP (``abmilp``): MLP-predicted softmax weights over (self-attended) tokens.

    ``s = SA(X)`` (one head); ``w = softmax_n(MLP(s or X))``; ``y = Σ_n w_n (s or X)_n``. With
    the reference defaults (``self_attention_apply_to="both"``, tanh, depth 2) the self-attended
    tokens feed both the predictor and the sum. Parameters ``5D² + 3D + 1`` at the defaults.

    Args:
        dim: token width D.
        self_attention_apply_to: ``"none"``, ``"map"`` (predictor input only) or ``"both"``.
        activation: ``"tanh"`` or ``"relu"`` between the predictor's Linear layers.
        depth: number of Linear layers in the predictor.
    """

    kind: ClassVar[str] = "abmilp"

    def __init__(
        self, dim: int, *, self_attention_apply_to: str = "both", activation: str = "tanh", depth: int = 2
    ) -> None:
        if self_attention_apply_to not in ("none", "map", "both"):
            raise HeadSpecError(
                f"abmilp self_attention_apply_to must be none/map/both, got {self_attention_apply_to!r}"
            )
        if activation not in ("tanh", "relu") or depth < 1:
            raise HeadSpecError(f"abmilp needs activation tanh/relu and depth >= 1, got {activation!r}, {depth}")
        super().__init__(dim, dim)
        self.self_attention_apply_to = self_attention_apply_to
        self.self_attn = _SelfAttention(dim, 1) if self_attention_apply_to != "none" else None
        layers: list[nn.Module] = []
        for _ in range(depth - 1):
            layers += [nn.Linear(dim, dim), nn.Tanh() if activation == "tanh" else nn.ReLU()]
        layers.append(nn.Linear(dim, 1))
        self.attention_predictor = nn.Sequential(*layers)

    def forward(self, tokens: Tensor) -> Tensor:
        self._check(tokens)
        weights, content = self._weights(tokens)
        return (content * weights).sum(dim=1)

    def attention(self, tokens: Tensor) -> Tensor:
        """The pooling weights ``w``, ``(B, 1, N)``."""
        self._check(tokens)
        return self._weights(tokens)[0].transpose(1, 2)

    def self_attention_map(self, tokens: Tensor) -> Tensor:
        """The token self-attention, ``(B, 1, N, N)``.

        Raises:
            HeadSpecError: built with ``self_attention_apply_to="none"``.
        """
        self._check(tokens)
        if self.self_attn is None:
            raise HeadSpecError("abmilp built with self_attention_apply_to='none' has no self-attention")
        return self.self_attn(tokens)[1]

    def _weights(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        s = tokens if self.self_attn is None else self.self_attn(tokens)[0]
        scores = self.attention_predictor(s if self.self_attention_apply_to in ("map", "both") else tokens)
        content = s if self.self_attention_apply_to == "both" else tokens
        return scores.softmax(dim=1), content  # (B, N, 1) weights over tokens

    @classmethod
    def config_from_state(cls, sd: Mapping[str, Tensor], **config: Any) -> dict[str, Any]:
        """``dim``/depth from the predictor; "map" vs "both" and the activation are config."""
        accept(cls.kind, config, ("self_attention_apply_to", "activation"))
        linears = [k for k in sd if k.startswith("attention_predictor.") and k.endswith(".weight")]
        if not linears:
            need(cls.kind, sd, "attention_predictor.0.weight")
        dim = sd[sorted(linears)[0]].shape[1]
        has_sa = any(k.startswith("self_attn.") for k in sd)
        return {
            "dim": dim,
            "self_attention_apply_to": config.get("self_attention_apply_to", "both" if has_sa else "none"),
            "activation": config.get("activation", "tanh"),
            "depth": len(linears),
        }


class _DinoBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _SelfAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))[0]
        return x + self.mlp(self.norm2(x))


class DinoViTPooler(Pooling):
    """One DINOv2 transformer block over all tokens, then GAP (``dinovit``).

    Full N×N self-attention plus a token-wise MLP: by far the most expensive head. It has no
    single attention map (every token attends), so :meth:`attention` raises.
    Parameters ``12D² + 10D``.

    Args:
        dim: token width D.
        num_heads: heads (constructor default 8).
        mlp_ratio: MLP hidden width / D.
    """

    kind: ClassVar[str] = "dinovit"
    attention_note: ClassVar[str] = "full self-attention followed by GAP; no attention predictor pools the tokens"

    def __init__(self, dim: int, *, num_heads: int = 8, mlp_ratio: float = 4.0) -> None:
        check_heads(self.kind, dim, num_heads)
        super().__init__(dim, dim)
        self.dino_block = _DinoBlock(dim, num_heads, mlp_ratio)

    def forward(self, tokens: Tensor) -> Tensor:
        self._check(tokens)
        return self.dino_block(tokens).mean(dim=1)

    @classmethod
    def config_from_state(cls, sd: Mapping[str, Tensor], **config: Any) -> dict[str, Any]:
        """``dim`` and MLP width from tensors; ``num_heads`` is config (default 8)."""
        accept(cls.kind, config, ("num_heads",))
        D = need(cls.kind, sd, "dino_block.norm1.weight", ndim=1).shape[0]
        hidden = need(cls.kind, sd, "dino_block.mlp.fc1.weight", ndim=2).shape[0]
        return {"dim": D, "num_heads": config.get("num_heads", 8), "mlp_ratio": hidden / D}


class CLIPPooler(Pooling):
    """CLIP ``AttentionPool2d`` (``clip``): self-attention over ``[mean; LN(X)] + pos``, keep token 0.

    The learned absolute position table has ``N+1`` rows, so the head only accepts exactly the
    ``num_tokens`` it was built for (196 = 14×14 at ViT-B/16; CAPI uses 256). All N+1 outputs
    are computed, as in the reference. Parameters ``4D² + (N+7)D``.

    Args:
        dim: token width D.
        num_tokens: number of input tokens N.
        num_heads: heads (constructor default 4).
    """

    kind: ClassVar[str] = "clip"

    def __init__(self, dim: int, *, num_tokens: int = 196, num_heads: int = 4) -> None:
        check_heads(self.kind, dim, num_heads)
        super().__init__(dim, dim)
        self.num_tokens = num_tokens
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.pos_embed = nn.Parameter(torch.zeros(num_tokens + 1, dim))
        trunc_normal_(self.pos_embed, std=dim**-0.5)
        trunc_normal_(self.qkv.weight, std=dim**-0.5)
        nn.init.zeros_(self.qkv.bias)
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, tokens: Tensor) -> Tensor:
        attn, v = self._attention(tokens)
        return self.proj(merge_heads(attn @ v))[:, 0]

    def attention(self, tokens: Tensor) -> Tensor:
        """Per-head weights of token 0 (the mean token) over all ``N+1`` tokens, ``(B, H, N+1)``;
        key 0 is the mean token itself."""
        return self._attention(tokens)[0][:, :, 0]

    def _attention(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        _, N, _ = self._check(tokens)
        if self.num_tokens != N:
            raise HeadSpecError(f"'clip' head has a position table for N={self.num_tokens} tokens, got N={N}")
        xn = self.norm(tokens)
        t = torch.cat([xn.mean(dim=1, keepdim=True), xn], dim=1) + self.pos_embed
        q, k, v = (split_heads(p, self.num_heads) for p in self.qkv(t).chunk(3, dim=-1))
        return softmax_attention(q, k, self.scale), v

    @classmethod
    def config_from_state(cls, sd: Mapping[str, Tensor], **config: Any) -> dict[str, Any]:
        """``dim`` and ``num_tokens`` from ``pos_embed`` (N+1, D); ``num_heads`` is config (default 4)."""
        accept(cls.kind, config, ("num_heads",))
        rows, D = need(cls.kind, sd, "pos_embed", ndim=2).shape
        return {"dim": D, "num_tokens": rows - 1, "num_heads": config.get("num_heads", 4)}
