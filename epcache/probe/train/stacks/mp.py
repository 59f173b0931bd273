"""K Moment Probing configs of one shape as batched ops (docs/PROBE_FAMILIES.md §1.1, STYLE "Performance code").

A sweep over learning rates, weight decays and seeds trains K MP heads on the same batch. The
stack holds every single-head tensor with a leading K axis (``TensorStack``'s layout, so
export/load, the sliced optimisers and checkpoints work unchanged) and computes all K heads
at once: one batched projection, one LayerNorm, one covariance einsum, and the two 3x3 convs as
grouped convolutions with K groups. Covariances and column norms run in at least float32, as
in the single head.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from epcache.probe.train.stacks.base import TensorStack

__all__ = ["MPStack"]


class MPStack(TensorStack):
    """K :class:`~epcache.probe.heads.MomentProbing` heads with the same (D, C, hidden, num_heads, num_prefix)."""

    def __init__(self, heads: Sequence[nn.Module], selection: str, config_index: Sequence[int]) -> None:
        nn.Module.__init__(self)
        first = heads[0]
        self._stack_state(heads, selection, config_index)
        self.num_heads = int(first.num_heads)  # type: ignore[arg-type]
        self.hidden = int(first.hidden)  # type: ignore[arg-type]
        self.num_prefix = int(first.num_prefix)  # type: ignore[arg-type]
        self.ln_eps = float(first.ln.eps)  # type: ignore[union-attr,arg-type]

    def pool(self, x: Tensor) -> Tensor:
        """The LRA features ``(K, B, F)`` of every config."""
        B, _, D = x.shape
        K, H = self.size, self.num_heads
        d = self.hidden // H
        patches = x[:, self.num_prefix :]  # (B, P, D)
        P = patches.shape[1]
        w, b = self.t("proj.weight"), self.t("proj.bias")  # (K, hidden, D), (K, hidden)
        z = torch.matmul(patches.reshape(1, B * P, D), w.transpose(1, 2)) + b.unsqueeze(1)  # (K, B·P, hidden)
        if z.dtype in (torch.float16, torch.bfloat16):
            z = z.float()
        off = z.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(z.device.type)
        with torch.autocast(device_type=z.device.type, enabled=False) if off else contextlib.nullcontext():
            zn = F.layer_norm(z.view(K, B, P, H, d), (d,), eps=self.ln_eps)
            lw = self.t("ln.weight").to(z.dtype).view(K, 1, 1, 1, d)
            lb = self.t("ln.bias").to(z.dtype).view(K, 1, 1, 1, d)
            zn = zn * lw + lb
            zn = zn - zn.mean(dim=(2, 4), keepdim=True)  # one scalar per config, image and slice
            cov = torch.einsum("kbphi,kbphj->kbhij", zn[:, :, :, :-1], zn[:, :, :, 1:]) / P  # (K, B, H-1, d, d)
            cov = F.normalize(cov, dim=3)  # unit-norm columns
        c = H - 1
        w1, w2 = self.t("downblocks.0.0.weight"), self.t("downblocks.0.2.weight")  # (K, c, c, 3, 3)
        cov = cov.to(w1.dtype).permute(1, 0, 2, 3, 4).reshape(B, K * c, d, d)  # group k = config k
        f = F.conv2d(cov, w1.reshape(K * c, c, 3, 3), stride=2, groups=K)
        f = F.conv2d(F.gelu(f), w2.reshape(K * c, c, 3, 3), stride=2, groups=K)  # (B, K·c, s, s)
        return f.reshape(B, K, -1).transpose(0, 1)  # (K, B, F)

    def forward(self, x: Tensor) -> Tensor:
        first = x[:, 0] if self.num_prefix else x.mean(dim=1)  # (B, D): CLS, or GAP without a prefix
        l1 = torch.matmul(first, self.t("classifier1.weight").transpose(1, 2)) + self.t("classifier1.bias").unsqueeze(1)
        f = self.pool(x)
        l2 = torch.baddbmm(self.t("classifier2.bias").unsqueeze(1), f, self.t("classifier2.weight").transpose(1, 2))
        return (l1 + l2) / 2  # (K, B, C)
