"""The library face: the names ``import epcache`` offers, each imported the first time it is touched.

``import epcache`` stays light (no torch, no timm) so that ``epcache --help`` starts fast; the
package's ``__getattr__`` and the deprecated entry-point names (``epcache._deprecated``) both
reach an entry point through :func:`load`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any

__all__ = ["EXPORTS", "lazy_face", "load"]

# name -> (module, attribute)
EXPORTS: dict[str, tuple[str, str]] = {
    "extract_store": ("epcache.extract", "extract_store"),
    "ExtractConfig": ("epcache.extract", "ExtractConfig"),
    "ExtractResult": ("epcache.extract", "ExtractResult"),
    "repair_store": ("epcache.extract", "repair_store"),
    "convert_store": ("epcache.convert", "convert_store"),
    "ConvertConfig": ("epcache.convert", "ConvertConfig"),
    "ConvertResult": ("epcache.convert", "ConvertResult"),
    "probe_store": ("epcache.probe", "probe_store"),
    "ProbeConfig": ("epcache.probe", "ProbeConfig"),
    "ProbeResult": ("epcache.probe", "ProbeResult"),
    "export_features": ("epcache.probe.solvers.export", "export_features"),
    "ExportConfig": ("epcache.probe.solvers.export", "ExportConfig"),
    "ExportResult": ("epcache.probe.solvers.export", "ExportResult"),
    "open_store": ("epcache.store", "open_store"),
    "describe_store": ("epcache.store", "describe_store"),
    "verify_store": ("epcache.store", "verify_store"),
    "list_stores": ("epcache.store", "list_stores"),
    "write_report": ("epcache.report", "write_report"),
    "attention_report": ("epcache.report", "attention_report"),
    "run_demo": ("epcache.demo", "run_demo"),
    "DemoConfig": ("epcache.demo", "DemoConfig"),
    "EpcacheError": ("epcache.errors", "EpcacheError"),
}


def load(name: str) -> Any:
    """The object ``epcache.<name>`` stands for, its module imported now if it was not yet."""
    module, attr = EXPORTS[name]
    return getattr(import_module(module), attr)


def lazy_face(package: str, face: Mapping[str, str],
              namespace: dict[str, Any]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's ``__getattr__`` and ``__dir__`` (PEP 562) for names imported the first time they are touched.

    ``face`` maps each name to the module defining it; a loaded name is stored in ``namespace`` (the
    package's ``globals()``), so the import runs once. Subpackages use it to stay light on import.
    """

    def getattr_(name: str) -> Any:
        if name in face:
            value = getattr(import_module(face[name]), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def dir_() -> list[str]:
        return sorted({*namespace, *face})

    return getattr_, dir_
