"""Reference poolers that reshape tokens to a square grid: CBAM and DOLG spatial attention.

Both come from CNN literature; they treat the N tokens as an ``S×S`` feature map (row-major)
and contain a BatchNorm2d whose running statistics update in training mode.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._base import Pooling, batch_norm_no_update, square_side
from ._infer import accept, need

__all__ = ["CBAMPooler", "DOLGPooler"]


def _to_grid(kind: str, tokens: Tensor) -> Tensor:
    B, N, D = tokens.shape
    side = square_side(kind, N)
    return tokens.transpose(1, 2).reshape(B, D, side, side)  # X[b, c, i, j] = x[b, i*S + j, c]


class _ChannelAttn(nn.Module):
    def __init__(self, dim: int, reduced: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, reduced, 1, bias=False)
        self.act = nn.ReLU()
        self.fc2 = nn.Conv2d(reduced, dim, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        avg = self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True))))
        mx = self.fc2(self.act(self.fc1(x.amax((2, 3), keepdim=True))))
        return x * torch.sigmoid(avg + mx)


class _ConvBN(nn.Module):
    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1)


class _SpatialAttn(nn.Module):
    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        self.conv = _ConvBN(kernel_size)

    def gate(self, x: Tensor, *, update_stats: bool) -> Tensor:
        """``σ(BN(conv([mean_c x; max_c x])))``, shape ``(B, 1, S, S)``."""
        s = self.conv.conv(torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1))
        s = self.conv.bn(s) if update_stats else batch_norm_no_update(self.conv.bn, s)
        return torch.sigmoid(s)


class CBAMPooler(Pooling):
    """CBAM "sort-of" pooling (``cbam``): channel gate, spatial gate, ``relu(gated + X)``, GAP.

    Channel gate: shared 1×1-conv MLP ``D -> D/16 -> D`` on avg- and max-pooled maps; spatial
    gate: 7×7 conv + BatchNorm2d on the channel mean/max. No token projection at all.
    Parameters ``D²/8 + 2k² + 2`` (``D²/8 + 100`` for k = 7).

    Args:
        dim: token width D.
        kernel_size: spatial conv kernel k.
        reduced: channel-MLP width (default ``round(D/16)``, timm's ``make_divisible``).
    """

    kind: ClassVar[str] = "cbam"

    def __init__(self, dim: int, *, kernel_size: int = 7, reduced: int | None = None) -> None:
        super().__init__(dim, dim)
        self.channel = _ChannelAttn(dim, reduced or max(1, int(dim / 16 + 0.5)))
        self.spatial = _SpatialAttn(kernel_size)

    def forward(self, tokens: Tensor) -> Tensor:
        self._check(tokens)
        x = _to_grid(self.kind, tokens)
        y = self.channel(x)
        y = y * self.spatial.gate(y, update_stats=True)
        return F.relu(y + x).mean((2, 3))

    def attention(self, tokens: Tensor) -> Tensor:
        """The spatial gate ``σ(s) ∈ (0, 1)`` per token, ``(B, 1, N)``; not normalised over tokens."""
        B, N, _ = self._check(tokens)
        y = self.channel(_to_grid(self.kind, tokens))
        return self.spatial.gate(y, update_stats=False).reshape(B, 1, N)

    @classmethod
    def config_from_state(cls, sd: Mapping[str, Tensor], **config: Any) -> dict[str, Any]:
        """``dim``/reduction from the channel MLP, kernel size from the spatial conv."""
        accept(cls.kind, config, ())
        reduced, dim = need(cls.kind, sd, "channel.fc1.weight", ndim=4).shape[:2]
        k = need(cls.kind, sd, "spatial.conv.conv.weight", ndim=4).shape[-1]
        return {"dim": dim, "kernel_size": k, "reduced": reduced}


class DOLGPooler(Pooling):
    """DOLG local-branch spatial attention (``dolg``): ``mean_ij softplus(s_ij) · Ẑ_ij``.

    ``Z = BN(conv1x1(X))``; ``Ẑ`` is Z L2-normalised over channels; ``s = conv1x1(relu(Z))``
    (D -> 1). ASPP is disabled as in the reference. Parameters ``D² + 4D + 1``.

    Args:
        dim: token width D.
    """

    kind: ClassVar[str] = "dolg"

    def __init__(self, dim: int) -> None:
        super().__init__(dim, dim)
        self.conv1 = nn.Conv2d(dim, dim, 1)
        self.bn = nn.BatchNorm2d(dim, eps=1e-5, momentum=0.1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(dim, 1, 1)
        self.softplus = nn.Softplus(beta=1.0, threshold=20.0)
        with torch.no_grad():  # ResNet-style init of the weights only; biases keep the default
            for conv in (self.conv1, self.conv2):
                conv.weight.normal_(0.0, math.sqrt(2.0 / conv.out_channels))

    def forward(self, tokens: Tensor) -> Tensor:
        B, _, D = self._check(tokens)
        z = self.bn(self.conv1(_to_grid(self.kind, tokens)))
        score = self.softplus(self.conv2(self.act1(z)))  # (B, 1, S, S)
        return (score * F.normalize(z, p=2, dim=1)).reshape(B, D, -1).mean(dim=-1)

    def attention(self, tokens: Tensor) -> Tensor:
        """The softplus score per token, ``(B, 1, N)``; positive, not normalised over tokens."""
        B, N, _ = self._check(tokens)
        z = batch_norm_no_update(self.bn, self.conv1(_to_grid(self.kind, tokens)))
        return self.softplus(self.conv2(self.act1(z))).reshape(B, 1, N)

    @classmethod
    def config_from_state(cls, sd: Mapping[str, Tensor], **config: Any) -> dict[str, Any]:
        """``dim`` from ``conv1.weight``."""
        accept(cls.kind, config, ())
        return {"dim": need(cls.kind, sd, "conv1.weight", ndim=4).shape[1]}
