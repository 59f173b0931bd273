"""Stacked probe heads: K configs of one kind and shape computed as one batched op.

A sweep trains many heads on the same batch. Running them as K separate modules costs K small
kernels per layer (and on a GPU, K launches); stacking their parameters along a leading axis
turns the K matmuls into one batched matmul. Each stack keeps every config's tensors as a slice
``[k]`` shaped exactly like the single head's state-dict entry, so exporting config k gives a
state dict that ``create_head(...).load_state_dict`` accepts, and per-config optimisation only
needs per-slice learning rates (``stacked_optim``).

Stacked kinds: ``linear`` (BN + classifier on a CLS/GAP vector), ``ep`` (pooling-first EP,
docs/EP_SPEC.md §1.5), ``mhca`` (evaluated pooling-first too: with one learned query the key projection
folds into a per-head query vector and the value projection moves after the weighted sum, the
same function at a fraction of the cost), ``alf`` (Attentive Layer Fusion: per-config embedding and
LayerNorm of the 2L layer tokens, then MHCA pooling-first, ``alf.ALFStack``), ``mp`` (Moment Probing,
``mp.MPStack``: batched
projections, covariances and grouped convolutions). Every other kind runs as a :class:`ModuleStack`, a
loop over the epcache modules, which is also the reference path the stacks are tested against
(``fused=False``). One module per stacked kind; :data:`STACKED_KINDS` maps a kind to its stack.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from epcache.probe.train.stacks.alf import ALFStack
from epcache.probe.train.stacks.base import (
    HeadStack,
    ParamSlot,
    TensorStack,
    attention_softmax,
    cross_entropy_per_config,
    stacked_batch_norm,
)
from epcache.probe.train.stacks.ep import EPStack
from epcache.probe.train.stacks.linear import LinearStack
from epcache.probe.train.stacks.mhca import MHCAStack
from epcache.probe.train.stacks.modules import ModuleStack
from epcache.probe.train.stacks.mp import MPStack

__all__ = [
    "STACKED_KINDS",
    "ALFStack",
    "EPStack",
    "HeadStack",
    "LinearStack",
    "MHCAStack",
    "MPStack",
    "ModuleStack",
    "ParamSlot",
    "TensorStack",
    "attention_softmax",
    "cross_entropy_per_config",
    "make_stack",
    "stacked_batch_norm",
]

STACKED_KINDS: dict[str, type[TensorStack]] = {
    "linear": LinearStack, "ep": EPStack, "mhca": MHCAStack, "mp": MPStack, "alf": ALFStack,
}


def make_stack(
    heads: Sequence[nn.Module], selection: str, config_index: Sequence[int], *, fused: bool = True
) -> HeadStack:
    """A stack for K heads of one kind and shape: batched if the kind has one, else a module loop."""
    kind = heads[0].kind  # type: ignore[union-attr]
    cls = STACKED_KINDS.get(kind) if fused else None  # type: ignore[call-overload]
    if cls is None:
        return ModuleStack(heads, selection, config_index)
    return cls(heads, selection, config_index)
