"""One way to print a quantity: counts pluralised, FLOPs in one unit, short config labels.

FLOPs are always MFLOP per image (:data:`FLOP_UNIT`), in every table. The probe summary,
report.md and the figures label configs with :func:`short_label` (the full name stays in
results.jsonl) so that tables fit 100 columns and figure labels stay short.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["FLOP_SCALE", "FLOP_UNIT", "format_flops", "human_bytes", "plural", "short_label", "variant_label"]

FLOP_SCALE, FLOP_UNIT = 1e6, "MFLOP"  # one unit for FLOPs in every table (summary, report.md, `epcache heads`)


def plural(n: int, word: str, many: str | None = None) -> str:
    """``plural(1, "config")`` -> ``"1 config"``; ``plural(2, "config")`` -> ``"2 configs"``."""
    return f"{n:,} {word if n == 1 else (many or word + 's')}"


def format_flops(value: float) -> str:
    """FLOPs in :data:`FLOP_UNIT` with three significant digits: ``0.00154``, ``0.862``, ``9,635``.

    Significant digits, not decimals: a tiny head next to a large one never prints as 0.000.
    """
    x = value / FLOP_SCALE
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
    if config.get("solver"):  # k-NN, ridge, logreg, ncm: no lr; the pooled input and the shots say it
        label = f"{config['kind']}[{config.get('tokens', '')}] L{config['layer']}"
        return label + (f" {config['shots']}-shot" if config.get("shots") else "")
    label = variant_label(config["kind"], config.get("head_options") or {}, str(config.get("tokens", "")))
    label += f" L{config['layer']} lr={float(config['lr']):.3g}"
    if float(config.get("wd") or 0) != 0:
        label += f" wd={float(config['wd']):.3g}"
    if seed:
        label += f" s{config['seed']}"
    return label


def human_bytes(n: float) -> str:
    """1536 -> "1.5 KB": sizes in the CLI's summaries."""
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} TB"
