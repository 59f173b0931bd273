"""Mixed precision and compilation of the probe heads: what ``--amp`` and ``--compile`` do.

The heads' matmuls may run in bfloat16 under ``torch.autocast`` while everything that decides
the numbers over many steps stays float32: master weights and optimiser states (the stacks keep
their parameters in the compute dtype, float32), losses (logits are widened before the
cross-entropy), BatchNorm statistics (``stacked_batch_norm`` widens its input) and the Moment
Probing covariance (computed with autocast off, ``heads/_mp.py`` and ``train/stacks/mp.py``). bfloat16
has float32's exponent range, so no loss scaling is needed; float16 is not offered: it would need
a loss scaler, and one scaler for a fused stack couples the configs (one config's overflow would
skip every config's step), breaking "a config gives the same numbers alone or in a sweep".

The rule for ``amp="auto"`` (the default), the project's adapted-default rule: bfloat16 on a CUDA
device that supports it, none on the CPU (autocast there is slower than float32 for these small
heads) and none with ``dtype="float64"`` (the exactness tests). The resolved value and the rule are
recorded in every row's protocol fingerprint; a bfloat16 config also gets another id than its
float32 twin, since its numbers differ.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["amp_context", "compile_stack", "widen"]

_LOW = (torch.float16, torch.bfloat16)


def amp_context(amp: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` to bfloat16 on ``device`` for ``amp="bf16"``, else a no-op context."""
    if amp == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def widen(t: Tensor) -> Tensor:
    """``t`` in float32 if it is float16/bfloat16 (autocast output); float32/float64 pass unchanged."""
    return t.float() if t.dtype in _LOW else t


def compile_stack(stack: nn.Module, enabled: bool) -> Callable[[Tensor], Tensor]:
    """The stack's forward, through ``torch.compile`` when ``enabled``; the module keeps its state.

    The compiled callable shares parameters and buffers with ``stack`` (optimiser, export,
    checkpoints and ``train()``/``eval()`` act on the module as before). Train and eval mode are
    separate graphs; after a second batch size (the eval batch, a last partial batch) torch's
    automatic dynamic shapes make the batch axis symbolic instead of compiling per size.
    """
    if not enabled:
        return stack
    return torch.compile(stack)  # type: ignore[return-value]

