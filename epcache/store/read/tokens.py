"""The read path of :class:`~epcache.store.FeatureStore`: vectors, rows, whole chunks, read-ahead.

The seam sits between what a store *is* (metadata, splits, block records, the write path, all in
``core.py``) and how its tokens come back out. Every token read funnels through one pipeline,
``_fetch_parts`` (stored bytes, through the chunk cache, plus the scales of a quantised chunk)
then ``_deliver`` (read checks, then logical dtype or decoded values), so keeping that pipeline
and all its callers together makes it one place to read when a read is wrong or slow.
Backends override ``_read_chunk_array`` with a direct read where the format allows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from epcache.store.backends.chunks import check_library_chunk
from epcache.store.layout.chunking import NUMPY_DTYPES
from epcache.store.layout.meta import StoreMeta
from epcache.store.protocol import StoreCore
from epcache.store.read.ahead import read_ahead
from epcache.store.read.checks import ReadChecks
from epcache.store.read.chunkcache import ChunkCache

__all__ = ["TokenReads"]

class TokenReads(StoreCore):
    """Mixin of :class:`~epcache.store.FeatureStore`: every read of labels, ids, order and tokens.

    Built on the store's ``split``/``_check_layer`` checks and the backends' ``_read_array``,
    ``_read_vector`` and (quantised stores) ``QuantArrays`` primitives.
    """

    meta: StoreMeta
    verify_reads: bool
    chunk_cache: ChunkCache | None
    _read_checks: ReadChecks

    def read_order(self, split: str) -> np.ndarray:
        """Stored row i holds dataset sample ``order[i]``."""
        self.split(split)
        return np.asarray(self._read_vector(split, "order"), dtype=np.int64)

    def read_labels(self, split: str) -> np.ndarray:
        """Labels in stored order (int64)."""
        self.split(split)
        return np.asarray(self._read_vector(split, "labels"), dtype=np.int64)

    def read_ids(self, split: str) -> list[str]:
        """Sample ids in stored order."""
        self.split(split)
        return [str(x) for x in self._read_vector(split, "ids")]

    def read_tokens(self, split: str, layer: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows ``[start, stop)`` as ``[n, V, T, D]`` in the logical dtype (bf16 via ml_dtypes)."""
        s = self.split(split)
        self._check_layer(layer)
        stop = s.num_samples if stop is None else stop
        if not 0 <= start <= stop <= s.num_samples:
            raise IndexError(f"rows [{start}, {stop}) out of range for split {split!r} ({s.num_samples})")
        if self.quant is None:
            return self._logical(self._read_array(split, layer, start, stop))
        return self._read_decoded_rows(split, layer, start, stop)

    def chunk_range(self, split: str, chunk: int) -> tuple[int, int]:
        s = self.split(split)
        if not 0 <= chunk < s.num_chunks:
            raise IndexError(f"chunk {chunk} out of range for split {split!r} ({s.num_chunks} chunks)")
        start = chunk * s.chunk_samples
        return start, min(s.num_samples, start + s.chunk_samples)

    def read_chunk(self, split: str, layer: int, chunk: int, *, decode_to: Any = None) -> np.ndarray:
        """One whole chunk: the fast path (one aligned read, no per-element indexing).

        ``decode_to`` (quantised stores only, cache_layout.md §3.5): the dtype codes are decoded into
        instead of ``meta.dtype``; a probe computing in float32 passes ``np.float32`` and skips a
        float16 round trip it would undo at once (and gets the exact products, not their fp16
        rounding). Unquantised chunks ignore it.
        """
        start, stop = self.chunk_range(split, chunk)
        self._check_layer(layer)
        return self._deliver(split, layer, chunk, self._fetch_parts(split, layer, chunk, start, stop), decode_to)

    def read_chunks(
        self, split: str, layer: int, chunks: Sequence[int] | np.ndarray, *, inflight: int | None = None,
        max_bytes: int | None = None, decode_to: Any = None,
    ) -> Iterator[tuple[int, np.ndarray]]:
        """``(chunk, tokens)`` in the given order, ``read_chunk`` of each with reads in flight (read/ahead.py)."""
        return read_ahead(self, split, layer, chunks, inflight=inflight, max_bytes=max_bytes, decode_to=decode_to)

    def _fetch_parts(self, split: str, layer: int, chunk: int, start: int, stop: int) -> tuple[np.ndarray, ...]:
        """A chunk's stored parts: its tokens, or its codes and their scales (§3.5); thread-safe (read ahead)."""
        raw = self._fetch_chunk(split, layer, chunk, start, stop)
        return (raw,) if self.quant is None else (raw, self._read_chunk_scales(split, layer, chunk))

    def _deliver(self, split: str, layer: int, chunk: int, parts: tuple[np.ndarray, ...], decode_to: Any) -> np.ndarray:
        """Check a fetched chunk against its records (``verify_reads``), then its values in the logical dtype."""
        if self.verify_reads:
            self._read_checks.check(self, split, layer, chunk, parts)
        if len(parts) == 1:
            return self._logical(parts[0])
        return self._decode_chunk(split, layer, parts[0], parts[1], decode_to)

    def _fetch_chunk(self, split: str, layer: int, chunk: int, start: int, stop: int) -> np.ndarray:
        """A chunk's stored bytes, through the chunk cache when one is set (thread-safe: read ahead)."""
        if self.chunk_cache is not None:
            return self.chunk_cache.fetch(self, split, layer, chunk, start, stop)
        return self._read_chunk_array(split, layer, chunk, start, stop)

    def _read_chunk_array(self, split: str, layer: int, chunk: int, start: int, stop: int) -> np.ndarray:
        """Backends override this with a direct read of the chunk's bytes where the format allows."""
        data = self._read_array(split, layer, start, stop)
        return check_library_chunk(self, split, layer, chunk, data)

    def _chunk_present(self, split: str, layer: int, chunk: int) -> bool:
        """Whether the backend stores chunk ``chunk`` (absent: it reads as the fill value, ``backends/chunks.py``).

        Backends that can look override this; a backend that cannot says present, so its zeros are
        checked like any other bytes, against the records.
        """
        return True

    def iter_chunks(self, split: str, layer: int, *, seed: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(first_row, tokens)`` per chunk, in seeded random order (sequential if None)."""
        n = self.split(split).num_chunks
        order = np.arange(n) if seed is None else np.random.default_rng(seed).permutation(n)
        for c in order.tolist():
            start, _ = self.chunk_range(split, c)
            yield start, self.read_chunk(split, layer, c)

    def read_rows(self, split: str, layer: int, rows: np.ndarray | Sequence[int]) -> np.ndarray:
        """Arbitrary rows, returned in the given order; reads are grouped by chunk.

        Element-wise fancy indexing (zarr ``oindex``) re-reads a shard per element; reading each
        touched chunk once and gathering in memory is orders of magnitude faster.
        """
        s = self.split(split)
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= s.num_samples):
            raise IndexError(f"rows out of range for split {split!r} ({s.num_samples} samples)")
        out = np.empty((len(rows), s.views, *self.meta.layer_shape(layer)), NUMPY_DTYPES[self.meta.dtype])
        chunk_of = rows // s.chunk_samples
        for c in np.unique(chunk_of).tolist():
            where = np.flatnonzero(chunk_of == c)
            start, _ = self.chunk_range(split, c)
            data = self.read_chunk(split, layer, c)
            out[where] = data[rows[where] - start]
        return out

    def _logical(self, raw: np.ndarray) -> np.ndarray:
        return raw.view(NUMPY_DTYPES[self.meta.dtype]) if self.meta.dtype == "bfloat16" else raw

