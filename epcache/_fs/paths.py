"""Host paths a store's metadata records relative to the store itself (cache_layout.md §2.1).

Shared stores carry no absolute host path by default: the data root and a converted store's
source are recorded relative to the store's parent directory. Reading them back needs the
store's own location; this module is that one rule, for ``epcache info`` as for repair and
``epcache attention``.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

__all__ = ["HF_PREFIX", "is_url", "resolve_recorded_path", "store_parent"]

HF_PREFIX = "hf:"


def is_url(text: str) -> bool:
    """An fsspec URL other than ``file://`` (a local path in disguise)."""
    return "://" in text and not text.startswith("file://")


def store_parent(store: str) -> Path | None:
    """The directory a store's relative records start from; None for a store behind a URL."""
    if is_url(store):
        return None
    return Path(store.removeprefix("file://")).expanduser().resolve().parent


def resolve_recorded_path(text: str, store: str) -> str | None:
    """A recorded location as a usable one: a relative path resolved against the store's parent.

    URLs and absolute paths (older stores, ``--record-paths``) come back as they are; an ``hf:``
    prefix is kept. None when a relative record belongs to a store behind a URL (no base to
    resolve it against).
    """
    if is_url(text):
        return text
    prefix = HF_PREFIX if text.startswith(HF_PREFIX) else ""
    path = text.removeprefix(prefix).removeprefix("file://")
    if Path(path).is_absolute():
        return prefix + path
    base = store_parent(store)
    if base is None:
        return None
    return prefix + str((base / PurePosixPath(path)).resolve())
