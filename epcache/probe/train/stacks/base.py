"""What every stack shares: the K-slice parameter view, the stack interface and the state layout.

A sweep trains K configs of one kind and shape on the same batch. A stack keeps every config's
tensors as a slice ``[k]`` shaped exactly like the single head's state-dict entry, so exporting
config k gives a state dict that ``create_head(...).load_state_dict`` accepts, and per-config
optimisation only needs per-slice learning rates (``stacked_optim``). The per-kind stacks live
beside this module and import only it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "HeadStack",
    "ParamSlot",
    "TensorStack",
    "attention_softmax",
    "cross_entropy_per_config",
    "stacked_batch_norm",
]


@dataclass(frozen=True)
class ParamSlot:
    """One optimised tensor seen as K config slices: ``param[k]`` belongs to config ``index[k]``."""

    name: str  # checkpoint key prefix of its optimiser state
    param: nn.Parameter
    index: Tensor  # (K,) positions of the owning configs in the trainer's lr/wd vectors
    single_ndim: int  # ndim of the tensor in one head (LARS scales only > 1)
    stacked: bool  # True: param has a leading K axis; False: one head's own tensor (K = 1)

    def view(self, t: Tensor) -> Tensor:
        """``t`` (the param, its grad or a state of the same shape) with a leading K axis."""
        return t if self.stacked else t.unsqueeze(0)


class HeadStack(nn.Module, ABC):
    """K heads of one kind/shape/input; ``forward(x) -> (K, B, C)`` logits."""

    kind: str
    selection: str  # token selection its input uses (cls, gap, cls+gap, patch, all)
    config_index: Tensor  # (K,) positions of its configs in the trainer's vectors

    @property
    def size(self) -> int:
        return int(self.config_index.numel())

    @abstractmethod
    def slots(self, prefix: str) -> list[ParamSlot]:
        """The optimised tensors with their owning configs."""

    @abstractmethod
    def export(self, k: int) -> dict[str, Tensor]:
        """Config ``k``'s single-head state dict (epcache key names), detached CPU copies."""

    @abstractmethod
    def load_slice(self, k: int, state: dict[str, Tensor]) -> None:
        """Overwrite config ``k`` from a single-head state dict."""


class TensorStack(HeadStack):
    """Stacks the state dicts of K identical-shape :class:`ProbeHead` modules into ``(K, ...)`` tensors.

    Parameter ``"0.cls_token"`` of the single head becomes ``self.t("0.cls_token")`` of shape
    ``(K, 1, M, D)``; buffers (BatchNorm running stats) likewise.
    """

    def __init__(self, heads: Sequence[nn.Module], selection: str, config_index: Sequence[int]) -> None:
        super().__init__()
        first = heads[0]
        self._stack_state(heads, selection, config_index)
        names = {id(m): n for n, m in first.named_children()}
        self.pool_name = names[id(first.pooling)]  # type: ignore[arg-type]
        self.bn_name = names[id(first.bn)]  # type: ignore[arg-type]
        self.cls_name = names[id(first.classifier)]  # type: ignore[arg-type]
        self.bn_momentum = float(first.bn.momentum)  # type: ignore[union-attr,arg-type]
        self.bn_eps = float(first.bn.eps)  # type: ignore[union-attr,arg-type]

    def _stack_state(self, heads: Sequence[nn.Module], selection: str, config_index: Sequence[int]) -> None:
        """Every state-dict entry of the K heads as one ``(K, ...)`` parameter or buffer."""
        first = heads[0]
        self.kind = first.kind  # type: ignore[assignment]
        self.selection = selection
        self.register_buffer("config_index", torch.as_tensor(list(config_index), dtype=torch.long), persistent=False)
        param_keys = {n for n, _ in first.named_parameters()}
        sds = [h.state_dict() for h in heads]
        self._attrs: dict[str, str] = {}
        self._single_ndim: dict[str, int] = {}
        for key in sds[0]:
            t = torch.stack([sd[key].detach() for sd in sds]).clone()
            attr = "t_" + key.replace(".", "__")
            if key in param_keys:
                self.register_parameter(attr, nn.Parameter(t))
            else:
                self.register_buffer(attr, t)
            self._attrs[key] = attr
            self._single_ndim[key] = sds[0][key].ndim

    def t(self, key: str) -> Tensor:
        """The stacked tensor of single-head key ``key``."""
        return getattr(self, self._attrs[key])

    def slots(self, prefix: str) -> list[ParamSlot]:
        out = []
        for key, attr in self._attrs.items():
            p = getattr(self, attr)
            if isinstance(p, nn.Parameter) and p.requires_grad:
                out.append(ParamSlot(f"{prefix}.{key}", p, self.config_index, self._single_ndim[key], True))
        return out

    def export(self, k: int) -> dict[str, Tensor]:
        return {key: getattr(self, attr)[k].detach().cpu().clone() for key, attr in self._attrs.items()}

    def load_slice(self, k: int, state: dict[str, Tensor]) -> None:
        with torch.no_grad():
            for key, attr in self._attrs.items():
                getattr(self, attr)[k].copy_(state[key])

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.pool(x)  # (K, B, W)
        b = self.bn_name
        y = stacked_batch_norm(
            pooled,
            self.t(f"{b}.running_mean"),
            self.t(f"{b}.running_var"),
            self.t(f"{b}.num_batches_tracked"),
            training=self.training,
            momentum=self.bn_momentum,
            eps=self.bn_eps,
        )
        c = self.cls_name
        return torch.baddbmm(self.t(f"{c}.bias").unsqueeze(1), y, self.t(f"{c}.weight").transpose(1, 2))

    @abstractmethod
    def pool(self, x: Tensor) -> Tensor:
        """Pooled features ``(K, B, W)`` before BatchNorm."""



def stacked_batch_norm(
    x: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    num_batches_tracked: Tensor,
    *,
    training: bool,
    momentum: float,
    eps: float,
) -> Tensor:
    """``BatchNorm1d(affine=False)`` applied per config: ``x (K, B, W)``, statistics ``(K, W)``.

    Training normalises with the batch mean and biased variance and updates the running
    variance with the unbiased one (``B/(B-1)``), exactly as ``nn.BatchNorm1d``; evaluation uses
    the running statistics.
    """
    if x.dtype in (torch.float16, torch.bfloat16):  # autocast output: statistics in float32 (precision.py)
        x = x.float()
    if not training:
        return (x - running_mean.unsqueeze(1)) * torch.rsqrt(running_var.unsqueeze(1) + eps)
    B = x.shape[1]
    if B < 2:
        raise ValueError(f"BatchNorm needs more than 1 sample per batch in training, got {B}")
    mean = x.mean(dim=1)  # (K, W)
    centered = x - mean.unsqueeze(1)
    var = (centered * centered).mean(dim=1)  # biased; two passes (torch.var_mean is ~20x slower on CPU here)
    with torch.no_grad():
        running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
        running_var.mul_(1 - momentum).add_(var.detach() * (B / (B - 1)), alpha=momentum)
        num_batches_tracked.add_(1)
    return centered * torch.rsqrt(var.unsqueeze(1) + eps)


def cross_entropy_per_config(logits: Tensor, y: Tensor) -> Tensor:
    """Mean cross-entropy of each config, ``(K,)``, from logits ``(K, B, C)``."""
    K, B, C = logits.shape
    return F.cross_entropy(logits.reshape(K * B, C), y.repeat(K), reduction="none").view(K, B).mean(dim=1)


def attention_softmax(logits: Tensor) -> Tensor:
    """Attention weights; float32 at least (CPU autocast would keep bfloat16 logits in bfloat16)."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return logits.softmax(dim=-1)
