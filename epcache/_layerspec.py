"""Layer specs (``all``, ``last``, ``-4:``, ``0,5,11``) resolved once to absolute indices.

timm's ``feature_take_indices`` reads a bare int as "the last n"; that is easy to misread, so
epcache resolves every spec to sorted absolute indices here and never stores the spec itself.
Extract, probe and convert all read the same syntax, so it lives outside all three (docs/DESIGN.md:
extract and probe never import each other).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from epcache.errors import ConfigError, UnknownLayerError

__all__ = ["parse_layers", "resolve_stored_layers"]

_SLICE = re.compile(r"^(-?\d*):(-?\d*)$")
_LAST_K = re.compile(r"^last:(\d+)$")


def parse_layers(spec: str, num_layers: int, *, model: str = "the model") -> tuple[int, ...]:
    """Resolve a layer spec against a model with ``num_layers`` layers.

    Accepted forms: ``all``; ``last``; ``last:K`` (the last K); a Python slice ``a:b`` such as
    ``-4:``; a comma list of (possibly negative) indices such as ``0,5,-1``. Parts may be mixed:
    ``0,-4:``.

    Raises:
        UnknownLayerError: an index outside the model's range (the message names the range).
        ConfigError: a spec that does not parse or selects nothing.
    """
    text = spec.strip().lower()
    if not text:
        raise ConfigError("empty --layers; use all, last, last:K, a slice like -4: or a list like 0,5,11")
    chosen: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        chosen.update(_parse_part(part, num_layers, model=model, spec=spec))
    if not chosen:
        raise ConfigError(f"--layers {spec!r} selects no layer of {model} ({num_layers} layers)")
    return tuple(sorted(chosen))


def _parse_part(part: str, n: int, *, model: str, spec: str) -> list[int]:
    valid = f"{model} has {n} layers: valid indices are 0..{n - 1} (or -{n}..-1)"
    if part == "all":
        return list(range(n))
    if part == "last":
        return [n - 1]
    if m := _LAST_K.match(part):
        k = int(m.group(1))
        if not 1 <= k <= n:
            raise UnknownLayerError(f"--layers {spec!r}: cannot take the last {k} layers; {valid}")
        return list(range(n - k, n))
    if m := _SLICE.match(part):
        a, b = (int(g) if g else None for g in m.groups())
        for bound in (a, b):
            if bound is not None and not -n <= bound <= n:
                raise UnknownLayerError(f"--layers {spec!r}: slice bound {bound} is out of range; {valid}")
        return list(range(n))[a:b]
    try:
        i = int(part)
    except ValueError:
        raise ConfigError(
            f"cannot parse --layers {spec!r} (part {part!r}); use all, last, last:K, a slice like -4: "
            "or a comma list like 0,5,11"
        ) from None
    if not -n <= i < n:
        raise UnknownLayerError(f"--layers {spec!r}: layer {i} is out of range; {valid}")
    return [i % n]


def resolve_stored_layers(
    entries: Iterable[int | str], stored: Sequence[int], num_blocks: int | None, *, model: str
) -> list[int]:
    """A probe's ``--layers`` entries as stored layer indices, in request order, without repeats.

    ``all`` and ``last`` name the stored layers; negative indices and spec strings (``-4:``, ``last:2``)
    count from the end of the model (``num_blocks``), as extraction does. Torch-free, so `epcache probe`
    refuses a layer the store lacks in the same words before torch loads.

    Raises:
        UnknownLayerError: a layer the store does not hold (the message lists the stored ones).
        ConfigError: no layer requested, or a spec that does not parse.
    """
    out: list[int] = []
    for e in entries:
        if e == "all":
            out.extend(stored)
        elif e == "last":
            out.append(stored[-1])
        elif isinstance(e, str) or int(e) < 0:  # -1, -4:, last:2 count from the end of the model, as in extract
            blocks = num_blocks or max(stored) + 1
            out.extend(parse_layers(str(e), blocks, model=model))
        else:
            out.append(int(e))
    missing = sorted({x for x in out if x not in stored})
    if missing:
        raise UnknownLayerError(
            f"the store has no layer(s) {missing} (stored layers: {', '.join(map(str, stored))}); "
            "choose from those, or re-extract with `--layers` including them"
        )
    if not out:
        raise ConfigError("no layer requested; use --layer N, --layers all or --layers last")
    return list(dict.fromkeys(out))
