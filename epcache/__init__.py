"""epcache: extract frozen-encoder tokens once, probe them many times.

The entry points are named verb_noun and, with the types they take, load on first use::

    import epcache
    epcache.extract_store(epcache.ExtractConfig(model=..., data=..., out=...))
    epcache.probe_store(epcache.ProbeConfig(store=..., head=("linear", "ep"), out=...))
    epcache.export_features(epcache.ExportConfig(store=..., layer=11, tokens="gap", out="feats.npz"))
    epcache.convert_store(epcache.ConvertConfig(src=..., dst=..., pool_patches=2))
    epcache.write_report(rundir)
    with epcache.open_store(path) as store: ...

``epcache.extract``, ``epcache.probe`` and ``epcache.convert`` are the subpackages; called as
functions they are the old names of the first three, kept for one release with a
``DeprecationWarning`` (what still works is listed in ``epcache._deprecated``).
See ``help(epcache.ExtractConfig)`` / ``help(epcache.ProbeConfig)`` for every field.
"""

from __future__ import annotations

from typing import Any

# bound here, so `epcache.probe(cfg)` works until the subpackage `epcache.probe` is imported (see _deprecated)
from epcache._deprecated import convert as convert
from epcache._deprecated import extract as extract
from epcache._deprecated import probe as probe
from epcache._lazy import EXPORTS, load

__version__ = "0.1.0"
__all__ = ["__version__", *sorted(EXPORTS)]


def __getattr__(name: str) -> Any:
    """Import an entry point the first time it is used (``import epcache`` loads no torch)."""
    if name in EXPORTS:
        value = load(name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'epcache' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *EXPORTS})
