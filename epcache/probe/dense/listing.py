"""The dense heads in `epcache heads`, after the trained and solver heads.

A user reads every ``--head`` name off `epcache heads`; the dense kinds are read from the dense
registry, so a kind added there is listed here with its defaults, and never listed by hand.
"""

from __future__ import annotations

import textwrap

from epcache.probe.dense.registry import DENSE_HEADS

__all__ = ["dense_head_params", "format_dense_table"]


def dense_head_params(kind: str, dim: int, num_classes: int) -> int:
    """Learned numbers of one head on one layer of width ``dim``; the memory heads learn none (they keep patches)."""
    d, c = dim, num_classes
    return {"dense-knn": 0, "hummingbird": 0, "dense-logreg": d * c + c, "seg-linear": 2 * d + d * c + c}[kind]


def format_dense_table(dim: int = 768, num_classes: int = 150) -> str:
    """Kind, learned parameters and what each fits, then its options with their defaults (tuples: the grid)."""
    lines = ["dense heads: per-patch, on a store extracted with --masks (per-pixel labels); scored by mIoU;",
             "  each selects its own options on a 10% holdout of the train images (docs/DENSE.md)"]
    rows = [(k, f"{dense_head_params(k, dim, num_classes):,}", spec.summary) for k, spec in DENSE_HEADS.items()]
    w0 = max(len(r[0]) for r in [("kind", "", ""), *rows])
    w1 = max(len(r[1]) for r in [("", "params", ""), *rows])
    lines.append(f"{'kind':<{w0}}  {'params':>{w1}}  fits")
    lines.append(f"{'-' * w0}  {'-' * w1}  {'-' * min(max(len(r[2]) for r in rows), 100 - w0 - w1 - 4)}")
    for kind, params, fits in rows:  # what each fits, wrapped at 100 columns under its own column
        lines += textwrap.wrap(f"{kind:<{w0}}  {params:>{w1}}  {fits}", 100, subsequent_indent=" " * (w0 + w1 + 4))
        pad, line = " " * (w0 + 2), f"{' ' * (w0 + 2)}options:"
        for name, v in DENSE_HEADS[kind].defaults.items():  # wrapped at 100 columns, as the other tables
            item = f" {name}={_value(v)},"
            if len(line) + len(item) > 100:
                lines.append(line)
                line = pad + "        "
            line += item
        lines.append(line.rstrip(","))
    return "\n".join(lines)


def _value(v: object) -> str:
    if isinstance(v, tuple) and len(v) > 6:  # a long grid: its size and ends
        return f"[{len(v)} values {min(v):g}..{max(v):g}]"  # type: ignore[type-var]
    if isinstance(v, tuple):
        return "[" + ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v) + "]"
    return f"{v:g}" if isinstance(v, float) else str(v)
