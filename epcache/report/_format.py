"""One way to print a quantity: counts pluralised, FLOPs in one unit per column, short config labels.

The probe summary, report.md and the figures all label configs with :func:`short_label` (the
full name stays in results.jsonl) so that tables fit 100 columns and figure labels stay short.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["flops_unit", "format_flops", "plural", "short_label", "variant_label"]

_UNITS = ((1e9, "GFLOP"), (1e6, "MFLOP"), (1e3, "kFLOP"), (1.0, "FLOP"))


def plural(n: int, word: str, many: str | None = None) -> str:
    """``plural(1, "config")`` -> ``"1 config"``; ``plural(2, "config")`` -> ``"2 configs"``."""
    return f"{n:,} {word if n == 1 else (many or word + 's')}"


def flops_unit(values: Iterable[float]) -> tuple[float, str]:
    """(scale, unit) for a column of FLOP counts: the largest unit its smallest non-zero value reaches.

    One unit per column, chosen so that no entry prints as 0.000 (a tiny head next to a large one
    keeps its digits).
    """
    nonzero = [v for v in values if v > 0]
    low = min(nonzero) if nonzero else 1.0
    for scale, unit in _UNITS:
        if low >= scale:
            return scale, unit
    return 1.0, "FLOP"


def format_flops(value: float, scale: float) -> str:
    """``value / scale`` with three significant digits (``1.54``, ``154``, ``15,400``)."""
    x = value / scale
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}"


def variant_label(kind: str, options: Mapping[str, Any], tokens: str) -> str:
    """The head and its input in a few characters: ``linear[gap]``, ``ep q16``, ``ep q8 d2``, ``mhca h8``."""
    if kind == "linear":
        return f"linear[{tokens}]"
    parts = [kind]
    if "queries" in options:
        parts.append(f"q{options['queries']}")
    if options.get("d_out", 1) not in (1, None):
        parts.append(f"d{options['d_out']}")
    if "num_heads" in options:
        parts.append(f"h{options['num_heads']}")
    if tokens not in ("patch", ""):
        parts.append(f"[{tokens}]")
    return " ".join(parts)


def short_label(config: Mapping[str, Any], *, seed: bool = False) -> str:
    """A results row's config in a few words: ``ep q16 L2 lr=0.01`` (optimizer and wd only if not default)."""
    label = variant_label(config["kind"], config.get("head_options") or {}, str(config.get("tokens", "")))
    label += f" L{config['layer']} lr={float(config['lr']):.3g}"
    if float(config.get("wd") or 0) != 0:
        label += f" wd={float(config['wd']):.3g}"
    if seed:
        label += f" s{config['seed']}"
    return label
