"""Choose the backend for a location and create or open a store through it."""

from __future__ import annotations

import dataclasses
from os import PathLike
from pathlib import Path
from typing import Literal

from epcache.errors import ConfigError
from epcache.store.backends.hdf5 import HDF5FeatureStore
from epcache.store.backends.zarr import ZarrFeatureStore
from epcache.store.core import FeatureStore
from epcache.store.layout.meta import StoreMeta
from epcache.store.layout.taps import TAPS_DIR, tap_location

__all__ = ["StoreFormat", "create_store", "create_tap_store", "detect_format", "open_store"]

StoreFormat = Literal["zarr", "h5"]
_H5_SUFFIXES = (".h5", ".hdf5", ".hdf")


def detect_format(location: str | PathLike[str], format: str | None = None) -> StoreFormat:
    """``format`` if given, else HDF5 for .h5/.hdf5 paths or existing HDF5 files, else zarr.

    Raises:
        ConfigError: an unknown format, or HDF5 at a URL (HDF5 stores are local files).
    """
    loc = str(location)
    is_url = "://" in loc and not loc.startswith("file://")
    if format is not None:
        if format not in ("zarr", "h5"):
            raise ConfigError(f"unknown store format {format!r}; use zarr or h5")
    elif loc.lower().endswith(_H5_SUFFIXES):
        format = "h5"
    if format == "h5" and is_url:
        raise ConfigError(
            f"{loc}: an HDF5 store is one local file and cannot live at a URL; use a .zarr URL "
            "(zarr stores work on s3:// and any fsspec filesystem)"
        )
    if format is not None:
        return format  # type: ignore[return-value]
    p = Path(loc)
    if "://" not in loc and p.is_file():
        with open(p, "rb") as f:
            if f.read(8) == b"\x89HDF\r\n\x1a\n":
                return "h5"
    return "zarr"


def create_store(
    location: str | PathLike[str],
    meta: StoreMeta,
    *,
    format: str | None = None,
    overwrite: bool = False,
    compressor: str | None = None,
) -> FeatureStore:
    """Create an empty store (no splits yet) for writing.

    Raises:
        StoreExistsError: something exists at ``location`` and ``overwrite`` is False.
        ConfigError: bad format/compressor, or ``overwrite`` would delete something that is not a store.
    """
    loc = str(location)
    fmt = detect_format(loc, format)
    if compressor not in (None, "none"):
        meta = dataclasses.replace(meta, extra={**meta.extra, "compressor": compressor})
    if fmt == "h5":
        return HDF5FeatureStore.create(loc, meta, overwrite=overwrite, compressor=compressor)
    return ZarrFeatureStore.create(loc, meta, overwrite=overwrite, compressor=compressor)


def create_tap_store(parent: FeatureStore, name: str, meta: StoreMeta) -> FeatureStore:
    """Create tap ``name`` of ``parent`` (cache_layout.md §2.7), a zarr store nested in its directory.

    ``taps/`` itself is made a zarr group, so zarr and xarray see one hierarchy rather than a stray directory.

    Raises:
        ConfigError: ``parent`` is an HDF5 store (one file: nothing can nest in it).
    """
    if not isinstance(parent, ZarrFeatureStore):
        raise ConfigError(f"{parent.location} is an HDF5 store: taps are nested zarr stores; use a .zarr store")
    parent._group.require_group(TAPS_DIR)
    return create_store(tap_location(parent.location, name), meta, format="zarr",
                        compressor=parent.meta.extra.get("compressor"))


def open_store(
    location: str | PathLike[str], mode: Literal["r", "a"] = "r", *, verify_reads: bool = False, tap: str | None = None
) -> FeatureStore:
    """Open an existing store read-only (``"r"``) or for appending blocks/splits (``"a"``).

    ``verify_reads=True`` checks every chunk read against its records (cache_layout.md §3.3: the block
    record, a 1.1 shard's per-chunk records and the shard record they combine into, a 1.0 shard's
    record once all its chunks were read), so changed bytes or records fail loudly instead of training
    a probe on them; `epcache probe` opens stores this way. Absent chunks follow ``backends/chunks.py``.

    ``tap`` opens one of the store's taps (cache_layout.md §2.7), a complete store of its own, so every
    reader reads a tap the way it reads block outputs.

    Raises:
        StoreNotFoundError: nothing there, or not an epcache store.
        LayoutVersionError: a format version this epcache does not read.
        CorruptStoreError: metadata that does not parse or misses keys.
        StoreLockedError: an HDF5 store that another process is writing right now.
        ConfigError: ``tap`` names a tap the store does not list.
    """
    if mode not in ("r", "a"):
        raise ConfigError(f"mode must be 'r' or 'a', got {mode!r}")
    loc = str(location)
    if tap is not None:
        loc = _tap_of(loc, tap)
    cls = HDF5FeatureStore if detect_format(loc) == "h5" else ZarrFeatureStore
    store = cls.open(loc, read_only=mode == "r")  # a writer's open HDF5 file: the writer is named (backends/hdf5.py)
    store.verify_reads = verify_reads
    return store


def _tap_of(location: str, tap: str) -> str:
    """The location of tap ``tap``, after checking that the parent document lists it."""
    cls = HDF5FeatureStore if detect_format(location) == "h5" else ZarrFeatureStore
    with cls.open(location, read_only=True) as parent:
        taps = parent.meta.taps or {}
    if tap not in taps:
        listed = ", ".join(taps) if taps else "none"
        raise ConfigError(
            f"{location} has no tap {tap!r} (its taps: {listed}); re-extract with `--taps {tap}` "
            "(or open it without tap= for the block outputs)"
        )
    return tap_location(location, tap)
