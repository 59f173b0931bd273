"""Trainable parameters and forward matmul FLOPs per image of each head (docs/EP_SPEC.md §2.5).

Heads are built on the meta device (no memory, no RNG draws) and a one-image forward runs
under ``torch.utils.flop_counter.FlopCounterMode``, which counts 2×MAC of every matmul and
convolution (softmax, norms and elementwise ops are not counted). EP runs in its default
pooling-first order, so its FLOPs are those of docs/EP_SPEC.md §1.5, not of the reference order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from epcache._text import FLOP_UNIT, format_flops
from epcache.errors import HeadSpecError

from ._registry import HeadSpec, create_head

__all__ = ["BASELINE_KINDS", "HeadCost", "format_heads_table", "head_cost", "heads_table"]

# Reference poolers in the order of docs/EP_SPEC.md §2.5, after linear/EP/MHCA.
BASELINE_KINDS: tuple[str, ...] = (
    "aim",
    "jepa",
    "siglip",
    "cait",
    "dinovit",
    "clip",
    "coca",
    "cae",
    "abmilp",
    "simpool",
    "esimpool",
    "dolg",
    "cbam",
)


@dataclass(frozen=True, slots=True)
class HeadCost:
    """Cost of one head configuration."""

    kind: str  # registry kind
    variant: str  # options, e.g. "queries=32,d_out=1" ("" for kinds without options)
    pooling_params: int  # trainable parameters of the pooling alone
    params: int  # trainable parameters of the whole head (pooling + classifier; BN has none)
    flops: int  # forward matmul FLOPs (2×MAC) for one image, classifier included


def head_cost(
    kind: str | HeadSpec,
    *,
    dim: int,
    num_classes: int,
    num_tokens: int,
    num_prefix: int = 1,
    **kwargs: Any,
) -> HeadCost:
    """Parameters and FLOPs per image of one head.

    Args:
        kind: head kind or spec.
        dim: token width D.
        num_classes: classes C.
        num_tokens: tokens the pooling sees, N (196 patch tokens at ViT-B/16; 197 for ``*_all``; for
            ``alf`` 2L, the CLS and GAP token of L layers).
        num_prefix: prefix tokens in front of the patches; only the linear probe and MP read them
            (their input is ``num_prefix + num_tokens`` tokens).
        **kwargs: the kind's options (``queries``, ``d_out``, ``num_heads``, ``tokens`` ...).

    Raises:
        HeadSpecError: unknown kind/option or options the dimensions do not allow.
    """
    spec = (
        HeadSpec.of(kind.kind, **{**kind.kwargs, **kwargs})
        if isinstance(kind, HeadSpec)
        else HeadSpec.of(kind, **kwargs)
    )
    with torch.device("meta"):
        head = create_head(spec, in_dim=dim, num_classes=num_classes, num_tokens=num_tokens, num_prefix=num_prefix)
        n_in = num_tokens + (num_prefix if spec.kind in ("linear", "mp") else 0)  # mp: CLS + patches
        tokens = torch.empty(1, n_in, dim)
    head.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        head(tokens)
    return HeadCost(
        kind=spec.kind,
        variant=spec.name[len(spec.kind) + 1 : -1] if spec.params else "",
        pooling_params=_trainable(head.pooling.parameters()),
        params=_trainable(head.parameters()),
        flops=int(counter.get_total_flops()),
    )


def heads_table(
    dim: int = 768,
    num_classes: int = 1000,
    num_tokens: int = 196,
    queries: Sequence[int] = (8, 32),
    d_out: Sequence[int] = (1,),
    *,
    kinds: Sequence[str] | None = None,
    layers: int = 12,
) -> list[HeadCost]:
    """Cost rows: linear (CLS), EP for every (queries, d_out), generic MHCA, ALF, MP, then the reference poolers.

    ALF attends over the CLS and GAP token of ``layers`` layers (2·layers tokens, not the patches);
    its row's variant names that layer count.

    EP combinations the width does not allow raise (they were asked for explicitly); baseline
    kinds that cannot be built at these dimensions (e.g. ``esimpool`` needs D divisible by 12,
    ``cbam``/``dolg`` a square N) are left out.

    Raises:
        HeadSpecError: an EP (queries, d_out) combination does not divide D.
    """
    rows = [head_cost("linear", dim=dim, num_classes=num_classes, num_tokens=num_tokens, tokens="cls")]
    rows += [
        head_cost("ep", dim=dim, num_classes=num_classes, num_tokens=num_tokens, queries=m, d_out=k)
        for k in d_out
        for m in queries
    ]
    for kind in ("mhca", "alf", "mp", *BASELINE_KINDS) if kinds is None else kinds:
        try:
            if kind == "alf":
                cost = head_cost(kind, dim=dim, num_classes=num_classes, num_tokens=2 * layers)
                rows.append(replace(cost, variant=f"{cost.variant},layers={layers}"))
                continue
            rows.append(head_cost(kind, dim=dim, num_classes=num_classes, num_tokens=num_tokens))
        except HeadSpecError:
            if kinds is not None:
                raise
    return rows


def format_heads_table(rows: Iterable[HeadCost]) -> str:
    """Aligned text table: kind, variant, pooling params, total params, MFLOP/img (the unit of every table)."""

    header = ("kind", "variant", "pooling params", "total params", f"{FLOP_UNIT}/img")
    body = [(r.kind, r.variant, f"{r.pooling_params:,}", f"{r.params:,}", format_flops(r.flops)) for r in rows]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    left = (True, True, False, False, False)

    def fmt(row: Sequence[str]) -> str:
        cells = [c.ljust(w) if lj else c.rjust(w) for c, w, lj in zip(row, widths, left, strict=True)]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(header), rule, *(fmt(r) for r in body)])


def _trainable(params: Iterable[torch.nn.Parameter]) -> int:
    return sum(p.numel() for p in params if p.requires_grad)
