"""What the reader delivers for a group of heads, and how each head's input is derived on the device.

The reader keeps the smallest thing that serves every head of a group (all tokens, patch tokens
only, or just CLS / GAP vectors), so a group of linear heads moves D numbers per image, not T x D.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from epcache.store import TokenLayout
from epcache.store.layout.tokens import to_torch

__all__ = ["InputRead", "Mode"]

Mode = Literal["all", "patch", "vectors"]


@dataclass(frozen=True)
class InputRead:
    """Which tokens a group of heads needs, and how each head's input is derived from a batch.

    The reader keeps the smallest thing that serves every selection of the group: all tokens
    when any head reads ``all`` (or reads ``patch`` while another needs CLS), patch tokens only
    when that suffices, and for groups of linear heads only the CLS / GAP vectors (D numbers per
    image instead of T x D), computed on the reader side in the compute dtype.
    """

    selections: frozenset[str]  # token sources of the group's heads (cls, gap, cls+gap, patch, all, registers ...)
    layout: TokenLayout
    dtype: torch.dtype = torch.float32  # compute dtype

    @property
    def mode(self) -> Mode:
        needs_cls = bool(self.selections & {"cls", "cls+gap"})
        needs_prefix = bool(self.selections & {"all", "registers", "patch+registers"})  # register sources too
        if needs_prefix or ("patch" in self.selections and needs_cls):
            return "all"
        if "patch" in self.selections:
            return "patch"
        return "vectors"

    @property
    def vectors(self) -> tuple[str, ...]:
        """Vectors packed in ``vectors`` mode, in order."""
        out = []
        if self.selections & {"cls", "cls+gap"}:
            out.append("cls")
        if self.selections & {"gap", "cls+gap"}:
            out.append("gap")
        return tuple(out)

    def pack(self, x: np.ndarray) -> np.ndarray:
        """Reader side: ``[..., T, D]`` tokens in the store dtype -> what travels to the device."""
        P = self.layout.num_prefix
        mode = self.mode
        if mode == "all":
            return x
        if mode == "patch":
            return x[..., P:, :]
        t = to_torch(np.ascontiguousarray(x))
        parts = []
        for name in self.vectors:
            if name == "cls":
                parts.append(t[..., self.layout.cls_index, :].to(self.dtype))
            else:
                parts.append(_gap(t[..., P:, :], self.dtype))
        return torch.stack(parts, dim=-2).numpy()

    def derive(self, x: Tensor, selection: str) -> Tensor:
        """Device side: a head's input from a packed batch ``(B, T', D)`` already in the compute dtype."""
        P = self.layout.num_prefix
        mode = self.mode
        if mode == "vectors":
            idx = {name: i for i, name in enumerate(self.vectors)}
            if selection == "cls+gap":
                return torch.cat([x[:, idx["cls"]], x[:, idx["gap"]]], dim=-1)
            return x[:, idx[selection]]
        patches = x[:, P:] if mode == "all" else x
        if selection == "all":
            return x
        if selection == "registers":
            return x[:, self.layout.register_slice()]
        if selection == "patch+registers":  # every token but CLS, in stored order
            ci = self.layout.cls_index
            return x if ci is None else torch.cat([x[:, :ci], x[:, ci + 1 :]], dim=1)
        if selection == "patch":
            return patches
        if selection == "gap":
            return _gap(patches, self.dtype)
        cls = x[:, self.layout.cls_index]
        if selection == "cls":
            return cls
        return torch.cat([cls, _gap(patches, self.dtype)], dim=-1)

    def packed_bytes_per_view(self, num_tokens: int, dim: int, itemsize: int) -> int:
        """Bytes one sample-view occupies after packing."""
        mode = self.mode
        if mode == "vectors":
            return len(self.vectors) * dim * torch.finfo(self.dtype).bits // 8
        n = num_tokens if mode == "all" else self.layout.num_patches
        return n * dim * itemsize


def _gap(patches: Tensor, dtype: torch.dtype) -> Tensor:
    """Mean over the token axis (-2) in ``dtype``: one definition for reader and device side."""
    return patches.to(dtype).mean(dim=-2)
