"""Head registry and :class:`HeadSpec`, the canonical, hashable description of one head config.

A factory is registered per kind with keyword-only arguments: the four data arguments
(``in_dim``, ``num_classes``, ``num_tokens``, ``num_prefix``) plus the kind's *options* with
their defaults (``queries``, ``d_out``, ``num_heads``, ``tokens`` ...). Specs always hold every
option (defaults filled in, in signature order), so one configuration has exactly one name.

The registry also knows the solver kinds (``knn``, ``ridge``, ``logreg``, ``ncm``: fitted once on
pooled features by ``epcache.probe.solvers``, no factory), so :func:`head_kind` says of any
``--head`` entry whether it trains or is fitted, and nothing else decides that from its name.
"""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from epcache.errors import HeadSpecError
from epcache.probe.names import SOLVER_KINDS
from epcache.probe.names import known_heads_text as names_text

from ._base import ProbeHead

__all__ = [
    "SOLVER_KINDS",
    "HeadFactory",
    "HeadKind",
    "HeadSpec",
    "create_head",
    "head_kind",
    "head_options",
    "known_heads_text",
    "list_heads",
    "list_solvers",
    "register_head",
    "register_solver",
]

HeadKind = Literal["trained", "solver"]

HeadFactory = Callable[..., "ProbeHead | nn.Module"]  # ProbeHead, or a head with its own structure (mp)
_HEAD_FACTORIES: dict[
    str, HeadFactory
] = {}  # kind -> factory(*, in_dim, num_classes, num_tokens, num_prefix, **options)
_SOLVERS: dict[str, None] = dict.fromkeys(SOLVER_KINDS)  # kinds fitted by epcache.probe.solvers, in --head order
_DATA_ARGS = ("in_dim", "num_classes", "num_tokens", "num_prefix")
_NAME_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\((.*)\))?\s*$", re.DOTALL)


def register_head(kind: str) -> Callable[[HeadFactory], HeadFactory]:
    """Decorator registering a head factory under ``kind``.

    Raises:
        ValueError: ``kind`` is already registered (timm overwrites; here that is refused), or
            the factory does not take the data arguments as keyword-only parameters.
    """

    def wrap(factory: HeadFactory) -> HeadFactory:
        if kind in _HEAD_FACTORIES or kind in _SOLVERS:
            raise ValueError(f"head kind {kind!r} is already registered")
        params = inspect.signature(factory).parameters
        missing = [a for a in _DATA_ARGS if a not in params]
        if missing:
            raise ValueError(f"head factory for {kind!r} must accept keyword arguments {missing}")
        _HEAD_FACTORIES[kind] = factory
        return factory

    return wrap


def register_solver(kind: str) -> None:
    """Register ``kind`` as a solver head: planned as a solver spec, never built with ``create_head``.

    Raises:
        ValueError: ``kind`` is already registered (as a trained head or a solver).
    """
    if kind in _HEAD_FACTORIES or kind in _SOLVERS:
        raise ValueError(f"head kind {kind!r} is already registered")
    _SOLVERS[kind] = None


def list_heads() -> list[str]:
    """Registered trained head kinds, sorted."""
    return sorted(_HEAD_FACTORIES)


def list_solvers() -> list[str]:
    """Registered solver kinds, in registration order (knn, ridge, logreg, ncm first)."""
    return list(_SOLVERS)


def head_kind(text: str) -> HeadKind | None:
    """Whether a ``--head`` entry (``"knn(k=[10])"``, ``"ep(queries=8)"``) is a solver or a trained head.

    ``None``: the kind is registered as neither (the sweep's checks name it among the known kinds).
    """
    m = _NAME_RE.match(text)
    kind = m.group(1) if m else text
    if kind in _SOLVERS:
        return "solver"
    return "trained" if kind in _HEAD_FACTORIES else None


def known_heads_text() -> str:
    """What an unknown-head message offers instead: every registered kind, trained and solver."""
    return names_text(list_heads(), list_solvers())


def head_options(kind: str) -> dict[str, Any]:
    """The options of ``kind`` and their defaults, in signature order.

    Raises:
        HeadSpecError: unknown kind.
    """
    factory = _factory(kind)
    return {
        name: p.default
        for name, p in inspect.signature(factory).parameters.items()
        if name not in _DATA_ARGS and p.kind is inspect.Parameter.KEYWORD_ONLY
    }


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
        m = _NAME_RE.match(name)
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


def create_head(
    kind: str | HeadSpec,
    *,
    in_dim: int,
    num_classes: int,
    num_tokens: int | None = None,
    num_prefix: int = 0,
    **kwargs: Any,
) -> ProbeHead | nn.Module:
    """Build a probe head: ``pooling -> BN -> Linear``, or the kind's own module (``mp``).

    Args:
        kind: registered kind (see :func:`list_heads`) or a :class:`HeadSpec`.
        in_dim: token width D.
        num_classes: classifier outputs C.
        num_tokens: tokens per image N the head will see (needed by ``clip``'s position table).
        num_prefix: prefix tokens (CLS + registers) before the patch grid; the linear probe uses
            it to find CLS and the patches. Attention heads pool whatever tokens they are given.
        **kwargs: the kind's options; with a HeadSpec they override the spec's.

    Raises:
        HeadSpecError: unknown kind (the message lists the known ones), unknown option or an
            option the dimensions do not allow.
    """
    spec = (
        HeadSpec.of(kind.kind, **{**kind.kwargs, **kwargs})
        if isinstance(kind, HeadSpec)
        else HeadSpec.of(kind, **kwargs)
    )
    if in_dim < 1 or num_classes < 1:
        raise HeadSpecError(f"head needs in_dim >= 1 and num_classes >= 1, got {in_dim}, {num_classes}")
    return _HEAD_FACTORIES[spec.kind](
        in_dim=in_dim, num_classes=num_classes, num_tokens=num_tokens, num_prefix=num_prefix, **spec.kwargs
    )


def _factory(kind: str) -> HeadFactory:
    try:
        return _HEAD_FACTORIES[kind]
    except KeyError:
        raise HeadSpecError(f"unknown head kind {kind!r}; {known_heads_text()}") from None


def _canonical(kind: str, options: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    defaults = head_options(kind)
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
