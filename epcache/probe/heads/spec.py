"""The canonical, hashable description of one head config, with no torch behind it.

A config, a results row and a head file name a head by its spec (``ep(queries=8,d_out=1)``), so the
spec lives below every layer that names heads and needs nothing but each kind's option table: the
options and their defaults, in the order its factory declares them. The registry
(``heads/_registry.py``) fills that table as factories register; solver kinds take no options here.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from epcache.errors import HeadSpecError

__all__ = ["NAME_RE", "HeadSpec", "kind_options", "register_options", "set_unknown_kind_hint"]

NAME_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\((.*)\))?\s*$", re.DOTALL)
_OPTIONS: dict[str, dict[str, Any]] = {}  # trained kind -> {option: default}, in signature order
_UNKNOWN: list[Callable[[], str]] = []  # the registry's "what is known" text (it names the solvers too)


def register_options(kind: str, options: Mapping[str, Any]) -> None:
    """Record a trained head kind's options and defaults (the registry calls this as a factory registers)."""
    _OPTIONS[kind] = dict(options)


def set_unknown_kind_hint(hint: Callable[[], str]) -> None:
    """The callable that lists the known kinds in an unknown-kind message (the registry's)."""
    _UNKNOWN[:] = [hint]


def kind_options(kind: str) -> dict[str, Any]:
    """The options of ``kind`` and their defaults, in signature order.

    Raises:
        HeadSpecError: unknown kind.
    """
    try:
        return dict(_OPTIONS[kind])
    except KeyError:
        known = _UNKNOWN[0]() if _UNKNOWN else f"registered kinds: {', '.join(sorted(_OPTIONS))}"
        raise HeadSpecError(f"unknown head kind {kind!r}; {known}") from None


@dataclass(frozen=True, slots=True)
class HeadSpec:
    """One head configuration: a kind plus all its options, with a canonical name.

    ``HeadSpec.of("ep", queries=8)`` fills the defaults (``d_out=1``) and orders options as
    the factory declares them; ``spec.name`` is ``"ep(queries=8,d_out=1)"`` and
    ``HeadSpec.parse(spec.name) == spec``. Values are Python literals only (int, float, str,
    bool, None, tuples of those), so names survive JSON and parse without ``eval``.

    Raises:
        HeadSpecError: unknown kind, unknown option, or a value of the wrong type.
    """

    kind: str
    params: tuple[tuple[str, Any], ...] = ()  # (option, value) for every option, signature order

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", _canonical(self.kind, dict(self.params)))

    @classmethod
    def of(cls, kind: str, **options: Any) -> HeadSpec:
        """Spec from keyword options, e.g. ``HeadSpec.of("ep", queries=8)``."""
        return cls(kind, tuple(options.items()))

    @classmethod
    def parse(cls, name: str) -> HeadSpec:
        """Spec from a name such as ``"ep(queries=8,d_out=1)"``, ``"ep"`` or ``"linear(tokens='gap')"``.

        Values are read with :func:`ast.literal_eval`; nothing is evaluated.

        Raises:
            HeadSpecError: malformed name, positional values, non-literal values, unknown kind/option.
        """
        m = NAME_RE.match(name)
        if m is None:
            raise HeadSpecError(f"cannot parse head spec {name!r}; expected e.g. 'ep(queries=8,d_out=1)'")
        kind, args = m.group(1), (m.group(2) or "").strip()
        options: dict[str, Any] = {}
        if args:
            try:
                call = ast.parse(f"f({args})", mode="eval").body
            except SyntaxError as e:
                raise HeadSpecError(f"cannot parse head spec {name!r}: {e.msg}") from None
            assert isinstance(call, ast.Call)
            if call.args or any(kw.arg is None for kw in call.keywords):
                raise HeadSpecError(f"head spec {name!r}: options must be given as name=value")
            for kw in call.keywords:
                try:
                    options[str(kw.arg)] = ast.literal_eval(kw.value)
                except ValueError:
                    raise HeadSpecError(f"head spec {name!r}: value of {kw.arg!r} is not a Python literal") from None
        return cls.of(kind, **options)

    @property
    def kwargs(self) -> dict[str, Any]:
        """Options as a dict, ready for ``create_head(spec.kind, **spec.kwargs, ...)``."""
        return dict(self.params)

    @property
    def name(self) -> str:
        """Canonical name: ``kind(opt=value,...)``, or just ``kind`` for kinds without options."""
        if not self.params:
            return self.kind
        return f"{self.kind}({','.join(f'{k}={v!r}' for k, v in self.params)})"

    def __str__(self) -> str:
        return self.name


def _canonical(kind: str, options: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    defaults = kind_options(kind)
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        accepted = ", ".join(defaults) or "none"
        raise HeadSpecError(f"head kind {kind!r} has no option(s) {unknown}; accepted: {accepted}")
    out = []
    for name, default in defaults.items():
        value = options.get(name, default)
        out.append((name, _coerce(kind, name, value, default)))
    return tuple(out)


def _coerce(kind: str, name: str, value: Any, default: Any) -> Any:
    """Make equal configurations spell the same: ints where ints are expected, floats for floats."""
    if isinstance(value, list):
        value = tuple(value)
    try:
        literal = ast.literal_eval(repr(value)) == value
    except (ValueError, SyntaxError):
        literal = False
    if not literal:
        raise HeadSpecError(f"head {kind!r} option {name}={value!r} is not a plain Python literal")
    if default is None or value is None:
        return value
    if isinstance(default, bool) or isinstance(value, bool):
        if isinstance(default, bool) and isinstance(value, bool):
            return value
    elif isinstance(default, int) and isinstance(value, int):
        return value
    elif isinstance(default, int) and isinstance(value, float) and value.is_integer():
        return int(value)
    elif isinstance(default, float) and isinstance(value, int | float):
        return float(value)
    elif (isinstance(default, str) and isinstance(value, str)) or (
        isinstance(default, tuple) and isinstance(value, tuple)
    ):
        return value
    raise HeadSpecError(
        f"head {kind!r} option {name}={value!r} has type {type(value).__name__}, "
        f"expected {type(default).__name__} (default {default!r})"
    )
