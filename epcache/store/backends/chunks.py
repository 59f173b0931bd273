"""Chunk reads of every backend: the chunk-source protocol and the one policy for what comes back.

A local file read by ``preadv`` (``local.py``) and an object read by byte range (``remote.py``) are
both a :class:`ChunkSource`; :func:`read_chunk` is the only place that turns what a source says
(bytes, damage, or never stored) into a chunk or a :class:`~epcache.errors.CorruptStoreError`, with
one message, so the local and remote paths cannot drift apart.

The one rule for a chunk that is absent from the store (cache_layout.md §3.3), for every reader.

A chunk can be absent: never written (its block's record is -1), skipped by zarr-python because
it was all zeros (``write_empty_chunks=False``, its default, which format-1.0 writers used), or
lost (a deleted chunk file, a shard index entry gone). Every backend reads an absent chunk as the
fill value (zeros) without saying so, so whether those zeros may be trusted is decided here, once,
for `epcache verify` and for every read path of `epcache probe` (local ``preadv``, remote byte
ranges, zarr-python and h5py):

- its block's record is -1: the block was never written; zeros, and completeness is checked elsewhere;
- format 1.0, unsharded: valid exactly when the record is the crc32c of the chunk's zeros (the bytes of
  its rows in the storage dtype): what a writer that skipped an all-zero chunk recorded;
- format 1.0, sharded: a chunk has no record of its own; its zeros enter the shard's combined crc32c,
  which both readers compare with the shard's record;
- format 1.1 and later: every chunk of a written block exists, so an absent one is damage.

zarr-python and h5py reads do not tell an absent chunk from a present all-zero one: a chunk they
return as all zeros is looked up (``chunk_present``) and then put through the same rule.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from epcache.errors import CorruptStoreError
from epcache.store.layout.chunking import MISSING
from epcache.store.protocol import StoreCore

__all__ = [
    "NO_CHUNK",
    "ChunkDamaged",
    "ChunkSource",
    "absent_chunk_problem",
    "check_library_chunk",
    "chunk_present",
    "fill_absent_chunk",
    "read_chunk",
]

NO_CHUNK = 2**64 - 1  # zarr shard index entry (offset and nbytes) of an inner chunk that was never written


class ChunkDamaged(OSError):
    """What a source raises for bytes it cannot deliver: a truncated object, a shard index that does not fit."""


class ChunkSource(Protocol):
    """Where one array's uncompressed chunks live (cache_layout.md §4.1): files, shards or objects."""

    def read_into(self, chunk: int, out: np.ndarray, chunk_bytes: int) -> bool:
        """Fill ``out`` with chunk ``chunk``'s first ``out.nbytes`` bytes; False when it was never stored.

        ``chunk_bytes`` is the size a full inner chunk has in its shard, checked against the index.

        Raises:
            ChunkDamaged: the chunk cannot be read as its layout says.
        """
        ...

    def present(self, chunk: int) -> bool:
        """Whether chunk ``chunk`` is stored (its file or object, or an entry in its shard's index).

        Raises:
            ChunkDamaged: the shard index cannot be read.
        """
        ...


def read_chunk(
    store: StoreCore, source: ChunkSource, split: str, layer: int, chunk: int, out: np.ndarray, chunk_bytes: int
) -> np.ndarray:
    """Chunk ``chunk`` of a token array read from ``source`` into ``out``: damage raises, absence obeys the rule.

    Raises:
        CorruptStoreError: the chunk is damaged, or absent although its block is recorded written.
    """
    try:
        found = source.read_into(chunk, out, chunk_bytes)
    except ChunkDamaged as e:
        start, stop = store.chunk_range(split, chunk)
        raise CorruptStoreError(
            f"{store.location}: cannot read chunk {chunk} (rows {start}-{stop}) of {split!r} layer {layer} "
            f"({e}); run `epcache verify` to locate bad chunks"
        ) from None
    if not found:
        return fill_absent_chunk(store, split, layer, chunk, out)
    return out


def chunk_present(store: StoreCore, source: ChunkSource, split: str, layer: int, chunk: int) -> bool:
    """Whether ``source`` stores chunk ``chunk`` of a token array.

    Raises:
        CorruptStoreError: its shard index cannot be read.
    """
    try:
        return source.present(chunk)
    except ChunkDamaged as e:
        raise CorruptStoreError(
            f"{store.location}: cannot read the shard index of chunk {chunk} of {split!r} layer {layer} ({e}); "
            "run `epcache verify` to locate bad chunks"
        ) from None


def absent_chunk_problem(store: StoreCore, split: str, layer: int, chunk: int) -> str | None:
    """None when chunk ``chunk`` may be absent and reads as the fill value; else why its absence is damage."""
    s = store.split(split)
    block = chunk * s.chunk_samples // s.block_samples
    record = int(store.block_records(split, layer)[block])
    if record == MISSING:
        return None
    start, stop = store.chunk_range(split, chunk)
    where = f"chunk {chunk} (rows {start}-{stop}) of {split!r} layer {layer}"
    what = f"{where} is absent although block {block} is recorded"
    if store.format_version != "1.0":
        return f"{what} written (format {store.format_version} writes every chunk: a deleted or lost chunk file)"
    if s.block_samples != s.chunk_samples:
        return None  # its zeros are checked with the rest of the shard against the shard's record
    if record == _zeros_crc32c(store, layer, stop - start, s.views):
        return None  # a 1.0 writer skipped this all-zero chunk (zarr-python's write_empty_chunks=False)
    return (
        f"{what} written with crc32c {record:#010x}, which is not that of an all-zero chunk (a deleted "
        "or lost chunk file)"
    )


def fill_absent_chunk(store: StoreCore, split: str, layer: int, chunk: int, out: np.ndarray) -> np.ndarray:
    """``out`` filled with the fill value for an absent chunk the rule allows.

    Raises:
        CorruptStoreError: the rule does not allow it; names the chunk and the repair.
    """
    problem = absent_chunk_problem(store, split, layer, chunk)
    if problem is not None:
        raise CorruptStoreError(
            f"{store.location}: {problem}; run `epcache verify {store.location} --repair` to re-extract it"
        )
    out[...] = 0  # zarr's and HDF5's fill value, exactly what they return themselves
    return out


def check_library_chunk(store: StoreCore, split: str, layer: int, chunk: int, data: np.ndarray) -> np.ndarray:
    """A chunk as zarr-python or h5py returned it: all zeros may mean absent, so then the rule decides.

    Raises:
        CorruptStoreError: the chunk is absent and the rule does not allow it.
    """
    if data.size == 0 or np.ascontiguousarray(data).view(np.uint8).any() or store._chunk_present(split, layer, chunk):
        return data
    return fill_absent_chunk(store, split, layer, chunk, data)


def _zeros_crc32c(store: StoreCore, layer: int, rows: int, views: int) -> int:
    import google_crc32c

    nbytes = rows * views * int(np.prod(store.meta.layer_shape(layer))) * np.dtype(store.meta.storage_dtype).itemsize
    return int(google_crc32c.value(bytes(nbytes)))
