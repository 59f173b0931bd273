"""Helpers for inferring constructor arguments from a reference state dict."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from torch import Tensor

from epcache.errors import HeadSpecError

__all__ = ["accept", "count_indexed", "need"]


def need(kind: str, sd: Mapping[str, Tensor], key: str, *, ndim: int | None = None) -> Tensor:
    """The tensor under ``key``; a clear error when it is absent or has the wrong rank."""
    if key not in sd:
        raise HeadSpecError(
            f"{kind!r} state dict is missing key {key!r} (needed to infer the shapes); "
            f"missing keys: [{key!r}]; present: {sorted(sd)}"
        )
    t = sd[key]
    if ndim is not None and t.ndim != ndim:
        raise HeadSpecError(f"{kind!r} state dict: {key!r} has shape {tuple(t.shape)}, expected {ndim}-D")
    return t


def accept(kind: str, config: Mapping[str, Any], allowed: Iterable[str]) -> None:
    """Reject config names the kind cannot use (they could only be typos)."""
    allowed = tuple(allowed)
    unknown = sorted(set(config) - set(allowed))
    if unknown:
        hint = f"accepted: {', '.join(allowed)}" if allowed else "it takes none (all shapes come from tensors)"
        raise HeadSpecError(f"{kind!r} from_reference got unknown config {unknown}; {hint}")


def count_indexed(sd: Mapping[str, Tensor], prefix: str) -> int:
    """Number of consecutive ``prefix{i}.`` groups (``blocks.0.``, ``blocks.1.`` ...)."""
    i = 0
    while any(k.startswith(f"{prefix}{i}.") for k in sd):
        i += 1
    return i
