"""Stacked probe heads: K configs of one kind and shape computed as one batched op.

A sweep trains many heads on the same batch. Running them as K separate modules costs K small
kernels per layer (and on a GPU, K launches); stacking their parameters along a leading axis
turns the K matmuls into one batched matmul. Each stack keeps every config's tensors as a slice
``[k]`` shaped exactly like the single head's state-dict entry, so exporting config k gives a
state dict that ``create_head(...).load_state_dict`` accepts, and per-config optimisation only
needs per-slice learning rates (``stacked_optim``).

Stacked kinds: ``linear`` (BN + classifier on a CLS/GAP vector), ``ep`` (pooling-first EP,
EP_SPEC §1.5), ``mhca`` (evaluated pooling-first too: with one learned query the key projection
folds into a per-head query vector and the value projection moves after the weighted sum, the
same function at a fraction of the cost), ``mp`` (Moment Probing, ``fused_mp.MPStack``: batched
projections, covariances and grouped convolutions). Every other kind runs as a :class:`ModuleStack`, a
loop over the epcache modules, which is also the reference path the stacks are tested against
(``fused=False``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "STACKED_KINDS",
    "EPStack",
    "HeadStack",
    "LinearStack",
    "MHCAStack",
    "ModuleStack",
    "ParamSlot",
    "TensorStack",
    "cross_entropy_per_config",
    "make_stack",
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


class LinearStack(TensorStack):
    """Linear probes on one vector input (CLS, GAP or both): the stack is BN + classifier only."""

    def pool(self, x: Tensor) -> Tensor:
        return x.unsqueeze(0).expand(self.size, -1, -1)  # (K, B, W): the same vector for every config

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return super().forward(x)  # running statistics may differ per config (e.g. loaded slices)
        # Training: every config normalises the same input with the same batch statistics, so BN
        # runs once and the K classifiers become one (B, W) x (W, K*C) matmul.
        b, c = self.bn_name, self.cls_name
        y = stacked_batch_norm(
            x.unsqueeze(0),
            self.t(f"{b}.running_mean"),
            self.t(f"{b}.running_var"),
            self.t(f"{b}.num_batches_tracked"),
            training=True,
            momentum=self.bn_momentum,
            eps=self.bn_eps,
        )[0]  # (B, W); the (1, W) statistics broadcast into every config's (K, W) running buffers
        w = self.t(f"{c}.weight")  # (K, C, W)
        K, C, W = w.shape
        logits = y @ w.reshape(K * C, W).t()  # (B, K*C)
        return logits.view(-1, K, C).transpose(0, 1) + self.t(f"{c}.bias").unsqueeze(1)


class EPStack(TensorStack):
    """Efficient Probing, pooling-first, for K configs with the same (M, d_out).

    All K·M queries attend in one ``(B, K·M, N)`` matmul; then each query's weighted token sum
    meets its own ``c``-wide slice of its config's ``W_V`` (EP_SPEC §1.3, §1.5).
    """

    def pool(self, x: Tensor) -> Tensor:
        B, _, D = x.shape
        q = self.t(f"{self.pool_name}.cls_token")  # (K, 1, M, D)
        w = self.t(f"{self.pool_name}.v.weight")  # (K, D', D)
        K, _, M, _ = q.shape
        c = w.shape[1] // M
        logits = torch.matmul(q.reshape(K * M, D) * D**-0.5, x.transpose(1, 2))  # (B, K·M, N)
        pooled = _softmax(logits) @ x  # (B, K·M, D)
        y = torch.einsum("bkmd,kmcd->kbmc", pooled.view(B, K, M, D), w.view(K, M, c, D))
        return y.reshape(K, B, M * c)


class MHCAStack(TensorStack):
    """Generic MHCA with one learned query, K configs with the same head count, pooling-first.

    Per head h: ``logit[n] = (W_K,h x_n + b_K,h)·q_h / √dh`` = ``x_n·(W_K,hᵀ q_h)/√dh`` + a constant
    that softmax ignores; and ``Σ_n a[n] (W_V,h x_n + b_V,h) = W_V,h (Σ_n a[n] x_n) + b_V,h``. So
    the cost per image is ``K·H·N·D`` for attention and pooling plus small per-config matmuls,
    not ``K·N·D²`` for projecting every token. The constant is kept in the logits so ``b_K``
    gets its (numerically ~0) gradient exactly as in the module.
    """

    def __init__(self, heads: Sequence[nn.Module], selection: str, config_index: Sequence[int]) -> None:
        super().__init__(heads, selection, config_index)
        self.num_heads = int(heads[0].pooling.num_heads)  # type: ignore[union-attr,arg-type]

    def pool(self, x: Tensor) -> Tensor:
        B, _, D = x.shape
        p = self.pool_name
        query = self.t(f"{p}.query")  # (K, 1, 1, D)
        K = query.shape[0]
        wq, bq = self.t(f"{p}.q.weight"), self.t(f"{p}.q.bias")  # (K, D, D), (K, D)
        wk, bk = self.t(f"{p}.k.weight"), self.t(f"{p}.k.bias")
        wv, bv = self.t(f"{p}.v.weight"), self.t(f"{p}.v.bias")
        H = self.num_heads
        dh = D // H
        q = torch.baddbmm(bq.unsqueeze(1), query.view(K, 1, D), wq.transpose(1, 2)).view(K, H, dh)
        u = torch.einsum("khe,khed->khd", q, wk.view(K, H, dh, D))  # (K, H, D): W_K,hᵀ q_h
        shift = (q * bk.view(K, H, dh)).sum(-1)  # (K, H): q_h·b_K,h, constant over tokens
        scale = dh**-0.5
        logits = torch.matmul(u.reshape(K * H, D), x.transpose(1, 2))  # (B, K·H, N)
        logits = (logits + shift.reshape(1, K * H, 1)) * scale
        z = (_softmax(logits) @ x).view(B, K, H, D)  # attention-weighted token sums
        v = torch.einsum("bkhd,khed->kbhe", z, wv.view(K, H, dh, D)).reshape(K, B, D) + bv.unsqueeze(1)
        wo, bo = self.t(f"{p}.proj.weight"), self.t(f"{p}.proj.bias")
        return torch.baddbmm(bo.unsqueeze(1), v, wo.transpose(1, 2))


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


STACKED_KINDS: dict[str, type[TensorStack]] = {"linear": LinearStack, "ep": EPStack, "mhca": MHCAStack}


def make_stack(
    heads: Sequence[nn.Module], selection: str, config_index: Sequence[int], *, fused: bool = True
) -> HeadStack:
    """A stack for K heads of one kind and shape: batched if the kind has one, else a module loop."""
    kind = heads[0].kind  # type: ignore[union-attr]
    if kind == "mp" and fused:  # Moment Probing keeps its own structure; its stack lives with it
        # not at the top: probe.train.fused_mp imports this module (import cycle)
        from epcache.probe.train.fused_mp import MPStack

        return MPStack(heads, selection, config_index)
    cls = STACKED_KINDS.get(kind) if fused else None  # type: ignore[call-overload]
    if cls is None:
        return ModuleStack(heads, selection, config_index)
    return cls(heads, selection, config_index)


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


def _softmax(logits: Tensor) -> Tensor:
    """Attention weights; float32 at least (CPU autocast would keep bfloat16 logits in bfloat16)."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return logits.softmax(dim=-1)


def _head_autocast(head: nn.Module, x: Tensor) -> Tensor:
    """One epcache head under autocast: pooling as autocast runs it, BatchNorm on float32 features."""
    from epcache.probe.heads import ProbeHead  # not at the top: probe.heads imports this module (import cycle)

    if not isinstance(head, ProbeHead):  # Moment Probing: its covariance already runs in float32
        return head(x).float()
    pooled = head.pooling(x)
    return head.classifier(head.bn(pooled.float() if pooled.dtype != torch.float64 else pooled)).float()
