"""The linear probe's input when the reader already computed the vector (pooled output, layer concat)."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from epcache.errors import HeadSpecError

from ._base import Pooling

__all__ = ["VectorInput"]


class VectorInput(Pooling):
    """Stateless linear-probe "pooling" over a ready vector ``(B, W) -> (B, W)``.

    The fused trainer hands linear heads the selected vector (CLS, GAP, the DINOv2 concatenation
    of several layers, the model's pooled output) instead of the token sequence, so the head is
    ``VectorInput -> BN -> Linear`` with the reference ``Sequential(BN, Linear)`` state dict.
    """

    kind: ClassVar[str] = "linear"
    attention_note: ClassVar[str] = "the linear probe reads a vector directly, nothing is attended"

    def __init__(self, width: int) -> None:
        super().__init__(width, width)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 2 or x.shape[-1] != self.in_dim:
            raise HeadSpecError(f"linear head built for vectors (B, {self.in_dim}) got shape {tuple(x.shape)}")
        return x
