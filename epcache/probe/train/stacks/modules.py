"""Any head kind as a loop over its epcache modules: the fallback, and the reference the stacks are tested against."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from epcache.probe.heads import ProbeHead
from epcache.probe.train.stacks.base import HeadStack, ParamSlot

__all__ = ["ModuleStack"]


class ModuleStack(HeadStack):
    """K independent epcache head modules run in a loop: the fallback and the reference path."""

    def __init__(self, heads: Sequence[nn.Module], selection: str, config_index: Sequence[int]) -> None:
        super().__init__()
        self.heads = nn.ModuleList(heads)
        self.kind = heads[0].kind  # type: ignore[assignment]
        self.selection = selection
        self.register_buffer("config_index", torch.as_tensor(list(config_index), dtype=torch.long), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "linear":  # the input is already the selected vector; the selection has no state
            return torch.stack([h.classifier(h.bn(x)) for h in self.heads])  # type: ignore[operator]
        if torch.is_autocast_enabled(x.device.type):  # BatchNorm statistics in float32 under autocast
            return torch.stack([_head_autocast(h, x) for h in self.heads])
        return torch.stack([h(x) for h in self.heads])

    def slots(self, prefix: str) -> list[ParamSlot]:
        out = []
        for k, h in enumerate(self.heads):
            idx = self.config_index[k : k + 1]
            for name, p in h.named_parameters():
                if p.requires_grad:
                    out.append(ParamSlot(f"{prefix}.{k}.{name}", p, idx, p.ndim, False))
        return out

    def export(self, k: int) -> dict[str, Tensor]:
        return {key: t.detach().cpu().clone() for key, t in self.heads[k].state_dict().items()}

    def load_slice(self, k: int, state: dict[str, Tensor]) -> None:
        self.heads[k].load_state_dict(state)


def _head_autocast(head: nn.Module, x: Tensor) -> Tensor:
    """One epcache head under autocast: pooling as autocast runs it, BatchNorm on float32 features."""
    if not isinstance(head, ProbeHead):  # Moment Probing: its covariance already runs in float32
        return head(x).float()
    pooled = head.pooling(x)
    return head.classifier(head.bn(pooled.float() if pooled.dtype != torch.float64 else pooled)).float()
