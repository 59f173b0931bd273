"""Marking blocks missing for a repair, and where a block lives on disk (for messages and moves)."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from epcache._fs.paths import is_url
from epcache.errors import EpcacheError
from epcache.store.backends.hdf5 import HDF5FeatureStore
from epcache.store.backends.zarr import ZarrFeatureStore
from epcache.store.core import MISSING, FeatureStore

__all__ = ["READ_ERRORS", "MarkedBlocks", "block_file", "block_where", "file_state", "mark_blocks_missing"]

READ_ERRORS = (EpcacheError, OSError, ValueError, RuntimeError)  # what a damaged chunk raises in zarr/h5py


def mark_blocks_missing(
    store: FeatureStore, blocks: Iterable[tuple[str, int, int]], *, set_aside: Path | None = None
) -> MarkedBlocks:
    """Set the records of ``(split, layer, block)`` to MISSING so that a resumed extraction rewrites them.

    In a local zarr store the block's file (a chunk, or the whole shard) and anything occupying its
    path are moved out of the way: zarr merges a write into an existing shard and fails on a damaged
    one, and a directory where the chunk file belongs (or a file where a directory belongs) would
    stop the write. They go to ``set_aside`` (``MarkedBlocks.undo`` puts them back), or are deleted
    when it is None. HDF5 blocks are overwritten in place, so nothing moves.

    Returns:
        What was changed, enough to undo it exactly.

    Raises:
        ReadOnlyStoreError: the store is open read-only.
    """
    store._require_writable()
    previous: dict[tuple[str, int, int], int | None] = {}
    moved: list[tuple[str, str]] = []
    for split, layer, block in blocks:
        key = (split, layer, block)
        if key in previous:
            continue
        try:
            previous[key] = int(store.block_records(split, layer)[block])
        except READ_ERRORS:
            previous[key] = None
        for path in _block_occupants(store, split, layer, block):
            if set_aside is None and path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif set_aside is None:
                path.unlink()
            else:
                aside = set_aside / f"{len(moved)}.{path.name}"
                shutil.move(path, aside)
                moved.append((str(path), str(aside)))
        store._write_record(split, layer, block, MISSING)
    store._records_cache.clear()
    return MarkedBlocks(previous=previous, moved=tuple(moved))


@dataclass(frozen=True)
class MarkedBlocks:
    """What ``mark_blocks_missing`` changed: the previous records and the files it moved aside."""

    previous: dict[tuple[str, int, int], int | None]  # None: the record could not be read
    moved: tuple[tuple[str, str], ...] = ()  # (original path, where it went)

    def undo(self, store: FeatureStore) -> None:
        """Put every moved file back and every readable record back, as before the marking."""
        for original, aside in reversed(self.moved):
            path = Path(original)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(aside, original)
        for (split, layer, block), rec in self.previous.items():
            if rec is not None:
                store._write_record(split, layer, block, rec)
        store._records_cache.clear()



def block_file(store: FeatureStore, split: str, layer: int, block: int) -> Path | None:
    """A local zarr store's file for a block: ``c/<block>/0/0/0`` (a chunk, or the shard when sharded)."""
    if not isinstance(store, ZarrFeatureStore) or is_url(store.location):
        return None
    arr = store._array(split, "layers", str(layer))
    if getattr(arr.metadata.chunk_key_encoding, "separator", None) != "/":
        return None
    return Path(store.location) / "splits" / split / "layers" / str(layer) / "c" / str(block) / "0" / "0" / "0"


def block_where(store: FeatureStore, split: str, layer: int, block: int) -> str:
    path = block_file(store, split, layer, block)
    if path is not None:
        return path.as_posix()
    if isinstance(store, HDF5FeatureStore):
        start, stop = store.block_range(split, block)
        detail = ""
        try:
            info = store._ds(split, f"layers/{layer}").id.get_chunk_info_by_coord((start, 0, 0, 0))
            if info.byte_offset is not None:
                detail = f", {info.size} bytes at offset {info.byte_offset}"
        except READ_ERRORS:
            pass
        return f"{store.location}:/splits/{split}/layers/{layer} chunk at rows {start}-{stop}{detail}"
    return f"{store.location}/splits/{split}/layers/{layer} block {block}"


def file_state(store: FeatureStore, split: str, layer: int, block: int) -> str:
    """Why a zarr chunk read as zeros: its file is gone or is not a file."""
    path = block_file(store, split, layer, block)
    if path is None:
        return ""
    try:
        if path.is_file():
            return ""
        if path.is_dir():
            return "; a directory stands where the chunk file belongs"
    except OSError:
        pass
    if any(p.is_file() for p in list(path.parents)[:4]):
        return "; a file stands where a directory of the chunk path belongs"
    return "; the chunk file is missing (zarr reads it as the fill value, zeros)"


def _block_occupants(store: FeatureStore, split: str, layer: int, block: int) -> list[Path]:
    """The block's file of a local zarr store, or whatever occupies its path (a file in place of a directory)."""
    path = block_file(store, split, layer, block)
    if path is None:
        return []
    root = Path(store.location) / "splits" / split / "layers" / str(layer)
    for parent in reversed(list(path.parents)[:4]):  # c, c/<block>, c/<block>/0, c/<block>/0/0
        if parent.is_relative_to(root) and (parent.is_symlink() or (parent.exists() and not parent.is_dir())):
            return [parent]  # a file where a directory belongs: nothing below it exists
    return [path] if path.exists() or path.is_symlink() else []
