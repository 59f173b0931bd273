"""Short ``field: a vs b`` text for two stores' metadata that should match and do not.

Store metadata nests (``preprocessing.data_config.mean``) and holds long reprs
(``Normalize(mean=tensor([...]), std=tensor([...]))``); printing both documents whole gives a
two-thousand-character line in which the one differing number is hard to find. This names the
differing leaves by their dotted path, shows each pair with the shared part of long values cut
away, and stops at a budget, counting what it left out.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["describe_differences", "differing_fields"]

_MISSING = object()


def differing_fields(a: Any, b: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    """``(dotted path, value in a, value in b)`` of every leaf that differs, in a's key order.

    Dicts are compared key by key and lists of equal length item by item (``eval_transform[3]``);
    anything else, or lists of different lengths, is one leaf. A key only one side has shows
    ``(none)`` on the other.
    """
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for key in [*a, *(k for k in b if k not in a)]:
            where = f"{path}.{key}" if path else str(key)
            yield from differing_fields(a.get(key, _MISSING), b.get(key, _MISSING), where)
    elif isinstance(a, list | tuple) and isinstance(b, list | tuple) and len(a) == len(b) and not _scalars(a, b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            yield from differing_fields(x, y, f"{path}[{i}]")
    elif _norm(a) != _norm(b):
        yield path, a, b


def describe_differences(a: Any, b: Any, *, budget: int = 150, width: int = 24) -> str:
    """``backbone: 'vit_s' vs 'vit_b'; dim: 384 vs 768; and 2 more (x.y, z)``, about ``budget`` characters.

    Args:
        a, b: the two documents (dicts of JSON-like values).
        budget: characters the listed pairs may take; one pair is always listed.
        width: characters of each shown value at most.
    """
    diffs = list(differing_fields(a, b))
    if not diffs:
        return "no field differs"
    parts: list[str] = []
    used = 0
    for path, x, y in diffs:
        sx, sy = _short_pair(x, y, width)
        item = f"{path}: {sx} vs {sy}"
        if parts and used + len(item) > budget:
            break
        parts.append(item)
        used += len(item) + 2
    rest = [p for p, _, _ in diffs[len(parts):]]
    if rest:
        names = ", ".join(rest)
        names = names if len(names) <= 40 else names[:37].rsplit(",", 1)[0] + ", ..."
        parts.append(f"and {len(rest)} more ({names})")
    return "; ".join(parts)


def _scalars(a: Any, b: Any) -> bool:
    """Short lists of numbers or strings read best whole: ``mean: [0.5, 0.5, 0.5] vs [0.485, 0.456, 0.406]``."""
    return all(isinstance(v, int | float | str | bool) or v is None for v in [*a, *b]) and not any(
        isinstance(v, str) and len(v) > 24 for v in [*a, *b]
    )


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def _text(v: Any) -> str:
    if v is _MISSING:
        return "(none)"
    if isinstance(v, str):
        return " ".join(v.split())
    try:
        return json.dumps(v, sort_keys=True, default=str)
    except (TypeError, ValueError):
        return repr(v)


def _short_pair(x: Any, y: Any, width: int) -> tuple[str, str]:
    """Both values, each at most ``width`` characters, a long shared start and end cut to ``...``."""
    tx, ty = _text(x), _text(y)
    if len(tx) > width or len(ty) > width:
        start = 0
        while start < min(len(tx), len(ty)) and tx[start] == ty[start]:
            start += 1
        end = 0
        while end < min(len(tx), len(ty)) - start and tx[-1 - end] == ty[-1 - end]:
            end += 1
        keep = 4  # a little shared context on each side of the difference
        cut_start = start - keep if start > keep + 1 else 0
        cut_end = end - keep if end > keep + 1 else 0
        tx, ty = _clip(tx, cut_start, cut_end, width), _clip(ty, cut_start, cut_end, width)
    return (f"'{tx}'" if isinstance(x, str) else tx), (f"'{ty}'" if isinstance(y, str) else ty)


def _clip(s: str, cut_start: int, cut_end: int, width: int) -> str:
    core = s[cut_start: len(s) - cut_end if cut_end else None]
    text = ("..." if cut_start else "") + core + ("..." if cut_end else "")
    return text if len(text) <= width else text[: width - 3] + "..."
