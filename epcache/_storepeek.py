"""A local zarr store's own account of itself, read without ``epcache.store``.

``epcache.store`` imports zarr, numpy and ml_dtypes (seconds under load); `epcache probe` checks a
mistyped store path, split or layer before any of them, from the root document alone. The zarr
backend and the store's split lookup raise these errors too, so both say the same words.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from epcache.errors import StoreNotFoundError, UnknownSplitError

__all__ = ["check_local_zarr", "read_local_zarr_document", "unknown_split_error"]

ATTR_KEY = "epcache"  # the zarr group attribute that holds the root document (cache_layout.md §2)
PEEK_MAX_BYTES = 4 << 20  # a larger zarr.json is left to the full open, which bounds and parses it itself


def check_local_zarr(location: str) -> Path:
    """The ``zarr.json`` of a local zarr store directory.

    Raises:
        StoreNotFoundError: nothing there, a file, or a directory without ``zarr.json``.
    """
    path = Path(location)
    if not path.exists():
        raise StoreNotFoundError(f"{location} does not exist; create it with `epcache extract`")
    if not path.is_dir():
        raise StoreNotFoundError(
            f"{location} is a file, but a zarr store is a directory; pass the .zarr directory "
            "(or an .h5 file for the HDF5 backend)"
        )
    if not (path / "zarr.json").is_file():
        raise StoreNotFoundError(
            f"{location} is not a zarr v3 store (no zarr.json); pass a store made by `epcache extract`"
        )
    return path / "zarr.json"


def read_local_zarr_document(location: str) -> dict[str, Any] | None:
    """The root document of a local zarr store, or None where only the full open can say what is wrong.

    None for anything but a plain JSON object with its splits, layers and backbone (a large
    document, not JSON, or missing keys): ``open_store`` then refuses it with its own message.

    Raises:
        StoreNotFoundError: as :func:`check_local_zarr`.
    """
    zarr_json = check_local_zarr(location)
    if zarr_json.stat().st_size > PEEK_MAX_BYTES:
        return None
    try:
        raw = json.loads(zarr_json.read_bytes()).get("attributes", {}).get(ATTR_KEY)
        doc = json.loads(raw) if isinstance(raw, str | bytes) else raw
    except (ValueError, AttributeError, OSError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("splits"), dict):
        return None
    layers, backbone = doc.get("layers"), doc.get("backbone")
    if not isinstance(layers, list) or not layers or not all(type(x) is int for x in layers):
        return None
    return doc if isinstance(backbone, dict) else None


def unknown_split_error(location: str, name: str, known: Iterable[str]) -> UnknownSplitError:
    """The refusal of a split the store does not hold, naming the ones it does."""
    listed = ", ".join(sorted(known)) or "none"
    return UnknownSplitError(
        f"{location} has no split {name!r} (splits: {listed}); extract it with `epcache extract --split NAME=SUBDIR`"
    )
