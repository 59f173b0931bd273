"""Token selection for the linear probe: CLS, GAP of the patch tokens, or both concatenated."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from epcache.errors import HeadSpecError

from ._base import Pooling

__all__ = ["TOKEN_CHOICES", "TokenSelect"]

TOKEN_CHOICES: tuple[str, ...] = ("cls", "gap", "cls+gap")


class TokenSelect(Pooling):
    """Linear-probe "pooling": ``(B, N, D) -> (B, D)`` or ``(B, 2D)`` for ``cls+gap``.

    The store keeps prefix tokens (CLS, then registers) before the patch grid, so CLS is token 0
    and GAP is the mean over ``tokens[:, num_prefix:]`` (the reference ``pos`` feature). It has
    no parameters, so the linear head's state dict is the reference ``Sequential(BN, Linear)``.

    Args:
        dim: token width D.
        tokens: ``"cls"``, ``"gap"`` or ``"cls+gap"``.
        num_prefix: number of prefix tokens (CLS + registers) in front of the patch tokens.

    Raises:
        HeadSpecError: unknown ``tokens`` or a CLS is requested while ``num_prefix`` is 0.
    """

    kind: ClassVar[str] = "linear"
    attention_note: ClassVar[str] = "the linear probe reads CLS/GAP directly, nothing is attended"

    def __init__(self, dim: int, *, tokens: str = "cls", num_prefix: int = 0) -> None:
        if tokens not in TOKEN_CHOICES:
            raise HeadSpecError(f"linear head tokens must be one of {TOKEN_CHOICES}, got {tokens!r}")
        if num_prefix < 0:
            raise HeadSpecError(f"num_prefix must be >= 0, got {num_prefix}")
        if "cls" in tokens and num_prefix < 1:
            raise HeadSpecError(
                f"linear head tokens={tokens!r} needs a CLS token, but num_prefix={num_prefix}; "
                "use tokens='gap' for encoders without CLS"
            )
        super().__init__(dim, 2 * dim if tokens == "cls+gap" else dim)
        self.tokens = tokens
        self.num_prefix = num_prefix

    def forward(self, tokens: Tensor) -> Tensor:
        _, N, _ = self._check(tokens)
        if self.num_prefix >= N:
            raise HeadSpecError(f"linear head got {N} tokens but num_prefix={self.num_prefix}: no patch tokens")
        if self.tokens == "cls":
            return tokens[:, 0]
        gap = tokens[:, self.num_prefix :].mean(dim=1)
        if self.tokens == "gap":
            return gap
        return torch.cat([tokens[:, 0], gap], dim=-1)

    def extra_repr(self) -> str:
        return f"tokens={self.tokens!r}, num_prefix={self.num_prefix}"

    @classmethod
    def config_from_state(cls, sd: Mapping[str, Tensor], **config: Any) -> dict[str, Any]:
        """Linear probes have no pooling tensors; only ``tokens``/``num_prefix`` (config) matter."""
        raise HeadSpecError("the linear probe has no pooling state dict; pass the full head (0.*, 1.*)")
