"""Moment Probing (MP, Gao et al., ICCV 2023), docs/PROBE_FAMILIES.md §1.1: first- plus second-order moments.

Logits are ``(classifier1(first) + classifier2(LRA(cross-covariances)))/2`` where ``first`` is the
CLS token (GAP of the patches for encoders without one) and the second-order term is built from
the patch tokens only: a projection to ``hidden`` channels split into ``num_heads`` slices, one
shared LayerNorm per slice, one scalar mean removed per image and slice, the cross-covariance of
every adjacent pair of slices with unit-norm columns, then two 3x3 stride-2 convolutions.

The reference (``Moment_Probing_ViT``) hard-wires 4 heads of width 128 (3 covariance maps, 2883
features); here the conv channels and ``classifier2`` width follow from ``(num_heads, hidden)``,
so the defaults give exactly the reference module and its state-dict keys (``proj``, ``ln``,
``classifier1``, ``classifier2``, ``downblocks.0.0``, ``downblocks.0.2``). MP keeps its own
structure: it is not wrapped in the ``pooling -> BN -> Linear`` head of the EP family.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from epcache.errors import HeadSpecError

from ._infer import accept, need

__all__ = ["MomentProbing", "mp_feature_size"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def mp_feature_size(hidden: int, num_heads: int) -> int:
    """Width of the flattened LRA output: ``(H-1)·s²`` with ``s`` the side after two 3x3/2 convs.

    ``(512, 4)`` gives the reference 2883 = 3·31·31; ``(512, 2)`` 3969; ``(512, 8)`` 1575.
    """
    side = hidden // num_heads
    for _ in range(2):
        side = (side - 3) // 2 + 1
    return (num_heads - 1) * side * side


class MomentProbing(nn.Module):
    """MP head: tokens ``(B, N, D)`` -> logits ``(B, C)``.

    The first ``num_prefix`` tokens are prefix tokens (CLS first, then registers). CLS is the
    first-order term; the covariances use tokens ``[num_prefix:]`` only, so registers never enter
    them (docs/PROBE_FAMILIES.md §1.7). With ``num_prefix=0`` the first-order term is the GAP of the
    patches. ``from_reference("mp", sd)`` builds it with ``num_prefix=1``: called on the
    reference input ``[B, 1+P, D]`` it returns the reference logits.

    The LayerNorm, mean removal, covariances and column norms always run in at least float32:
    in bf16 the norms of nearly constant columns are noise (docs/PROBE_FAMILIES.md §1.7).

    Args:
        dim: token width D.
        num_classes: C.
        hidden: projection width (reference 512).
        num_heads: slices of the projection (reference 4); ``hidden/num_heads`` must be >= 7 so
            two 3x3 stride-2 convolutions leave at least one pixel.
        num_prefix: prefix tokens in front of the patches.

    Raises:
        HeadSpecError: shapes the convolutions cannot take.
    """

    kind: ClassVar[str] = "mp"

    def __init__(self, dim: int, num_classes: int, *, hidden: int = 512, num_heads: int = 4, num_prefix: int = 1):
        super().__init__()
        if num_heads < 2 or hidden % num_heads:
            raise HeadSpecError(f"'mp' head needs num_heads >= 2 dividing hidden={hidden}, got num_heads={num_heads}")
        if hidden // num_heads < 7:
            raise HeadSpecError(
                f"'mp' head: slice width hidden/num_heads = {hidden // num_heads} is below 7, too small for two "
                "3x3 stride-2 convolutions; raise hidden or lower num_heads"
            )
        if num_prefix < 0:
            raise HeadSpecError(f"num_prefix must be >= 0, got {num_prefix}")
        self.in_dim = dim
        self.hidden = hidden
        self.num_heads = num_heads
        self.num_prefix = num_prefix
        c = num_heads - 1  # adjacent pairs ("near"): one covariance map each
        # Construction order of the reference: proj, ln, classifier1, classifier2, downblocks.
        self.proj = nn.Linear(dim, hidden)
        self.ln = nn.LayerNorm(hidden // num_heads)  # eps 1e-5, shared by every slice
        self.classifier1 = nn.Linear(dim, num_classes)
        self.classifier2 = nn.Linear(mp_feature_size(hidden, num_heads), num_classes)
        self.downblocks = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(c, c, kernel_size=3, stride=2, padding=0, bias=False),
                    nn.GELU(),
                    nn.Conv2d(c, c, kernel_size=3, stride=2, padding=0, bias=False),
                )
            ]
        )
        # init_weights_vit_timm on the Linears (convs keep torch's default), drawn with torch's
        # trunc_normal_ in module order: under the same seed this reproduces the reference weights.
        for m in (self.proj, self.classifier1, self.classifier2):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    @property
    def num_classes(self) -> int:
        return self.classifier1.out_features

    @property
    def pooling(self) -> nn.ModuleList:
        """The second-order path without the classifiers (projection, LayerNorm, convs): for cost tables."""
        return nn.ModuleList([self.proj, self.ln, self.downblocks])

    def first_order(self, tokens: Tensor) -> Tensor:
        """CLS (token 0) when there is a prefix, else GAP of the patches: ``(B, D)``."""
        self._check(tokens)
        return tokens[:, 0] if self.num_prefix else tokens.mean(dim=1)

    def covariances(self, tokens: Tensor) -> Tensor:
        """Column-normalised adjacent cross-covariances ``(B, H-1, d, d)``, float32 or wider."""
        B = self._check(tokens)[0]
        z = self.proj(tokens[:, self.num_prefix :])  # (B, P, hidden)
        P = z.shape[1]
        if z.dtype in _LOW_PRECISION:
            z = z.float()
        off = z.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(z.device.type)
        with torch.autocast(device_type=z.device.type, enabled=False) if off else contextlib.nullcontext():
            d = self.hidden // self.num_heads
            w, b = self.ln.weight.to(z.dtype), self.ln.bias.to(z.dtype)
            zn = F.layer_norm(z.view(B, P, self.num_heads, d), (d,), w, b, self.ln.eps)  # (B, P, H, d)
            zn = zn - zn.mean(dim=(1, 3), keepdim=True)  # one scalar per image and slice (reference)
            cov = torch.einsum("bphi,bphj->bhij", zn[:, :, :-1], zn[:, :, 1:]) / P  # (B, H-1, d, d)
            return F.normalize(cov, dim=2)  # every column j has unit norm

    def second_order(self, tokens: Tensor) -> Tensor:
        """The LRA features ``(B, F)`` fed to ``classifier2``."""
        cov = self.covariances(tokens).to(self.classifier2.weight.dtype)
        for layer in self.downblocks:
            cov = layer(cov)
        return cov.flatten(1)

    def forward(self, tokens: Tensor) -> Tensor:
        """Logits ``(B, C)`` = mean of the first- and second-order classifiers."""
        return (self.classifier1(self.first_order(tokens)) + self.classifier2(self.second_order(tokens))) / 2

    def attention(self, tokens: Tensor) -> Tensor:
        """MP attends nothing.

        Raises:
            HeadSpecError: always.
        """
        raise HeadSpecError("head kind 'mp' has no attention map: it pools by moments (CLS and covariances)")

    def _check(self, tokens: Tensor) -> tuple[int, int, int]:
        if tokens.ndim != 3 or tokens.shape[-1] != self.in_dim:
            raise HeadSpecError(f"'mp' head built for tokens (B, N, {self.in_dim}) got shape {tuple(tokens.shape)}")
        B, N, D = tokens.shape
        if self.num_prefix >= N:
            raise HeadSpecError(f"'mp' head got {N} tokens but num_prefix={self.num_prefix}: no patch tokens")
        return B, N, D

    @classmethod
    def config_from_state(cls, sd: Mapping[str, Tensor], **config: Any) -> dict[str, Any]:
        """Constructor arguments from the reference keys; ``num_prefix`` (default 1) from config."""
        accept(cls.kind, config, ("num_prefix",))
        hidden, dim = need(cls.kind, sd, "proj.weight", ndim=2).shape
        d = need(cls.kind, sd, "ln.weight", ndim=1).shape[0]
        C = need(cls.kind, sd, "classifier1.weight", ndim=2).shape[0]
        if d == 0 or hidden % d:
            raise HeadSpecError(f"'mp' state dict: ln.weight width {d} does not divide proj width {hidden}")
        return {
            "dim": dim,
            "num_classes": C,
            "hidden": hidden,
            "num_heads": hidden // d,
            "num_prefix": int(config.get("num_prefix", 1)),
        }
