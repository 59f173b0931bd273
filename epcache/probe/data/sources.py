"""Token sources and layer mixes: what a head reads, how wide it is, and how it is built.

A head's input is one *token source* of one layer or of a *layer mix* of several layers:

* vector sources (linear heads): ``cls``, ``gap`` (mean of the patch tokens), ``cls+gap`` and
  ``pooled`` (the model's own pooled output, ``forward_head(pre_logits=True)``, a per-split
  array of the store, cache_layout.md §3.4; it belongs to no layer);
* sequence sources (attentive heads, MP): ``patch``, ``all`` (prefix + patches), ``registers``
  and ``patch+registers`` (every token but CLS).

Layer mixes (``layer_mix``): ``none`` (one layer per config), ``concat`` (per-layer vectors or
token channels joined; with ``cls+gap`` the DINOv2 recipe: CLS of every layer + GAP of the last),
``mean`` (token tensors averaged over the layers, AIM) and ``tokens`` (token sequences joined
along the token axis, V-JEPA 2; sequence sources, and ``cls+gap`` for ``alf``: the CLS and GAP vector
of each layer as two tokens, layer by layer).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from epcache.errors import HeadSpecError
from epcache.probe.config.inputs import LAYER_MIXES, SEQUENCE_SOURCES, VECTOR_SOURCES, input_key
from epcache.probe.heads import ProbeHead, VectorInput, create_head

__all__ = [
    "LAYER_MIXES",
    "SEQUENCE_SOURCES",
    "VECTOR_SOURCES",
    "HeadInput",
    "build_head",
    "head_input",
    "input_cost",
    "input_key",
    "layer_inputs",
    "pooled_dim",
    "rebuild_head",
]

_MP_SOURCES = ("all", "patch")  # MP: CLS (or GAP) + the patches' covariances


@dataclass(frozen=True, slots=True)
class HeadInput:
    """The shapes one config's head is built for."""

    in_dim: int  # channels per token (a linear head: the vector width)
    num_tokens: int  # tokens per image the head sees (1 for vectors)
    num_prefix: int  # prefix tokens (CLS first) in front of the patches of that sequence
    vector: bool  # True: the head reads one vector per image (linear heads)


def pooled_dim(meta: Any) -> int | None:
    """Width of the store's ``pooled`` array (cache_layout.md §3.4), None when the store has none."""
    info = meta.extra.get("pooled") if isinstance(meta.extra, dict) else None
    return int(info["dim"]) if isinstance(info, dict) and "dim" in info else None


def head_input(
    kind: str,
    tokens: str,
    layer_mix: str,
    num_layers: int,
    *,
    dim: int,
    num_prefix: int,
    cls_index: int | None,
    num_registers: int,
    num_patches: int,
    pooled_dim: int | None = None,
) -> HeadInput:
    """Shapes of the head input of ``kind`` reading ``tokens`` of ``num_layers`` layers mixed by ``layer_mix``.

    Raises:
        HeadSpecError: a source the head family cannot read, a source the store lacks (CLS,
            registers, pooled output) or a mix the source does not allow.
    """
    linear = kind == "linear"
    if kind == "alf":
        return _alf_input(tokens, layer_mix, num_layers, dim=dim, cls_index=cls_index)
    family = VECTOR_SOURCES if linear else SEQUENCE_SOURCES
    if tokens not in family:
        which = "linear heads read" if linear else f"{kind!r} heads read"
        raise HeadSpecError(f"{which} {', '.join(family)}; not tokens={tokens!r}")
    if kind == "mp" and tokens not in _MP_SOURCES:
        raise HeadSpecError(f"'mp' reads tokens 'all' (CLS + patches) or 'patch' (GAP + patches), not {tokens!r}")
    if kind == "mp" and tokens == "all" and num_prefix and cls_index != 0:
        raise HeadSpecError("'mp' takes its first-order term from CLS as token 0, and this store's prefix has no CLS "
                            "first; use tokens 'patch' (GAP of the patches)")
    if layer_mix not in LAYER_MIXES:
        raise HeadSpecError(f"unknown layer mix {layer_mix!r}; choose from {', '.join(LAYER_MIXES)}")
    if "cls" in tokens and cls_index is None:
        raise HeadSpecError("this store's backbone has no CLS token; use gap (linear) or patch (attentive heads)")
    if "registers" in tokens and num_registers == 0:
        raise HeadSpecError("this store's backbone has no register tokens; use patch or all")
    k = 1 if layer_mix in ("none", "mean") else num_layers
    if tokens == "pooled":
        if pooled_dim is None:
            raise HeadSpecError(
                "this store has no 'pooled' array (the model's own pooled output); re-extract with "
                "`epcache extract --pooled` or use tokens cls/gap"
            )
        if layer_mix != "none":
            raise HeadSpecError("the pooled output belongs to no layer; it takes layer_mix 'none' only")
        return HeadInput(pooled_dim, 1, 0, True)
    if linear:
        if layer_mix == "tokens":
            raise HeadSpecError("layer_mix 'tokens' joins token sequences; linear heads read one vector (use concat)")
        per_layer = 2 * dim if tokens == "cls+gap" else dim
        width = (k + 1) * dim if tokens == "cls+gap" and k > 1 else k * per_layer  # DINOv2: CLS of each + last GAP
        return HeadInput(width, 1, 0, True)
    if kind == "mp" and layer_mix == "tokens":
        raise HeadSpecError("'mp' needs one CLS and one patch grid; use layer_mix concat or mean, not tokens")
    n, prefix = {
        "patch": (num_patches, 0),
        "all": (num_prefix + num_patches, num_prefix),
        "registers": (num_registers, 0),
        "patch+registers": (num_registers + num_patches, 0),
    }[tokens]
    if layer_mix == "tokens":
        return HeadInput(dim, k * n, 0, False)
    return HeadInput(k * dim if layer_mix == "concat" else dim, n, prefix, False)


def _alf_input(tokens: str, layer_mix: str, num_layers: int, *, dim: int, cls_index: int | None) -> HeadInput:
    """ALF reads the CLS and GAP vector of each layer as a 2L-token sequence (``tokens:cls+gap``).

    The reader then moves two vectors per layer and image, not the layers' token grids.
    """
    fix = "use --tokens cls+gap --layer-mix tokens with --layers all (or last:K, K >= 2)"
    if tokens != "cls+gap":
        raise HeadSpecError(f"'alf' reads the CLS and GAP token of every layer, not tokens={tokens!r}; {fix}")
    if layer_mix != "tokens":
        raise HeadSpecError(f"'alf' fuses layers as a token sequence, not layer_mix={layer_mix!r}; {fix}")
    if cls_index is None:
        raise HeadSpecError("'alf' attends over each layer's CLS and GAP token; this store's backbone has no CLS")
    return HeadInput(dim, 2 * num_layers, 0, False)


def layer_inputs(
    mixes: Sequence[str], layers: Sequence[int], errors: list[str]
) -> list[tuple[int, str, tuple[int, ...]]]:
    """``(layer, mix, mix_layers)`` per input: each layer alone for ``none``, all layers as one for a mix.

    Problems are appended to ``errors`` (the sweep reports them all at once).
    """
    bad = [m for m in mixes if m not in LAYER_MIXES]
    if bad:
        errors.append(f"unknown layer_mix {bad}; choose from {', '.join(LAYER_MIXES)}")
    out: list[tuple[int, str, tuple[int, ...]]] = []
    for mix in mixes:
        if mix == "none":
            out.extend((layer, "none", ()) for layer in layers)
        elif mix in LAYER_MIXES:
            chosen = tuple(sorted(set(layers)))
            if len(chosen) < 2:
                errors.append(f"layer_mix {mix!r} needs at least 2 layers (e.g. --layers last:4), got {list(chosen)}")
                continue
            out.append((chosen[-1], mix, chosen))
    return out


def build_head(spec: Any, shapes: HeadInput, num_classes: int) -> nn.Module:
    """The head of ``spec`` for inputs of ``shapes``.

    Linear heads read the vector the reader computed (CLS, GAP, ``pooled``, concatenated layers)
    through a stateless :class:`~epcache.probe.heads.VectorInput`; the state dict is still the
    reference ``Sequential(BN, Linear)`` (``0.*``, ``1.*``).

    Raises:
        HeadSpecError: the head does not accept these shapes.
    """
    if spec.kind == "linear":
        return ProbeHead(VectorInput(shapes.in_dim), nn.Linear(shapes.in_dim, num_classes), kind="linear")
    return create_head(
        spec, in_dim=shapes.in_dim, num_classes=num_classes, num_tokens=shapes.num_tokens, num_prefix=shapes.num_prefix
    )


def input_cost(spec: Any, shapes: HeadInput, num_classes: int) -> tuple[int, int]:
    """Trainable parameters and forward matmul FLOPs per image of ``spec`` on inputs of ``shapes``.

    The same counting as :func:`~epcache.probe.heads.head_cost` (meta device, ``FlopCounterMode``),
    but for the input a config really reads: a concatenation of layers is wider, a token mix longer.
    """
    with torch.device("meta"):
        head = build_head(spec, shapes, num_classes)
        x = torch.empty(1, shapes.in_dim) if shapes.vector else torch.empty(1, shapes.num_tokens, shapes.in_dim)
    head.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        head(x)
    params = sum(p.numel() for p in head.parameters() if p.requires_grad)
    return int(params), int(counter.get_total_flops())


def rebuild_head(meta: dict[str, Any]) -> nn.Module:
    """A saved head's module from its metadata (``load_head``): ``create_head`` or a vector-input linear head."""
    width = meta.get("vector_input")
    if width is not None:
        return ProbeHead(VectorInput(int(width)), nn.Linear(int(width), meta["num_classes"]), kind="linear")
    return create_head(meta["kind"], in_dim=meta["in_dim"], num_classes=meta["num_classes"],
                       num_tokens=meta["num_tokens"], num_prefix=meta["num_prefix"], **meta["options"])
