"""One check of a config's field values, whichever way they arrive: the CLI, a TOML grid file, Python.

A field's type is its annotation and its allowed range a :class:`Range` declared next to it
(``doc(..., check=Range(gt=0))``), so the check is generic and a field added later is checked as
soon as it is declared. The same value gets the same verdict and the same message from every door:
a ``nan`` learning rate in a grid file is refused exactly as ``--lr nan`` is, instead of training
and reporting a sweep the command line would have refused.

What is refused: a value of the wrong type (a bool where a number is expected, although ``bool``
is an ``int`` in Python; text where a number is expected), a non-finite number, a float with a
fraction where an integer is expected, and a number outside the field's range. Lists are checked
element by element. Only the command line's text and the elements of list fields are read as
numbers from strings (``--epochs 3``, ``lr = "1e-3,3e-3"``); ``epochs = "3"`` in Python or TOML is
text where a number belongs.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import os
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from epcache.errors import ConfigError

__all__ = ["FieldKind", "Range", "check_values", "field_kinds", "raise_errors", "split_list"]

_NOUNS: dict[type, tuple[str, str]] = {  # kind -> (one value, values of a list)
    bool: ("true or false", "true or false"),
    int: ("an integer", "integers"),
    float: ("a finite number", "finite numbers"),
    str: ("a string", "strings"),
}


@dataclass(frozen=True)
class Range:
    """The allowed values of a numeric field (or of each element of a list field), and why.

    ``why`` is added to the refusal when the bound is not self-evident (``batch_size >= 2``:
    BatchNorm needs batch statistics).
    """

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    why: str = ""

    def allows(self, x: float) -> bool:
        return not (
            (self.ge is not None and x < self.ge) or (self.gt is not None and x <= self.gt)
            or (self.le is not None and x > self.le) or (self.lt is not None and x >= self.lt)
        )

    def __str__(self) -> str:
        low = (f"[{_num(self.ge)}", f">= {_num(self.ge)}") if self.ge is not None else (
            (f"({_num(self.gt)}", f"> {_num(self.gt)}") if self.gt is not None else None)
        high = (f"{_num(self.le)}]", f"<= {_num(self.le)}") if self.le is not None else (
            (f"{_num(self.lt)})", f"< {_num(self.lt)}") if self.lt is not None else None)
        if low and high:
            return f"in {low[0]}, {high[0]}"
        return (low or high or ("", ""))[1]


@dataclass(frozen=True)
class FieldKind:
    """What a field's annotation allows: ``int | None`` -> scalars (int,), optional."""

    scalars: tuple[type, ...]  # kinds of a single value
    elements: tuple[type, ...]  # kinds of a tuple field's elements; empty: not a list field
    optional: bool
    range: Range | None

    def rule(self) -> str:
        """``must be an integer >= 1`` / ``values must be finite numbers > 0``."""
        bound = f" {self.range}" if self.range is not None and str(self.range) else ""
        if self.scalars:
            text = f"must be {' or '.join(_NOUNS.get(k, (k.__name__,))[0] for k in self.scalars)}{bound}"
            return text + (" or a list of them" if self.elements else "")
        return f"values must be {' or '.join(_NOUNS.get(k, ('', k.__name__))[1] for k in self.elements)}{bound}"


@functools.cache
def field_kinds(cls: type) -> dict[str, FieldKind]:
    """Every setting of dataclass ``cls`` with its kind, from its annotation and ``metadata["check"]``.

    A field that groups settings (``epcache._docs.section``) contributes its group's settings, so a
    config nested by concern is checked by the same flat names its CLI and grid files use.
    """
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("section") is not None:
            out.update(field_kinds(f.metadata["section"]))
            continue
        scalars: list[type] = []
        elements: list[type] = []
        optional = False
        for part in _union(hints[f.name]):
            if part is type(None):
                optional = True
            elif typing.get_origin(part) is tuple:
                elements.extend(_union(typing.get_args(part)[0]))
            else:
                scalars.append(part)
        out[f.name] = FieldKind(tuple(scalars), tuple(elements), optional, f.metadata.get("check"))
    return out


def check_values(cls: type, values: Mapping[str, Any], *, text: bool = False) -> tuple[dict[str, Any], list[str]]:
    """Check and normalise ``values`` (field name -> value) against the fields of ``cls``.

    List fields become tuples (a scalar, a list or a comma string), numbers take their field's
    type (an integral float for an int, an int for a float), paths become strings. ``text``: the
    values are command-line text, so a numeric field's string is read as a number first.

    Returns:
        The normalised values of the fields in ``values`` (unknown names pass through), and one
        message per refused field: ``<name> must be <rule>, got <value>``.
    """
    kinds = field_kinds(cls)
    out: dict[str, Any] = {}
    problems: list[str] = []
    for name, value in values.items():
        kind = kinds.get(name)
        if kind is None:
            out[name] = value
            continue
        try:
            out[name] = _check(kind, value, text)
        except _Refused as bad:
            why = f" ({kind.range.why})" if kind.range is not None and kind.range.why else ""
            problems.append(f"{name} {kind.rule()}{why}, got {_show(bad.value)}")
        except ConfigError as e:  # a list string that does not split (unbalanced parentheses)
            problems.append(f"{name}: {e}")
    return out, problems


def split_list(text: str) -> tuple[str, ...]:
    """``"linear,ep(queries=8,d_out=2)"`` -> ``("linear", "ep(queries=8,d_out=2)")``: commas outside parentheses.

    Raises:
        ConfigError: unbalanced parentheses.
    """
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
            continue
        depth += ch == "("
        depth -= ch == ")"
        if depth < 0:
            raise ConfigError(f"unbalanced ')' in list {text!r}")
        cur.append(ch)
    if depth:
        raise ConfigError(f"unbalanced '(' in list {text!r}")
    parts.append("".join(cur).strip())
    return tuple(p for p in parts if p)


# ---------------------------------------------------------------------------------------------- helpers


class _Refused(Exception):
    """One value a field does not take (internal: becomes a message naming the field)."""

    def __init__(self, value: Any) -> None:
        super().__init__(repr(value))
        self.value = value


def _check(kind: FieldKind, value: Any, text: bool) -> Any:
    if value is None and (kind.optional or not kind.scalars):
        return None if kind.optional else ()  # a list field left unset: empty
    if kind.elements and (isinstance(value, str) or _is_list(value) or not kind.scalars):
        items = split_list(value) if isinstance(value, str) else tuple(value) if _is_list(value) else (value,)
        return tuple(_one(kind.elements, kind.range, x, isinstance(x, str)) for x in items)
    return _one(kind.scalars, kind.range, value, text and isinstance(value, str))


def _one(kinds: tuple[type, ...], rng: Range | None, x: Any, from_text: bool) -> Any:
    """One value as one of ``kinds``, within ``rng``; ``from_text``: a string may spell a number."""
    if from_text and (int in kinds or float in kinds):
        x = _read_number(x.strip())  # layers: "-4:" and "last" stay text
    if isinstance(x, bool | np.bool_):
        if bool not in kinds:
            raise _Refused(x)
        return bool(x)
    if isinstance(x, numbers.Real):
        if int in kinds and isinstance(x, numbers.Integral):
            value: float = int(x)
        elif float in kinds and math.isfinite(x):
            value = float(x)
        elif int in kinds and math.isfinite(x) and float(x).is_integer():
            value = int(x)
        else:
            raise _Refused(x)
        if rng is not None and not rng.allows(value):
            raise _Refused(x)
        return value
    if str in kinds and isinstance(x, str | os.PathLike):
        return os.fspath(x).strip() if isinstance(x, str) else os.fspath(x)
    if not any(k in _NOUNS for k in kinds) and isinstance(x, kinds):  # a kind this check does not model
        return x
    raise _Refused(x)


def _read_number(s: str) -> Any:
    """``"3"`` -> 3, ``"1e-3"`` -> 0.001, ``"nan"`` -> nan (refused later as non-finite); else the text."""
    for read in (int, float):
        try:
            return read(s)
        except ValueError:
            continue
    return s


def _is_list(x: Any) -> bool:
    return isinstance(x, Iterable) and not isinstance(x, str | bytes | Mapping)


def _union(hint: Any) -> tuple[Any, ...]:
    return typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)


def _show(x: Any) -> str:
    if isinstance(x, bool | np.bool_):
        return f"{bool(x)!r} (a boolean)"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return repr(x)


def _num(x: float) -> str:
    if isinstance(x, int) and x >= 2**32 and x & (x - 1) == 0:
        return f"2**{x.bit_length() - 1}"
    return f"{x:g}" if isinstance(x, float) else str(x)


def raise_errors(errors: Sequence[str]) -> None:
    """Raise every collected problem as one ConfigError (no-op when there are none).

    Here, torch-free, because `epcache probe` refuses a mistyped option in the same words before torch loads.
    """
    if errors:
        unique = list(dict.fromkeys(errors))
        raise ConfigError(f"{len(unique)} problem(s) in the sweep, nothing was trained:\n  - " + "\n  - ".join(unique))
