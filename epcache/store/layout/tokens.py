"""Token selectors over ``[..., T, D]`` arrays and zero-copy numpy <-> torch conversion.

Selectors are computed at read time from the stored token layout, so one store serves LP on
CLS, LP on GAP, EP on patches and EP on all tokens without re-extraction (the token layout of cache_layout.md §2.1).
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Any

import ml_dtypes
import numpy as np

from epcache.errors import ConfigError
from epcache.store.layout.meta import TokenLayout

if TYPE_CHECKING:
    import torch

__all__ = ["TokenSelector", "from_torch", "select_tokens", "to_torch"]


class TokenSelector(StrEnum):
    """Which tokens a probe reads."""

    CLS = "cls"  # the CLS token, [..., D]
    PATCH = "patch"  # patch tokens only, [..., h*w, D] (EP's default input)
    ALL = "all"  # prefix + patches, [..., T, D] (EP's `ep_all`)
    REGISTERS = "registers"  # register tokens, [..., R, D]
    GAP = "gap"  # mean over patch tokens, [..., D]


def select_tokens(x: Any, layout: TokenLayout, selector: str | TokenSelector) -> Any:
    """Apply a selector to numpy arrays or torch tensors shaped ``[..., T, D]``.

    Raises:
        ConfigError: unknown selector, or CLS/registers asked of a model that has none.
    """
    try:
        sel = TokenSelector(selector)
    except ValueError:
        raise ConfigError(
            f"unknown token selector {selector!r}; use one of {', '.join(s.value for s in TokenSelector)}"
        ) from None
    if sel is TokenSelector.ALL:
        return x
    if sel is TokenSelector.PATCH:
        return x[..., layout.num_prefix :, :]
    if sel is TokenSelector.GAP:
        patches = x[..., layout.num_prefix :, :]
        if isinstance(patches, np.ndarray):
            return patches.astype(np.float32).mean(axis=-2)
        return patches.float().mean(dim=-2)
    if sel is TokenSelector.CLS:
        if layout.cls_index is None:
            raise ConfigError("this store's backbone has no CLS token; use --tokens gap or patch")
        return x[..., layout.cls_index, :]
    if layout.num_registers == 0:
        raise ConfigError("this store's backbone has no register tokens")
    return x[..., layout.register_slice(), :]


def from_torch(t: torch.Tensor) -> np.ndarray:
    """CPU tensor -> numpy without a copy; bfloat16 becomes an ml_dtypes.bfloat16 view."""
    import torch

    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def to_torch(a: np.ndarray) -> torch.Tensor:
    """numpy -> tensor without a copy where possible; ml_dtypes.bfloat16 becomes torch.bfloat16."""
    import torch

    if a.dtype == np.dtype(ml_dtypes.bfloat16):
        return torch.from_numpy(np.ascontiguousarray(a).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)
