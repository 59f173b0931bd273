"""Head registry: every head kind, trained (a factory) or solver (fitted by epcache.probe.solvers).

A factory is registered per kind with keyword-only arguments: the four data arguments
(``in_dim``, ``num_classes``, ``num_tokens``, ``num_prefix``) plus the kind's *options* with
their defaults (``queries``, ``d_out``, ``num_heads``, ``tokens`` ...). Specs always hold every
option (defaults filled in, in signature order), so one configuration has exactly one name.

The registry also knows the solver kinds (``knn``, ``ridge``, ``logreg``, ``ncm``: fitted once on
pooled features by ``epcache.probe.solvers``, no factory), so :func:`head_kind` says of any
``--head`` entry whether it trains or is fitted, and nothing else decides that from its name.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Literal

from torch import nn

from epcache.errors import HeadSpecError
from epcache.probe.names import SOLVER_KINDS
from epcache.probe.names import known_heads_text as names_text

from ._base import ProbeHead
from .spec import NAME_RE, HeadSpec, kind_options, register_options, set_unknown_kind_hint

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
        register_options(kind, {
            name: p.default for name, p in params.items()
            if name not in _DATA_ARGS and p.kind is inspect.Parameter.KEYWORD_ONLY
        })
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
    m = NAME_RE.match(text)
    kind = m.group(1) if m else text
    if kind in _SOLVERS:
        return "solver"
    return "trained" if kind in _HEAD_FACTORIES else None


def known_heads_text() -> str:
    """What an unknown-head message offers instead: every registered kind, trained and solver."""
    return names_text(list_heads(), list_solvers())


set_unknown_kind_hint(known_heads_text)  # unknown-kind messages from the spec name solvers too


def head_options(kind: str) -> dict[str, Any]:
    """The options of ``kind`` and their defaults, in signature order.

    Raises:
        HeadSpecError: unknown kind.
    """
    return kind_options(kind)


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
