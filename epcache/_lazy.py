"""The library face: ``epcache.extract(...)``, ``epcache.probe(...)`` and friends, imported on first use.

``import epcache`` stays light (no torch, no timm) so that ``epcache --help`` starts fast; each
name in :data:`EXPORTS` is imported the first time it is touched.

``epcache.extract``, ``epcache.probe`` and ``epcache.convert`` are each both a subpackage and the function a user calls.
Once ``epcache.extract`` (the package) is imported, Python binds that attribute to the module, so
the subpackages make themselves callable (:func:`callable_module`): ``epcache.extract(cfg)``
calls ``epcache.extract.extract(cfg)`` whichever of the two the attribute holds.
"""

from __future__ import annotations

import sys
import types
from typing import Any

__all__ = ["EXPORTS", "callable_module"]

EXPORTS: dict[str, tuple[str, str]] = {
    "extract": ("epcache.extract", "extract"),
    "ExtractConfig": ("epcache.extract", "ExtractConfig"),
    "ExtractResult": ("epcache.extract", "ExtractResult"),
    "repair_store": ("epcache.extract", "repair_store"),
    "convert": ("epcache.convert", "convert"),
    "ConvertConfig": ("epcache.convert", "ConvertConfig"),
    "ConvertResult": ("epcache.convert", "ConvertResult"),
    "probe": ("epcache.probe", "probe"),
    "ProbeConfig": ("epcache.probe", "ProbeConfig"),
    "ProbeResult": ("epcache.probe", "ProbeResult"),
    "open_store": ("epcache.store", "open_store"),
    "describe_store": ("epcache.store", "describe_store"),
    "verify_store": ("epcache.store", "verify_store"),
    "list_stores": ("epcache.store", "list_stores"),
    "write_report": ("epcache.report", "write_report"),
    "attention_report": ("epcache.report._attention", "attention_report"),
    "run_demo": ("epcache.demo", "run_demo"),
    "DemoConfig": ("epcache.demo", "DemoConfig"),
    "EpcacheError": ("epcache.errors", "EpcacheError"),
}


class _CallableModule(types.ModuleType):
    """A package that is also its main function (``epcache.extract(cfg)``)."""

    __entry__: str

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self, self.__entry__)(*args, **kwargs)


def callable_module(name: str, entry: str) -> None:
    """Make the module ``name`` callable as its function ``entry`` (see the module docstring)."""
    module = sys.modules[name]
    module.__class__ = _CallableModule
    module.__entry__ = entry  # type: ignore[attr-defined]
