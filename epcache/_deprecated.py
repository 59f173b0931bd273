"""The entry points' old names, kept for one release: each warns and calls its ``verb_store`` successor.

``epcache.extract(cfg)``, ``epcache.probe(cfg)`` and ``epcache.convert(cfg)`` were once both a
subpackage and a function, by rewriting the subpackage's class. The functions are now
``epcache.extract_store``, ``epcache.probe_store`` and ``epcache.convert_store``; the functions
here keep the old calls working, with a ``DeprecationWarning`` naming the new one.

Where an old name still reaches one of them (nothing can do more without rewriting a module's class):

- ``epcache.extract.extract``, ``epcache.probe.probe``, ``epcache.convert.convert``: always.
- ``from epcache import probe`` (and extract, convert) and ``epcache.probe(cfg)``: ``import epcache``
  binds these functions, but importing the subpackage of the same name (``epcache.probe``, which
  ``epcache.ProbeConfig``, ``from epcache.probe import ...`` and the call itself do) rebinds
  ``epcache.probe`` to the subpackage, as Python binds every submodule on its parent. From then on
  ``epcache.probe(cfg)`` raises ``TypeError: 'module' object is not callable``; a name imported
  earlier with ``from epcache import probe`` keeps the function.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

from epcache._lazy import load

if TYPE_CHECKING:
    from epcache.convert import ConvertConfig, ConvertResult
    from epcache.extract import ExtractConfig, ExtractResult
    from epcache.probe import ProbeConfig, ProbeResult

__all__ = ["convert", "extract", "probe"]


def _warn(old: str, new: str) -> None:
    warnings.warn(
        f"epcache.{old}(config) is deprecated and goes in the next release; call epcache.{new}(config) instead "
        f"(same arguments)", DeprecationWarning, stacklevel=3,
    )


def extract(config: ExtractConfig, *, progress: bool = True) -> ExtractResult:
    """Deprecated name of :func:`epcache.extract_store`."""
    _warn("extract", "extract_store")
    run: Callable[..., ExtractResult] = load("extract_store")
    return run(config, progress=progress)


def probe(config: ProbeConfig, *, progress: bool = True) -> ProbeResult:
    """Deprecated name of :func:`epcache.probe_store`."""
    _warn("probe", "probe_store")
    run: Callable[..., ProbeResult] = load("probe_store")
    return run(config, progress=progress)


def convert(config: ConvertConfig, *, progress: bool = True) -> ConvertResult:
    """Deprecated name of :func:`epcache.convert_store`."""
    _warn("convert", "convert_store")
    run: Callable[..., ConvertResult] = load("convert_store")
    return run(config, progress=progress)
