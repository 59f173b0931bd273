"""Direct reads of uncompressed chunks of a zarr store behind a URL (``s3://``, ``gs://``, ...).

The local fast path (``local.py``) preads a chunk's bytes straight into a numpy buffer; this is
the same for object storage: one byte-range GET per chunk (the chunk object itself, or the inner
chunk's range of its shard object), into the output buffer, with no zarr/asyncio round trip per
chunk. A shard's index (cache_layout.md §4.1: ``(offset, nbytes)`` pairs at the end of the shard
object) is fetched once per shard and kept, where going through zarr re-reads it for every inner
chunk (two requests per chunk instead of one). Requests are blocking calls of fsspec's sync
filesystem, so many can be in flight from a thread pool (``read/ahead.py``) while each thread
waits on the network. Arrays with a codec go through zarr as before.
"""

from __future__ import annotations

import errno
import threading
import weakref
from typing import Any

import numpy as np

from epcache.store.backends.chunks import NO_CHUNK, ChunkDamaged
from epcache.store.backends.zarr_keys import chunk_keys, raw_chunks_per_shard
from epcache.store.protocol import ZarrCore

__all__ = ["RemoteChunks", "remote_chunks"]

_LOCK = threading.Lock()
_PLANS: weakref.WeakKeyDictionary[Any, dict[tuple[str, int], RemoteChunks | None]] = weakref.WeakKeyDictionary()
_PLAN_LOCKS: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()


class RemoteChunks:
    """Byte-range reads of one uncompressed token array under a URL (a ``ChunkSource``).

    Args:
        fs: the fsspec filesystem of the store's URL (sync API; thread-safe for concurrent calls).
        directory: the array's path on ``fs`` (``bucket/prefix/splits/<split>/layers/<layer>``).
        per_shard: inner chunks per shard, 0 when the array is not sharded.
        cache_index: keep shard indexes (only for read-only stores, whose shards cannot change).
    """

    def __init__(self, fs: Any, directory: str, per_shard: int, *, cache_index: bool) -> None:
        self.fs, self.directory, self.per_shard, self.cache_index = fs, directory, per_shard, cache_index
        self._index: dict[int, np.ndarray | None] = {}
        self._locks: dict[int, threading.Lock] = {}  # one per shard: its index is fetched once, not per thread

    def read_into(self, chunk: int, out: np.ndarray, chunk_bytes: int) -> bool:
        """Fill ``out`` with chunk ``chunk``'s first ``out.nbytes`` bytes; False when it was never written.

        Raises:
            OSError: (``ChunkDamaged``) the object is shorter than it must be (truncated) or its shard index is damaged.
        """
        if self.per_shard == 0:
            return self._get(f"{self.directory}/c/{chunk}/0/0/0", 0, out)
        shard, inner = divmod(chunk, self.per_shard)
        index = self._shard_index(shard)
        if index is None:
            return False
        offset, nbytes = int(index[inner, 0]), int(index[inner, 1])
        if offset == NO_CHUNK:
            return False
        if nbytes != chunk_bytes:
            raise ChunkDamaged(f"inner chunk {chunk} has {nbytes} bytes, expected {chunk_bytes}")
        return self._get(f"{self.directory}/c/{shard}/0/0/0", offset, out)

    def present(self, chunk: int) -> bool:
        """Whether chunk ``chunk`` is stored: its object exists, or its shard's index has an entry for it.

        Raises:
            OSError: (``ChunkDamaged``) the shard object is shorter than its index.
        """
        if self.per_shard == 0:
            return bool(self.fs.exists(f"{self.directory}/c/{chunk}/0/0/0"))
        shard, inner = divmod(chunk, self.per_shard)
        index = self._shard_index(shard)
        return index is not None and int(index[inner, 0]) != NO_CHUNK

    def _shard_index(self, shard: int) -> np.ndarray | None:
        if shard in self._index:
            return self._index[shard]
        with _LOCK:
            lock = self._locks.setdefault(shard, threading.Lock())
        with lock:
            if shard in self._index:  # fetched by another thread meanwhile
                return self._index[shard]
            return self._fetch_index(shard)

    def _fetch_index(self, shard: int) -> np.ndarray | None:
        size = 16 * self.per_shard + 4  # (offset, nbytes) uint64 pairs, then a crc32c of the index
        try:  # a suffix range: one request, no HEAD for the object's size
            raw = self.fs.cat_file(f"{self.directory}/c/{shard}/0/0/0", start=-size)
        except FileNotFoundError:
            index = None
        else:
            if len(raw) < size:
                raise ChunkDamaged(f"shard {shard} is shorter than its shard index (truncated)")
            index = np.frombuffer(raw[:-4], dtype="<u8").reshape(self.per_shard, 2)
        if self.cache_index:
            self._index[shard] = index
        return index

    def _get(self, path: str, offset: int, out: np.ndarray) -> bool:
        try:
            data = self.fs.cat_file(path, start=offset, end=offset + out.nbytes)
        except FileNotFoundError:
            return False
        except OSError as e:
            if e.errno != errno.EINVAL:  # s3fs: a range past the object's end ("not satisfiable")
                raise
            raise ChunkDamaged(f"{path}: object ends before byte {offset} (truncated chunk; {e})") from None
        if len(data) != out.nbytes:
            raise ChunkDamaged(f"{path}: object ends {out.nbytes - len(data)} bytes early (truncated chunk)")
        out.reshape(-1).view(np.uint8)[:] = np.frombuffer(data, np.uint8)
        return True


def remote_chunks(store: ZarrCore, split: str, layer: int, *, any_codec: bool = False) -> RemoteChunks | None:
    """The direct-read plan of a remote, uncompressed token array, else None (read through zarr).

    ``any_codec``: the plan of any array whose chunk keys and shard index are as cache_layout.md §4.1
    describes, for looking up whether a chunk is stored (``remote_chunk_present``), never for reading.
    """
    key = (split, layer, any_codec)
    with _LOCK:
        cache = _PLANS.setdefault(store, {})
        lock = _PLAN_LOCKS.setdefault(store, threading.Lock())
    if key in cache:
        return cache[key]
    with lock:  # read-ahead threads start together: one of them reads the array's metadata
        if key not in cache:
            cache[key] = _plan(store, split, layer, any_codec)
    return cache[key]


def _plan(store: ZarrCore, split: str, layer: int, any_codec: bool) -> RemoteChunks | None:
    layout = chunk_keys if any_codec else raw_chunks_per_shard
    per_shard = layout(store._array(split, "layers", str(layer)))
    if per_shard is None:
        return None  # a codec: zarr decodes it
    import fsspec

    fs, root = fsspec.core.url_to_fs(store.location)
    directory = f"{root.rstrip('/')}/splits/{split}/layers/{layer}"
    return RemoteChunks(fs, directory, per_shard, cache_index=store.read_only)
