"""Checking the bytes a reader reads against the records, without reading anything twice.

`epcache probe` opens stores with ``verify_reads=True``: every chunk it reads is checked the first
time it is read (cache_layout.md §3.3). Unsharded: the chunk is the block, checked against the
block record. Sharded, format 1.1: against the chunk's own record (``chunk_records``), and the
shard's record against its chunks' records combined (records only, once per shard). Sharded,
format 1.0 (block records only): each chunk's crc32c is kept and the shard is checked once its
last chunk has been read, by combining the chunks' crc32c in row order (``crc32c_concat``).
A chunk (or a whole shard) that passed is not hashed again on later reads of the same handle.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from epcache.errors import CorruptStoreError
from epcache.store.layout.chunking import MISSING
from epcache.store.layout.crc import crc32c_concat
from epcache.store.read.quantised import parts_checksum

if TYPE_CHECKING:
    from epcache.store.core import FeatureStore

__all__ = ["ReadChecks", "chunk_nbytes"]


class ReadChecks:
    """Per store handle: which chunks passed, and the pending chunk crc32c of 1.0 shards."""

    def __init__(self) -> None:
        self.passed: set[tuple[str, int, int]] = set()  # (split, layer, chunk)
        self.pending: dict[tuple[str, int, int], dict[int, tuple[int, int]]] = {}  # (split, layer, block)
        self.chunk_records: dict[tuple[str, int], np.ndarray | None] = {}  # read once per layer
        self.blocks_agree: set[tuple[str, int, int]] = set()  # 1.1 shards whose record matches their chunks'

    def check(self, store: FeatureStore, split: str, layer: int, chunk: int, parts: Sequence[np.ndarray]) -> None:
        """Raise ``CorruptStoreError`` if ``parts`` (chunk ``chunk`` as just read: tokens, or codes and
        scales, cache_layout.md §3.5) differ from its records."""
        if (split, layer, chunk) in self.passed:
            return
        s = store.split(split)
        per_block = s.block_samples // s.chunk_samples
        block = chunk // per_block
        record = int(store.block_records(split, layer)[block])
        if record == MISSING:
            return  # never written: reads as zeros, and probe refuses incomplete stores unless told
        start, stop = store.chunk_range(split, chunk)
        crc = parts_checksum(parts)
        nbytes = sum(p.nbytes for p in parts)
        what = f"chunk {chunk} (rows {start}-{stop}) of {split!r} layer {layer}"
        if per_block == 1:
            if crc != record:
                raise _changed(store.location, what)
            self.passed.add((split, layer, chunk))
            return
        if (split, layer) not in self.chunk_records:
            self.chunk_records[(split, layer)] = store._read_chunk_records(split, layer, 0, s.num_chunks)
        chunk_records = self.chunk_records[(split, layer)]
        if chunk_records is not None:
            if (split, layer, block) not in self.blocks_agree:
                _check_block_record(store, split, layer, block, record, chunk_records)
                self.blocks_agree.add((split, layer, block))
            if int(chunk_records[chunk]) != crc:
                raise _changed(store.location, what, "its per-chunk record")
            self.passed.add((split, layer, chunk))
            return
        seen = self.pending.setdefault((split, layer, block), {})
        seen[chunk] = (crc, nbytes)
        first, end = block * per_block, min(s.num_chunks, (block + 1) * per_block)
        if len(seen) == end - first:
            del self.pending[(split, layer, block)]
            if crc32c_concat([seen[c] for c in range(first, end)]) != record:
                b0, b1 = store.block_range(split, block)
                raise _changed(store.location, f"shard {block} (rows {b0}-{b1}) of {split!r} layer {layer}")
            self.passed.update((split, layer, c) for c in range(first, end))


def _check_block_record(
    store: FeatureStore, split: str, layer: int, block: int, record: int, chunk_records: np.ndarray
) -> None:
    """A 1.1 shard's record must be its chunks' records combined in row order (cache_layout.md §3.3).

    Each chunk is checked against its own record as it is read, so without this a shard record
    edited after extraction would never be looked at by a reader, while `epcache verify` (which
    hashes the whole shard against it) fails the store. Records only: nothing is read twice.
    """
    s = store.split(split)
    per_block = s.block_samples // s.chunk_samples
    chunks = range(block * per_block, min(s.num_chunks, (block + 1) * per_block))
    recs = [int(chunk_records[c]) for c in chunks]
    combined = [(r, chunk_nbytes(store, split, layer, c)) for r, c in zip(recs, chunks, strict=True)]
    if all(0 <= r <= 0xFFFFFFFF for r in recs) and crc32c_concat(combined) == record:
        return
    b0, b1 = store.block_range(split, block)
    raise CorruptStoreError(
        f"{store.location}: the record of shard {block} (rows {b0}-{b1}) of {split!r} layer {layer} disagrees with "
        "its per-chunk records: the records were edited or damaged after extraction. Run "
        f"`epcache verify {store.location} --repair` (add --data ROOT if the images moved since extraction)"
    )


def chunk_nbytes(store: FeatureStore, split: str, layer: int, chunk: int) -> int:
    """Bytes a chunk's crc32c covers: its rows' tokens, or codes then their scales (cache_layout.md §3.5)."""
    s = store.split(split)
    start, stop = store.chunk_range(split, chunk)
    t, d = store.meta.layer_shape(layer)
    n = (stop - start) * s.views * t * d * np.dtype(store.meta.storage_dtype).itemsize
    if store.quant is not None:
        a, b = store._scale_rows(split, chunk, chunk + 1)
        n += (b - a) * int(np.prod(store.scales_layout(s, layer)[0][1:])) * 4  # float32 scales
    return n


def _changed(location: str, what: str, against: str = "its record") -> CorruptStoreError:
    return CorruptStoreError(
        f"{location}: {what} fails its crc32c check against {against}: its bytes changed after "
        f"extraction. Run `epcache verify {location} --repair` (add --data ROOT if the images moved since extraction)"
    )
