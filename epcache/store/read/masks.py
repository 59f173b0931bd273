"""Per-pixel labels beside the tokens: ``splits/<s>/masks`` and ``records/masks`` (cache_layout.md §3.6).

A mask array is ``[N, V, H, W]`` of uint8/uint16 class indices in stored order, chunked and
(zarr) sharded along samples exactly like the split's token arrays, so one write-block of a split
covers the same rows in every array. Each block gets its own record in ``records/masks`` after its
bytes are durable, like a layer's: resume redoes a block whose mask record is -1, and
``epcache verify`` recomputes each block's crc32c. Stores without masks have neither array.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from epcache.errors import CorruptStoreError, MissingMasksError, ShapeMismatchError
from epcache.store.layout.chunking import MISSING
from epcache.store.layout.crc import block_checksum
from epcache.store.layout.dense import DenseInfo
from epcache.store.layout.meta import SplitMeta, SplitSpec, StoreMeta
from epcache.store.protocol import StoreCore

__all__ = ["MASKS", "MaskArrays"]

MASKS: Any = "masks"  # the records name of the masks array (a layer's is its block index)


class MaskArrays(StoreCore):
    """Mixin of :class:`~epcache.store.FeatureStore`: create, write and read the ``masks`` arrays.

    Backends provide ``_create_masks_array``, ``_write_masks``, ``_read_masks`` and ``_has_masks``;
    the records go through the backends' ``_read_records``/``_write_record`` under the name ``masks``.
    """

    meta: StoreMeta

    def dense_info(self) -> DenseInfo | None:
        """Class names, ignore index, dtype and (H, W) of the masks; None for a store without masks."""
        return None if self.meta.dense is None else DenseInfo.from_document(self.meta.dense, self.location)

    def has_masks(self, split: str) -> bool:
        """Whether ``split`` holds per-pixel masks."""
        self.split(split)
        return self.meta.dense is not None and self._has_masks(split)

    def read_masks(self, split: str, rows: np.ndarray | Sequence[int] | slice, view: int = 0) -> np.ndarray:
        """Masks of stored ``rows`` (the rows token reads take) for one view, ``[n, H, W]`` uint8/uint16.

        Raises:
            MissingMasksError: the split has no masks.
            IndexError: a row or the view is out of range.
        """
        s = self._require_masks(split)
        if not 0 <= view < s.views:
            raise IndexError(f"view {view} out of range for split {split!r} ({s.views} views)")
        if isinstance(rows, slice):
            rows = np.arange(s.num_samples)[rows]
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= s.num_samples):
            raise IndexError(f"rows out of range for split {split!r} ({s.num_samples} samples)")
        info = self.dense_info()
        assert info is not None
        out = np.empty((len(rows), *info.size), np.dtype(info.dtype))
        chunk_of = rows // s.chunk_samples
        for c in np.unique(chunk_of).tolist():
            start = c * s.chunk_samples
            stop = min(s.num_samples, start + s.chunk_samples)
            data = self._read_masks(split, start, stop)
            where = np.flatnonzero(chunk_of == c)
            out[where] = data[rows[where] - start, view]
        return out

    def mask_records(self, split: str) -> np.ndarray:
        """crc32c per write-block of the split's masks; MISSING where a block was never written."""
        s = self._require_masks(split)
        rec = np.asarray(self._read_records(split, MASKS), dtype=np.int64)
        if rec.shape != (s.num_blocks,):
            raise CorruptStoreError(
                f"{self.location}: mask records of {split!r} have shape {rec.shape}, expected ({s.num_blocks},); "
                "re-extract the store"
            )
        return rec

    def read_mask_rows(self, split: str, start: int, stop: int) -> np.ndarray:
        """Stored rows ``[start, stop)`` of masks, every view, ``[n, V, H, W]``: what a block record covers."""
        s = self._require_masks(split)
        if not 0 <= start <= stop <= s.num_samples:
            raise IndexError(f"rows [{start}, {stop}) out of range for split {split!r} ({s.num_samples})")
        return np.asarray(self._read_masks(split, start, stop))

    def write_masks_block(self, split: str, block: int, data: np.ndarray) -> None:
        """Write one block of masks durably, then record its crc32c (never the other order)."""
        self._require_writable()
        s = self._require_masks(split)
        info = self.dense_info()
        assert info is not None
        start, stop = self.block_range(split, block)
        want = (stop - start, s.views, *info.size)
        if tuple(data.shape) != want or data.dtype != np.dtype(info.dtype):
            raise ShapeMismatchError(
                f"mask block {block} of {split!r} must be {info.dtype} {want}, got {data.dtype} {tuple(data.shape)}"
            )
        raw = np.ascontiguousarray(data).astype(np.dtype(info.dtype).newbyteorder("<"), copy=False)
        self._write_masks(split, start, raw)
        self._write_record(split, MASKS, block, block_checksum(raw))

    def missing_mask_blocks(self, split: str) -> list[int]:
        """Blocks whose masks are not recorded written; none for a split without masks."""
        if not self.has_masks(split):
            return []
        return np.flatnonzero(self.mask_records(split) == MISSING).tolist()

    def _add_masks(self, spec: SplitSpec, s: SplitMeta) -> None:
        """With a store's new split: its masks array and records, and its fingerprint in the ``dense`` key."""
        info = self.dense_info()
        if info is None:
            return
        if spec.masks_sha256 is None:
            raise ShapeMismatchError(f"{self.location} holds masks: split {spec.name!r} needs its masks_sha256")
        shape = (s.num_samples, s.views, *info.size)
        chunks = (max(1, s.chunk_samples), s.views, *info.size)
        shards = (s.block_samples, s.views, *info.size) if s.block_samples != s.chunk_samples else None
        self._create_masks_array(s, shape, chunks, shards, info.dtype)
        dense = dict(self.meta.dense or {})
        dense["masks_sha256"] = {**dict(dense.get("masks_sha256", {})), spec.name: spec.masks_sha256}
        self.meta = dataclasses.replace(self.meta, dense=dense)

    def _require_masks(self, split: str) -> SplitMeta:
        s = self.split(split)
        if not self.has_masks(split):
            raise MissingMasksError(
                f"{self.location}: split {split!r} has no per-pixel masks; extract a segmentation dataset with "
                "`epcache extract --masks` (cache_layout.md §3.6)"
            )
        return s

    # backend primitives
    def _create_masks_array(
        self, s: SplitMeta, shape: tuple[int, ...], chunks: tuple[int, ...], shards: tuple[int, ...] | None, dtype: str
    ) -> None:
        raise NotImplementedError

    def _write_masks(self, split: str, start: int, data: np.ndarray) -> None:
        raise NotImplementedError

    def _read_masks(self, split: str, start: int, stop: int) -> np.ndarray:
        raise NotImplementedError

    def _has_masks(self, split: str) -> bool:
        raise NotImplementedError
