"""Field documentation that ``help()`` shows, for the config dataclasses (ExtractConfig, ProbeConfig).

A comment after a dataclass field is invisible to ``help(ExtractConfig)``. Declare the field with
:func:`doc` instead and decorate the class with :func:`document_fields`; the class docstring
then gains an ``Attributes:`` section listing every field, its type, its default and its text::

    @document_fields
    @dataclass(frozen=True)
    class ExtractConfig:
        model: str = doc(doc="alias from `epcache models` or any timm name")
        batch_size: int = doc(64, doc="samples per forward")

A config nested by concern declares each group with :func:`section`; :func:`leaf_fields` is then
the flat list of every setting (what the CLI, grid files and JSON records name), and the
``Attributes:`` section lists them under their group.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["doc", "document_fields", "field_doc", "leaf_fields", "section"]

T = TypeVar("T")
_MISSING: Any = dataclasses.MISSING


def doc(default: Any = _MISSING, *, doc: str, default_factory: Callable[[], Any] = _MISSING, check: Any = None) -> Any:
    """A dataclass field carrying its documentation (``metadata["doc"]``).

    ``check`` (``metadata["check"]``) is the field's allowed range, declared next to the field so one
    generic validator reads it and ``help()`` shows it (e.g. ``epcache.probe.config.fields.Range``).
    """
    metadata = {"doc": doc} if check is None else {"doc": doc, "check": check}
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def section(cls: type, *, doc: str) -> Any:
    """A dataclass field holding a group of settings (``metadata["section"]`` is the group's class).

    The group's own fields are the settings (:func:`leaf_fields`); its default is the group with
    every default.
    """
    return dataclasses.field(default_factory=cls, metadata={"doc": doc, "section": cls})


def leaf_fields(cls: type) -> list[dataclasses.Field[Any]]:
    """Every setting of config class ``cls``, the fields of its :func:`section` groups in place of the groups."""
    out: list[dataclasses.Field[Any]] = []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        group = f.metadata.get("section")
        out.extend(leaf_fields(group) if group is not None else [f])
    return out


def field_doc(cls: type, name: str) -> str:
    """The documentation of one setting (empty if it has none); a section's settings are found by name."""
    return next((str(f.metadata.get("doc", "")) for f in leaf_fields(cls) if f.name == name), "")


def document_fields(cls: type[T]) -> type[T]:
    """Append an ``Attributes:`` section (name, type, default, doc of every field) to the class docstring.

    The settings of a :func:`section` are listed under its name (``optim: training protocol``),
    one level deeper.
    """
    lines = ["", "Attributes:"]
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        group = f.metadata.get("section")
        if group is None:
            lines.extend(_field_lines(f, "    "))
            continue
        lines.append(f"    {f.name} ({group.__name__}): {f.metadata.get('doc', '')}".rstrip(": "))
        for g in dataclasses.fields(group):
            lines.extend(_field_lines(g, "        "))
    cls.__doc__ = (cls.__doc__ or cls.__name__).rstrip() + "\n" + "\n".join(lines) + "\n"
    return cls


def _field_lines(f: dataclasses.Field[Any], indent: str) -> list[str]:
    """``name (type) = default`` and its doc with its allowed range, for the ``Attributes:`` section."""
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    if f.default is not dataclasses.MISSING:
        default = f" = {f.default!r}"
    elif f.default_factory is not dataclasses.MISSING:
        default = f" = {f.default_factory()!r}"
    else:
        default = " (required)"
    lines = [f"{indent}{f.name} ({kind}){default}"]
    text = str(f.metadata.get("doc", ""))
    if str(f.metadata.get("check") or ""):  # the allowed range, e.g. [> 0]
        text = f"{text} [{f.metadata['check']}]".strip()
    if text:
        lines.append(f"{indent}    {text}")
    return lines
