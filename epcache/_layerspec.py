"""Layer specs (``all``, ``last``, ``-4:``, ``0,5,11``) resolved once to absolute indices.

timm's ``feature_take_indices`` reads a bare int as "the last n"; that is easy to misread, so
epcache resolves every spec to sorted absolute indices here and never stores the spec itself.
Extract, probe and convert all read the same syntax, so it lives outside all three (docs/DESIGN.md:
extract and probe never import each other).
"""

from __future__ import annotations

import re

from epcache.errors import ConfigError, UnknownLayerError

__all__ = ["parse_layers"]

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
