"""A local directory of copies of remote chunks, so that epochs after the first read local disk.

``epcache probe --cache-dir DIR`` (``ProbeConfig.cache_dir``) sets a :class:`ChunkCache` on the
stores it opens; every chunk read of a read-only store behind a URL then goes through it. An entry
is one chunk's bytes exactly as stored (C order, little-endian storage dtype: the bytes its crc32c
record covers), at::

    DIR/<provenance>/<split>/<layer>/<chunk>-<crc32c as 8 hex digits>.bin

The key holds the store's provenance (two stores with one provenance hold identical tokens), the
array and the chunk's own crc32c record: the block record where a chunk is a block, the
per-chunk record of a sharded format-1.1 store. An entry is served only when its bytes hash to
the record in its name, so a torn write (a killed run), a tampered file or a store re-extracted
with other bytes can never be served: such an entry is counted in ``stats.rejected``, deleted and
fetched again. The read checks (``verify_reads``) still run on every chunk served. Chunks without
a per-chunk record (sharded format-1.0 stores, never-written blocks) are not cached. Entries are
written to a temporary name and renamed into place.

The cache never changes a byte that is read, so it changes no result; it is not recorded in
result rows. Size: ``max_bytes`` evicts the least recently used entries once the directory holds
more; without it the directory grows to the size of the chunks read. Deleting the directory (or
any file in it) at any time, between runs, is safe: entries are fetched again.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from epcache.errors import ConfigError
from epcache.store._crc import block_checksum
from epcache.store._plan import MISSING

if TYPE_CHECKING:
    from epcache.store._base import FeatureStore

__all__ = ["CacheStats", "ChunkCache"]

_SAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass
class CacheStats:
    """What the cache did since it was made (for tests and progress notes; never in result rows)."""

    hits: int = 0  # chunks served from the directory
    misses: int = 0  # chunks fetched from the store (then written to the directory)
    rejected: int = 0  # entries whose bytes did not match their record: deleted and fetched again
    evicted: int = 0  # entries deleted to stay under max_bytes


class ChunkCache:
    """Local copies of remote chunks, keyed by provenance, array and the chunk's crc32c record.

    Args:
        root: the cache directory (created on first write).
        max_bytes: evict least recently used entries beyond this size; None: no limit.

    Raises:
        ConfigError: ``root`` exists and is not a directory, or ``max_bytes`` is not positive.
    """

    def __init__(self, root: str | os.PathLike[str], *, max_bytes: int | None = None) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"--cache-dir {self.root} is a file; pass a directory (it is created if missing)")
        if max_bytes is not None and max_bytes <= 0:
            raise ConfigError(f"the chunk cache size limit must be positive, got {max_bytes} bytes")
        self.max_bytes = max_bytes
        self.stats = CacheStats()
        self._lock = threading.Lock()
        self._size: int | None = None  # bytes held, scanned on the first write under a limit
        self._records: dict[tuple[int, str, int], tuple[np.ndarray, np.ndarray | None]] = {}
        self._records_lock = threading.Lock()

    def applies_to(self, store: FeatureStore) -> bool:
        """Only read-only stores behind a URL: local disk needs no copy, and a writable store may change."""
        return store.is_remote and store.read_only

    def fetch(self, store: FeatureStore, split: str, layer: int, chunk: int, start: int, stop: int) -> np.ndarray:
        """Chunk ``chunk``'s stored bytes (as ``_read_chunk_array``): from the directory when it holds them."""
        if not self.applies_to(store):
            return store._read_chunk_array(split, layer, chunk, start, stop)
        crc = self._expected_crc(store, split, layer, chunk)
        if crc is None:
            return store._read_chunk_array(split, layer, chunk, start, stop)
        path = self.root / _SAFE.sub("_", store.provenance) / split / str(layer) / f"{chunk}-{crc:08x}.bin"
        shape = (stop - start, store.split(split).views, *store.meta.layer_shape(layer))
        held = self._load(path, shape, np.dtype(store.meta.storage_dtype).newbyteorder("<"), crc)
        if held is not None:
            with self._lock:
                self.stats.hits += 1
            return held
        raw = store._read_chunk_array(split, layer, chunk, start, stop)
        with self._lock:
            self.stats.misses += 1
        if block_checksum(raw) == crc:  # never keep bytes that fail their record: the read check reports them
            self._save(path, raw)
        return raw

    # ------------------------------------------------------------------ internals
    def _expected_crc(self, store: FeatureStore, split: str, layer: int, chunk: int) -> int | None:
        s = store.split(split)
        per_block = s.block_samples // s.chunk_samples
        blocks, chunks = self._layer_records(store, split, layer)
        block_record = int(blocks[chunk // per_block])
        if block_record == MISSING:
            return None
        if per_block == 1:
            return block_record
        if chunks is None or int(chunks[chunk]) == MISSING:
            return None
        return int(chunks[chunk])

    def _layer_records(self, store: FeatureStore, split: str, layer: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Block and per-chunk records of a layer, read once (read-ahead threads wait for the first)."""
        key = (id(store), split, layer)
        with self._records_lock:
            if key not in self._records:
                s = store.split(split)
                shared = store._read_checks.chunk_records  # the read checks' copy: each record array read once
                if s.block_samples != s.chunk_samples and (split, layer) not in shared:
                    shared[(split, layer)] = store._read_chunk_records(split, layer, 0, s.num_chunks)
                chunks = shared.get((split, layer)) if s.block_samples != s.chunk_samples else None
                self._records[key] = (store.block_records(split, layer), chunks)
            return self._records[key]

    def _load(self, path: Path, shape: tuple[int, ...], dtype: np.dtype, crc: int) -> np.ndarray | None:
        out = np.empty(shape, dtype)
        view = memoryview(out.reshape(-1).view(np.uint8))
        try:
            with open(path, "rb") as f:
                n = f.readinto(view)
                extra = f.read(1)
        except FileNotFoundError:
            return None
        except OSError:
            n, extra = -1, b""
        if n == len(view) and not extra and block_checksum(out) == crc:
            with contextlib.suppress(OSError):
                os.utime(path)  # least recently used goes first under max_bytes
            return out
        with self._lock:
            self.stats.rejected += 1
        with contextlib.suppress(OSError):
            path.unlink()
        return None

    def _save(self, path: Path, raw: np.ndarray) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
        try:
            with open(tmp, "wb") as f:
                f.write(memoryview(np.ascontiguousarray(raw).reshape(-1).view(np.uint8)))
            os.replace(tmp, path)  # a killed run leaves a .tmp file at most, never a torn entry
        except OSError:
            tmp.unlink(missing_ok=True)
            return  # a full or read-only cache disk costs speed, never a result
        if self.max_bytes is not None:
            self._account(raw.nbytes)

    def _account(self, added: int) -> None:
        assert self.max_bytes is not None
        with self._lock:
            if self._size is None:
                self._size = sum(_size_of(p) for p in self.root.rglob("*.bin"))
            else:
                self._size += added
            if self._size <= self.max_bytes:
                return
            entries = sorted((_mtime_of(p), p) for p in self.root.rglob("*.bin"))
            self._size = sum(_size_of(p) for _, p in entries)
            target = int(self.max_bytes * 0.9)  # evict to below the limit, not one entry per write
            for _, p in entries:
                if self._size <= target:
                    break
                size = _size_of(p)
                p.unlink(missing_ok=True)
                self._size -= size
                self.stats.evicted += 1


def _size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:  # deleted meanwhile (by another run sharing the directory)
        return 0


def _mtime_of(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
