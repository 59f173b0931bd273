"""The library face: the names ``import epcache`` offers, each imported the first time it is touched.

``import epcache`` stays light (no torch, no timm) so that ``epcache --help`` starts fast; the
package's ``__getattr__`` and the deprecated entry-point names (``epcache._deprecated``) both
reach an entry point through :func:`load`.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["EXPORTS", "load"]

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
