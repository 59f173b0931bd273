"""Build a head (or a bare pooling) from weights saved by the official EP implementation.

Module key names equal the reference ones, so loading is a plain ``load_state_dict``; the work
here is inferring the constructor arguments from tensor shapes and reporting any mismatch.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from epcache.errors import HeadSpecError

from ._base import ProbeHead
from ._builtin import POOLING_CLASSES
from ._infer import accept, need
from ._linear import TokenSelect
from ._mp import MomentProbing

__all__ = ["from_reference"]

_FULL_HEAD_KEY = re.compile(r"^\d+\.")


def from_reference(kind: str, state_dict: Mapping[str, Any], **config: Any) -> nn.Module:
    """Head or pooling module with the reference weights loaded.

    Accepted layouts (values may be torch tensors or numpy arrays):

    * a full head: ``0.*`` pooling, ``1.*`` BatchNorm, ``2.*`` classifier (for ``linear``:
      ``0.*`` BatchNorm, ``1.*`` classifier) -> :class:`ProbeHead`;
    * a reference checkpoint: the same under a ``head.`` prefix, optionally inside ``{"model": ...}``;
      keys without the prefix (backbone) are ignored;
    * a pooling-only state dict (``cls_token``, ``v.weight`` ...) -> the pooling module, whose
      ``forward``/``pool`` return pooled features and which has ``attention``.

    Shapes (D, M, d_out, C, N for ``clip`` ...) come from the tensors. Only what tensors cannot
    show is passed in ``config``, named as in the reference constructors: ``num_heads`` (jepa,
    aim: default 16 = the reference ``--num_heads``; siglip/cae/dinovit 8; cait/clip 4; esimpool
    12; mhca 8), ``self_attention_apply_to``/``activation`` (abmilp), and ``tokens``/``num_prefix``
    (linear; default ``"cls"`` and 1), ``num_prefix`` (mp; default 1: token 0 is CLS).

    ``mp`` takes the official ``Moment_Probing_ViT`` keys (``proj``, ``ln``, ``classifier1``,
    ``classifier2``, ``downblocks.0.0``, ``downblocks.0.2``) and returns :class:`MomentProbing`.

    The module takes the floating dtype of the weights (float64 weights give a float64 module)
    and is returned in training mode, like any freshly built ``nn.Module``.

    Raises:
        HeadSpecError: unknown kind or config name, missing or unexpected keys (all listed),
            or shapes that do not fit together.
    """
    if kind not in POOLING_CLASSES and kind != MomentProbing.kind:
        known = ", ".join(sorted([*POOLING_CLASSES, MomentProbing.kind]))
        raise HeadSpecError(f"unknown head kind {kind!r}; known: {known}")
    sd = _head_entries(state_dict)
    full = any(_FULL_HEAD_KEY.match(k) for k in sd)
    if kind == MomentProbing.kind:  # its own structure: the official keys are the module's keys
        args = MomentProbing.config_from_state(sd, **config)
        module = _build(lambda: MomentProbing(**args))
    elif kind == "linear":
        module = _build(lambda: _linear_head(sd, config))
    elif full:
        pool_sd = {k[2:]: v for k, v in sd.items() if k.startswith("0.")}
        cls = POOLING_CLASSES[kind]
        try:
            args = cls.config_from_state(pool_sd, **config)
        except HeadSpecError as e:
            raise HeadSpecError(f"{e} (pooling keys of a full head carry the prefix '0.')") from None
        C, width = need(kind, sd, "2.weight", ndim=2).shape
        module = _build(lambda: ProbeHead(cls(**args), nn.Linear(width, C), kind=kind))
    else:
        cls = POOLING_CLASSES[kind]
        args = cls.config_from_state(sd, **config)
        module = _build(lambda: cls(**args))
    _load(kind, module, sd)
    return module


def _head_entries(state_dict: Mapping[str, Any]) -> dict[str, Tensor]:
    if "model" in state_dict and isinstance(state_dict["model"], Mapping):
        state_dict = state_dict["model"]
    keys = list(state_dict.keys())
    if any(k.startswith("head.") for k in keys):
        keys = [k for k in keys if k.startswith("head.")]
        return {k[len("head.") :]: _tensor(state_dict[k]) for k in keys}
    return {k: _tensor(state_dict[k]) for k in keys}


def _tensor(value: Any) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach()
    return torch.as_tensor(np.asarray(value))


def _linear_head(sd: Mapping[str, Tensor], config: Mapping[str, Any]) -> ProbeHead:
    accept("linear", config, ("tokens", "num_prefix"))
    tokens = config.get("tokens", "cls")
    C, width = need("linear", sd, "1.weight", ndim=2).shape
    dim = width // 2 if tokens == "cls+gap" else width
    select = TokenSelect(dim, tokens=tokens, num_prefix=config.get("num_prefix", 1))
    return ProbeHead(select, nn.Linear(select.out_dim, C), kind="linear")


def _build(make: Callable[[], nn.Module]) -> nn.Module:
    # On the meta device: no memory is initialised and the global RNG is left untouched.
    with torch.device("meta"):
        module = make()
    return module.to_empty(device="cpu")


def _load(kind: str, module: nn.Module, sd: Mapping[str, Tensor]) -> None:
    expected = module.state_dict()
    missing = sorted(k for k in expected.keys() - sd.keys() if not k.endswith("num_batches_tracked"))
    unexpected = sorted(sd.keys() - expected.keys())
    if missing or unexpected:
        raise HeadSpecError(
            f"{kind!r} state dict does not match the module: missing keys {missing}, unexpected keys {unexpected}"
        )
    wrong = [
        f"{k}: {tuple(sd[k].shape)} vs {tuple(t.shape)}"
        for k, t in expected.items()
        if k in sd and tuple(sd[k].shape) != tuple(t.shape)
    ]
    if wrong:
        raise HeadSpecError(f"{kind!r} state dict shapes do not match the inferred module: {wrong}")
    dtype = next((t.dtype for t in sd.values() if t.is_floating_point()), torch.float32)
    module.to(dtype)
    for k in expected.keys() - sd.keys():  # absent num_batches_tracked (old checkpoints): start at 0
        module.get_buffer(k).zero_()
    module.load_state_dict(sd, strict=False)
