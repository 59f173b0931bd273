"""epcache: extract frozen-encoder tokens once, probe them many times.

The main entry points and types are importable from here and load on first use::

    import epcache
    epcache.extract(epcache.ExtractConfig(model=..., data=..., out=...))
    epcache.probe(epcache.ProbeConfig(store=..., head=("linear", "ep"), out=...))
    epcache.write_report(rundir)
    with epcache.open_store(path) as store: ...

See ``help(epcache.ExtractConfig)`` / ``help(epcache.ProbeConfig)`` for every field.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from epcache._lazy import EXPORTS

__version__ = "0.1.0"
__all__ = ["__version__", *sorted(EXPORTS)]


def __getattr__(name: str) -> Any:
    """Import an entry point the first time it is used (``import epcache`` loads no torch)."""
    if name in EXPORTS:
        module, attr = EXPORTS[name]
        value = getattr(import_module(module), attr)
        if name not in ("extract", "probe", "convert"):  # those two are also subpackages: see epcache._lazy
            globals()[name] = value
        return value
    raise AttributeError(f"module 'epcache' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *EXPORTS})
