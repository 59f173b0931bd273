"""Direct reads of a zarr store's uncompressed chunks: codes and scales, local or remote.

Split from ``zarr.py`` at the seam between zarr-python (creating, writing and opening arrays)
and the fast path that reads around it: where an array's only codec is ``bytes`` (sharded or not),
a chunk's bytes ARE the array (cache_layout.md §4.1), so a local one is read with one ``preadv``
into the output buffer (``local.py``) and a remote one with one byte-range GET (``remote.py``).
Both are chunk sources behind the one read policy of ``chunks.py``; any other codec falls back
to zarr-python.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from epcache.errors import CorruptStoreError
from epcache.store.backends.chunks import ChunkDamaged, ChunkSource, check_library_chunk, chunk_present, read_chunk
from epcache.store.backends.local import LocalChunks
from epcache.store.backends.remote import remote_chunks
from epcache.store.backends.zarr_keys import chunk_keys, raw_chunks_per_shard
from epcache.store.layout.meta import SplitMeta, StoreMeta
from epcache.store.protocol import ZarrCore
from epcache.store.read.quantised import QuantArrays

__all__ = ["ZarrDirectReads", "read_scales_direct"]

_TOKEN_KEY = "/0/0/0"  # a token chunk's key after its first coordinate: [N, V, T, D] is chunked along N only


class ZarrDirectReads(QuantArrays, ZarrCore):
    """Mixin of :class:`~epcache.store.backends.zarr.ZarrFeatureStore`: chunk and scales reads without zarr-python.

    A local array is read through a :class:`LocalChunks`, a remote one through a
    :class:`~epcache.store.backends.remote.RemoteChunks`; both go through the one chunk-read policy
    (``chunks.read_chunk``). Uses the store's ``_array`` (zarr array handles) and keeps its local
    sources in ``_raw`` and the read-only store's shard indexes in ``_shard_index``.
    """

    meta: StoreMeta
    location: str
    read_only: bool
    _splits: dict[str, SplitMeta]
    _raw: dict[tuple[Any, ...], LocalChunks | None]
    _shard_index: dict[str, np.ndarray]

    def _read_chunk_array(self, split: str, layer: int, chunk: int, start: int, stop: int) -> np.ndarray:
        source: ChunkSource | None = self._raw_layout(split, layer)
        if source is None and self.is_remote:  # one byte-range GET into the buffer (remote.py)
            source = remote_chunks(self, split, layer)
        if source is None:
            data = self._read_array(split, layer, start, stop)
            return check_library_chunk(self, split, layer, chunk, data)
        arr = self._array(split, "layers", str(layer))
        out = np.empty((stop - start, *arr.shape[1:]), dtype=np.dtype(self.meta.storage_dtype).newbyteorder("<"))
        chunk_bytes = out.nbytes // max(1, stop - start) * self._splits[split].chunk_samples
        return read_chunk(self, source, split, layer, chunk, out, chunk_bytes)

    def _chunk_present(self, split: str, layer: int, chunk: int) -> bool:
        """Whether the token array stores chunk ``chunk``: its file or object, or its entry in its shard's index.

        Only asked about a chunk zarr-python returned as all zeros (``chunks.py``); an array whose
        chunk keys or shard index this cannot parse counts as present (its bytes are still checked).
        """
        source: ChunkSource | None
        if self.is_remote:
            source = remote_chunks(self, split, layer, any_codec=True)
        else:
            per_shard = chunk_keys(self._array(split, "layers", str(layer)))
            directory = str(Path(self.location) / "splits" / split / "layers" / str(layer))
            source = None if per_shard is None else LocalChunks(directory, per_shard, _TOKEN_KEY, self._index_cache())
        return True if source is None else chunk_present(self, source, split, layer, chunk)

    def _raw_layout(self, split: str, layer: int, kind: str = "layers") -> LocalChunks | None:
        """Direct-read source of a local, uncompressed array (cache_layout.md §4.1), else None."""
        key = (split, layer) if kind == "layers" else (split, layer, kind)
        if key not in self._raw:
            self._raw[key] = None
            if not self.is_remote:
                arr = self._array(split, kind, str(layer))
                per_shard = raw_chunks_per_shard(arr)
                if per_shard is not None:
                    directory = str(Path(self.location) / "splits" / split / kind / str(layer))
                    tail = _TOKEN_KEY if kind == "layers" else "/0" * (arr.ndim - 1)
                    self._raw[key] = LocalChunks(directory, per_shard, tail, self._index_cache())
        return self._raw[key]

    def _index_cache(self) -> dict[str, np.ndarray] | None:
        """Shard indexes are kept only by a read-only store, whose shards cannot change under it."""
        return self._shard_index if self.read_only else None

    def _read_chunk_scales(self, split: str, layer: int, chunk: int) -> np.ndarray:
        """The scales of one codes chunk (§3.5), read straight from their file like the codes."""
        source = self._raw_layout(split, layer, "scales")
        if source is None:
            return super()._read_chunk_scales(split, layer, chunk)
        return read_scales_direct(self, split, layer, chunk, source)


def read_scales_direct(store: ZarrDirectReads, split: str, layer: int, chunk: int, source: LocalChunks) -> np.ndarray:
    """The scales of codes chunk ``chunk`` (cache_layout.md §3.5) by ``preadv`` from their chunk file or shard."""
    a, b = store._scale_rows(split, chunk, chunk + 1)
    arr = store._array(split, "scales", str(layer))
    out = np.empty((b - a, *arr.shape[1:]), "<f4")
    try:
        found = source.read_into(chunk, out, out.nbytes // max(1, b - a) * arr.chunks[0])
    except ChunkDamaged as e:
        raise CorruptStoreError(
            f"{store.location}: cannot read the scales of chunk {chunk} of {split!r} layer {layer} ({e}); "
            "run `epcache verify` to locate bad chunks"
        ) from None
    if not found:
        out[...] = 0  # never written: the fill value (a recorded block without them fails its crc32c)
    assert store.quant is not None  # scales exist only in a quantised store
    return out.reshape(-1) if store.quant.scales == "channel" else out
