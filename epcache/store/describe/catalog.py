"""`epcache ls`: find the stores under a directory or URL prefix and summarise each one.

A lab keeps its stores under one root (a shared disk or a bucket prefix); before extracting
``mae_vitb`` on ImageNet again, anyone can see that it exists, with which weights, splits and
layers, and whether it is complete. The walk is recursive but never descends into a store: a
zarr store is a directory holding ``zarr.json`` (so its thousands of chunk files are never
listed), an HDF5 store is an ``.h5``/``.hdf5``/``.hdf`` file. Hidden directories are skipped.
A store that cannot be read is listed with the reason instead of stopping the listing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from os import PathLike
from typing import Any

from epcache._text import human_bytes
from epcache.errors import EpcacheError, StoreNotFoundError
from epcache.store.describe.info import derived, format_ranges
from epcache.store.open import open_store
from epcache.store.ops.lock import LOCK_NAME, LockInfo, read_store_lock

__all__ = ["CatalogEntry", "CatalogSplit", "find_stores", "format_catalog", "list_stores"]

_H5_SUFFIXES = (".h5", ".hdf5", ".hdf")


@dataclass(frozen=True, slots=True)
class CatalogSplit:
    """One split of a listed store."""

    name: str
    num_samples: int  # N
    views: int  # V (1 + augmented views on view splits)
    num_classes: int
    complete: bool  # every block of every layer recorded written


@dataclass(frozen=True)
class CatalogEntry:
    """One store found by ``list_stores``: what it holds and whether it can be used.

    When the store cannot be read, ``error`` says why and the descriptive fields are empty.
    """

    location: str  # path or URL, as ``open_store`` takes it
    format: str  # "zarr" or "h5"
    backbone: str = ""  # timm name with tag
    weights_source: str = ""  # "checkpoint", "timm-hf-cache" or "random-init"
    weights_sha256: str = ""  # sha256 of the weights (of the seeded random weights for random-init)
    dataset: str = ""  # dataset name (the data root's basename) and kind, e.g. "imagenet (imagefolder)"
    splits: tuple[CatalogSplit, ...] = ()
    layers: tuple[int, ...] = ()  # absolute block indices
    augmented_views: int = 0  # K augmented views per image of the view splits
    dtype: str = ""
    size_bytes: int = 0
    complete: bool = False
    provenance: str = ""  # the STORED key (cache_layout.md §2.3): equal keys mean equal tokens for equal ids
    provenance_mismatch: bool = False  # the stored key is not the one recomputed from the document (edited)
    writer: LockInfo | None = None  # the writer holding the store's lock (an extraction in progress)
    error: str | None = None  # why the store could not be read
    derived_from: dict[str, Any] | None = None  # `epcache convert`: source provenance, ops, location (as `info`)

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["writer"] = self.writer.to_json() if self.writer is not None else None
        doc["splits"] = [asdict(s) for s in self.splits]
        doc["layers"] = list(self.layers)
        return doc


def find_stores(root: str | PathLike[str], *, max_depth: int | None = None) -> list[str]:
    """Locations of the store candidates under ``root`` (``root`` itself if it is one), sorted.

    Args:
        root: a local directory or an fsspec URL prefix (``s3://bucket/stores``).
        max_depth: 1 looks at ``root``'s direct children only; None walks the whole tree.

    Raises:
        StoreNotFoundError: ``root`` does not exist.
    """
    lister = _Lister(str(root))
    if not lister.exists(lister.root):
        raise StoreNotFoundError(f"{root} does not exist; pass a directory or URL prefix that holds stores")
    if lister.is_file(lister.root):
        return [lister.location(lister.root)] if lister.root.lower().endswith(_H5_SUFFIXES) else []
    return sorted(lister.location(p) for p in lister.walk(lister.root, max_depth))


def list_stores(root: str | PathLike[str], *, max_depth: int | None = None) -> list[CatalogEntry]:
    """Describe every epcache store under ``root`` (recursively; never inside a store).

    Zarr groups and HDF5 files without epcache metadata are not listed; stores that exist but
    cannot be read (corrupt metadata, a format version this epcache does not read) are listed
    with ``error`` set.

    Raises:
        StoreNotFoundError: ``root`` does not exist.
    """
    entries: list[CatalogEntry] = []
    for loc in find_stores(root, max_depth=max_depth):
        entry = _describe(loc)
        if entry is not None:
            entries.append(entry)
    return entries


def _describe(location: str) -> CatalogEntry | None:
    """The catalog entry of one store; None if ``location`` is not an epcache store."""
    fmt = "h5" if location.lower().endswith(_H5_SUFFIXES) else "zarr"
    writer = None
    try:
        writer = read_store_lock(location)
        with open_store(location) as store:
            m = store.meta
            splits = tuple(
                CatalogSplit(name, s.num_samples, s.views, len(s.classes), not store.missing_blocks(name))
                for name, s in sorted(store.splits.items())
            )
            kind = m.dataset.get("kind")
            return CatalogEntry(
                location=location,
                format=store.format,
                backbone=m.backbone.name,
                weights_source=m.backbone.source,
                weights_sha256=m.backbone.weights_sha256,
                dataset=f"{m.dataset.get('name', '?')}" + (f" ({kind})" if kind else ""),
                splits=splits,
                layers=tuple(m.layers),
                augmented_views=int(m.views.get("augmented", 0) or 0),
                dtype=m.dtype,
                size_bytes=store.size_bytes(),
                complete=bool(splits) and all(s.complete for s in splits),
                provenance=store.provenance,
                provenance_mismatch=store.provenance != store.computed_provenance(),
                writer=writer,
                derived_from=derived(m.derived_from, m.extra, location),
            )
    except StoreNotFoundError:
        return None  # a zarr group or HDF5 file made by something else (or removed meanwhile)
    except EpcacheError as e:
        return CatalogEntry(location=location, format=fmt, writer=writer, error=str(e))
    except OSError as e:  # unreadable file, vanished object, network error: say so, keep listing
        return CatalogEntry(location=location, format=fmt, writer=writer, error=f"{type(e).__name__}: {e}")


def format_catalog(entries: list[CatalogEntry], root: str | PathLike[str] | None = None) -> str:
    """A table, one store a line; locations relative to ``root`` when under it."""
    if not entries:
        return f"no epcache stores under {root}" if root is not None else "no epcache stores"
    base = str(root).rstrip("/") + "/" if root is not None else ""
    notes: list[str] = []
    # a line of the columns one compares across stores, then an indented line of the details (fits 100 columns)
    rows = [("STORE", "BACKBONE", "SPLITS", "LAYERS", "DTYPE", "SIZE", "STATUS")]
    details: list[list[str]] = [[]]
    for e in entries:
        name = e.location[len(base):] if base and e.location.startswith(base) else e.location
        name = name or e.location
        if e.error is not None:
            rows.append((name, "-", "-", "-", "-", "-", "unreadable"))
            details.append([])
            notes.append(f"{name}: {e.error}")
            continue
        weights = e.weights_source if e.weights_source == "random-init" else f"sha256:{e.weights_sha256[:10]}"
        splits = " ".join(f"{s.name}:{s.num_samples}" + (f"x{s.views}" if s.views > 1 else "") for s in e.splits)
        more: list[str] = []
        if e.writer is not None:
            status = "writing" if e.writer.stale is not True else "incomplete, stale lock"
            more.append(f"    writer: {e.writer.describe()}")
        elif e.complete:
            status = "complete"
        else:
            status = "incomplete: " + ",".join(s.name for s in e.splits if not s.complete)
        if e.provenance_mismatch:
            status += ", EDITED metadata"
            notes.append(f"{name}: warning: its stored provenance key is not the hash of its metadata (the "
                         f"document was edited after extraction); run `epcache verify {e.location}`")
        rows.append((name, e.backbone, splits or "-", format_ranges(list(e.layers)), e.dtype,
                     human_bytes(e.size_bytes), status))
        views = f"{e.augmented_views} augmented view" + ("s" if e.augmented_views != 1 else "")
        if e.derived_from is not None:  # made by `epcache convert`: its tokens are the source's, transformed
            more.insert(0, f"    derived from {e.derived_from.get('location') or '?'} by epcache convert "
                           f"({_ops_text(e.derived_from.get('ops'))})")
        details.append([f"    {weights} · {e.dataset} · {views} · provenance {e.provenance[:16]}", *more])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines: list[str] = []
    for r, detail in zip(rows, details, strict=True):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1])
        lines.extend(detail)
    return "\n".join([*lines, *notes])


# ---------------------------------------------------------------------------------------- helpers


def _ops_text(ops: Any) -> str:
    """``{'quantize': 'int8-channel', 'layers': [11]}`` -> ``quantize=int8-channel, layers=[11]``."""
    if not isinstance(ops, dict) or not ops:
        return "no ops recorded"
    return ", ".join(f"{k}={v}" for k, v in ops.items())


class _Lister:
    """Directory listing over a local path or an fsspec URL, with the same walk for both."""

    def __init__(self, root: str) -> None:
        self.url = "://" in root and not root.startswith("file://")
        if self.url:
            import fsspec

            self.protocol = root.split("://", 1)[0]
            self.fs, path = fsspec.core.url_to_fs(root)
            self.root = path.rstrip("/") or path
            self.fs.invalidate_cache()  # listings of other processes' writes must be fresh
        else:
            self.protocol = ""
            self.fs = None
            self.root = root.removeprefix("file://").rstrip("/") or "/"
        self._seen: set[tuple[int, int]] = set()  # (device, inode) of local directories walked

    def location(self, path: str) -> str:
        return f"{self.protocol}://{path}" if self.url else path

    def exists(self, path: str) -> bool:
        return bool(self.fs.exists(path)) if self.url else os.path.exists(path)

    def is_file(self, path: str) -> bool:
        return bool(self.fs.isfile(path)) if self.url else os.path.isfile(path)

    def children(self, path: str) -> list[tuple[str, str, bool]]:
        """(name, full path, is directory) of the entries of ``path``."""
        if not self.url:
            try:
                with os.scandir(path) as it:
                    return [(e.name, e.path, e.is_dir(follow_symlinks=True)) for e in it]
            except (NotADirectoryError, PermissionError, FileNotFoundError):
                return []
        out = []
        for info in self.fs.ls(path, detail=True):
            full = str(info["name"]).rstrip("/")
            out.append((full.rsplit("/", 1)[-1], full, info.get("type") == "directory"))
        return out

    def walk(self, path: str, max_depth: int | None, depth: int = 0) -> Iterator[str]:
        if not self.url:  # symlinks are followed: a link back to an ancestor would recurse forever
            try:
                st = os.stat(path)
            except OSError:
                return
            if (st.st_dev, st.st_ino) in self._seen:
                return
            self._seen.add((st.st_dev, st.st_ino))
        entries = self.children(path)
        if any(name == "zarr.json" and not is_dir for name, _, is_dir in entries):
            yield path  # a zarr store (or group): never descend into its chunk directories
            return
        if max_depth is not None and depth >= max_depth:
            return
        for name, full, is_dir in sorted(entries):
            if name.startswith(".") or name == LOCK_NAME:
                continue
            if is_dir:
                yield from self.walk(full, max_depth, depth + 1)
            elif name.lower().endswith(_H5_SUFFIXES):
                yield full
