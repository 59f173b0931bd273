"""Direct reads of a local zarr store's uncompressed chunks: codes, scales and shard indexes.

Split from ``_zarr.py`` at the seam between zarr-python (creating, writing and opening arrays)
and the fast path that reads around it: where an array is local and its only codec is ``bytes``
(sharded or not), a chunk's bytes on disk ARE the array (cache_layout.md §4.1), so it is read with
one ``preadv`` into the output buffer (``_rawread.py``) after locating it in its shard's index.
Everything that parses zarr's on-disk chunk layout itself lives here, so a zarr format change
has one module to check. Remote stores read by byte range instead (``_remote.py``); any other
codec falls back to zarr-python.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from epcache.errors import CorruptStoreError
from epcache.store._absent import NO_CHUNK, check_library_chunk, fill_absent_chunk
from epcache.store._rawread import pread_into
from epcache.store._remote import read_remote_chunk, remote_chunk_present, remote_chunks

if TYPE_CHECKING:
    from epcache.store._meta import SplitMeta, StoreMeta

__all__ = ["ZarrDirectReads", "chunk_keys", "plain_bytes", "raw_chunks_per_shard", "read_scales_direct"]


class ZarrDirectReads:
    """Mixin of :class:`~epcache.store._zarr.ZarrFeatureStore`: chunk and scales reads by ``preadv``.

    Uses the store's ``_array`` (zarr array handles) and keeps its plans in ``_raw`` and the
    read-only store's shard indexes in ``_shard_index``.
    """

    meta: StoreMeta
    location: str
    read_only: bool
    _splits: dict[str, SplitMeta]
    _raw: dict[tuple[Any, ...], tuple[str, int] | None]
    _shard_index: dict[str, np.ndarray]

    def _read_chunk_array(self, split: str, layer: int, chunk: int, start: int, stop: int) -> np.ndarray:
        raw = self._raw_layout(split, layer)
        if raw is None:
            remote = remote_chunks(self, split, layer) if self.is_remote else None  # type: ignore[attr-defined]
            if remote is not None:  # one byte-range GET into the buffer (store/_remote.py)
                return read_remote_chunk(self, remote, split, layer, chunk, start, stop)
            data = self._read_array(split, layer, start, stop)  # type: ignore[attr-defined]
            return check_library_chunk(self, split, layer, chunk, data)  # type: ignore[arg-type]
        directory, per_shard = raw
        arr = self._array(split, "layers", str(layer))  # type: ignore[attr-defined]
        out = np.empty((stop - start, *arr.shape[1:]), dtype=np.dtype(self.meta.storage_dtype).newbyteorder("<"))
        try:
            if per_shard == 0:
                found = pread_into(f"{directory}/c/{chunk}/0/0/0", 0, out)
            else:
                shard_path = f"{directory}/c/{chunk // per_shard}/0/0/0"
                offset, nbytes = self._inner_chunk(shard_path, per_shard, chunk % per_shard)
                chunk_bytes = out.nbytes // (stop - start) * self._splits[split].chunk_samples
                if offset == NO_CHUNK:
                    found = False
                elif nbytes != chunk_bytes:
                    raise OSError(f"inner chunk {chunk} has {nbytes} bytes, expected {chunk_bytes}")
                else:
                    found = pread_into(shard_path, offset, out)
        except OSError as e:
            raise CorruptStoreError(
                f"{self.location}: cannot read chunk {chunk} (rows {start}-{stop}) of {split!r} layer {layer} "
                f"({e}); run `epcache verify` to locate bad chunks"
            ) from None
        if not found:  # the one absent-chunk rule (_absent.py) decides between zeros and damage
            return fill_absent_chunk(self, split, layer, chunk, out)  # type: ignore[arg-type]
        return out

    def _chunk_present(self, split: str, layer: int, chunk: int) -> bool:
        """Whether the token array stores chunk ``chunk``: its file, or its entry in its shard's index.

        Only asked about a chunk zarr-python returned as all zeros (``_absent.py``); an array whose
        chunk keys or shard index this cannot parse counts as present (its bytes are still checked).
        """
        if self.is_remote:  # type: ignore[attr-defined]
            return remote_chunk_present(self, split, layer, chunk)  # type: ignore[arg-type]
        per_shard = chunk_keys(self._array(split, "layers", str(layer)))  # type: ignore[attr-defined]
        if per_shard is None:
            return True
        directory = Path(self.location) / "splits" / split / "layers" / str(layer)
        if per_shard == 0:
            return (directory / "c" / str(chunk) / "0" / "0" / "0").is_file()
        shard_path = str(directory / "c" / str(chunk // per_shard) / "0" / "0" / "0")
        try:
            offset, _ = self._inner_chunk(shard_path, per_shard, chunk % per_shard)
        except OSError as e:
            raise CorruptStoreError(
                f"{self.location}: cannot read the shard index of chunk {chunk} of {split!r} layer {layer} ({e}); "
                "run `epcache verify` to locate bad chunks"
            ) from None
        return offset != NO_CHUNK

    def _raw_layout(self, split: str, layer: int, kind: str = "layers") -> tuple[str, int] | None:
        """Direct-read plan for a local, uncompressed array (cache_layout.md §4.1), else None."""
        key = (split, layer) if kind == "layers" else (split, layer, kind)
        if key not in self._raw:
            self._raw[key] = None
            if not self.is_remote:  # type: ignore[attr-defined]
                per_shard = raw_chunks_per_shard(self._array(split, kind, str(layer)))  # type: ignore[attr-defined]
                if per_shard is not None:
                    self._raw[key] = (str(Path(self.location) / "splits" / split / kind / str(layer)), per_shard)
        return self._raw[key]

    def _read_chunk_scales(self, split: str, layer: int, chunk: int) -> np.ndarray:
        """The scales of one codes chunk (§3.5), read straight from their file like the codes."""
        raw = self._raw_layout(split, layer, "scales")
        if raw is None:
            return super()._read_chunk_scales(split, layer, chunk)  # type: ignore[misc]
        return read_scales_direct(self, split, layer, chunk, raw)

    def _inner_chunk(self, shard_path: str, per_shard: int, inner: int) -> tuple[int, int]:
        index = self._shard_index.get(shard_path) if self.read_only else None
        if index is None:
            size = 16 * per_shard + 4  # (offset, nbytes) uint64 pairs, then a crc32c of the index
            buf = np.empty(size, np.uint8)
            try:
                file_size = Path(shard_path).stat().st_size
            except FileNotFoundError:
                return NO_CHUNK, NO_CHUNK
            if file_size < size or not pread_into(shard_path, file_size - size, buf):
                raise OSError(f"{shard_path} is shorter than its shard index (truncated)")
            index = buf[:-4].view("<u8").reshape(per_shard, 2)
            if self.read_only:
                self._shard_index[shard_path] = index
        return int(index[inner, 0]), int(index[inner, 1])


def raw_chunks_per_shard(arr: Any) -> int | None:
    """How a zarr array's chunks can be read as plain bytes without zarr (cache_layout.md §4.1): 0 for
    one file per chunk, k for shards of k chunks with the index at the end, None when a codec or
    another key encoding means zarr must decode. Local direct reads and remote byte-range GETs share it."""
    codecs = arr.metadata.codecs
    enc = arr.metadata.chunk_key_encoding
    if getattr(enc, "separator", None) != "/" or type(enc).__name__ != "DefaultChunkKeyEncoding":
        return None
    if plain_bytes(codecs):
        return 0
    if (
        len(codecs) == 1
        and type(codecs[0]).__name__ == "ShardingCodec"
        and plain_bytes(codecs[0].codecs)
        and str(getattr(codecs[0].index_location, "value", codecs[0].index_location)) == "end"
    ):
        return int(arr.shards[0] // arr.chunks[0])
    return None


def chunk_keys(arr: Any) -> int | None:
    """Where a zarr array's chunks live, whatever their codecs: 0 for one object per chunk, k for shards
    of k chunks whose index (``(offset, nbytes)`` pairs, then a crc32c) is at the end; None when the key
    encoding or shard index is not the one cache_layout.md §4.1 describes (presence cannot be looked up)."""
    codecs = arr.metadata.codecs
    enc = arr.metadata.chunk_key_encoding
    if getattr(enc, "separator", None) != "/" or type(enc).__name__ != "DefaultChunkKeyEncoding":
        return None
    if not (len(codecs) == 1 and type(codecs[0]).__name__ == "ShardingCodec"):
        return 0
    shard = codecs[0]
    index = [type(c).__name__ for c in shard.index_codecs]
    at_end = str(getattr(shard.index_location, "value", shard.index_location)) == "end"
    if not at_end or index != ["BytesCodec", "Crc32cCodec"] or not plain_bytes(shard.index_codecs[:1]):
        return None
    return int(arr.shards[0] // arr.chunks[0])


def plain_bytes(codecs: Any) -> bool:
    """Only the ``bytes`` codec, little-endian (no endian at all for one-byte types: int8/uint8 codes)."""
    return (
        len(codecs) == 1
        and type(codecs[0]).__name__ == "BytesCodec"
        and str(getattr(codecs[0].endian, "value", codecs[0].endian)) in ("little", "None")
    )


def read_scales_direct(store: Any, split: str, layer: int, chunk: int, raw: tuple[str, int]) -> np.ndarray:
    """The scales of codes chunk ``chunk`` (cache_layout.md §3.5) by ``preadv`` from their chunk file or
    shard (``raw``: the directory and chunks per shard of ``ZarrFeatureStore._raw_layout``)."""
    directory, per_shard = raw
    a, b = store._scale_rows(split, chunk, chunk + 1)
    arr = store._array(split, "scales", str(layer))
    out = np.empty((b - a, *arr.shape[1:]), "<f4")
    zeros = "/0" * (arr.ndim - 1)
    try:
        if per_shard == 0:
            found = pread_into(f"{directory}/c/{chunk}{zeros}", 0, out)
        else:
            shard_path = f"{directory}/c/{chunk // per_shard}{zeros}"
            offset, nbytes = store._inner_chunk(shard_path, per_shard, chunk % per_shard)
            full = out.nbytes // max(1, b - a) * arr.chunks[0]
            if offset != NO_CHUNK and nbytes != full:
                raise OSError(f"inner chunk {chunk} has {nbytes} bytes, expected {full}")
            found = offset != NO_CHUNK and pread_into(shard_path, offset, out)
    except OSError as e:
        raise CorruptStoreError(
            f"{store.location}: cannot read the scales of chunk {chunk} of {split!r} layer {layer} ({e}); "
            "run `epcache verify` to locate bad chunks"
        ) from None
    if not found:
        out[...] = 0  # never written: the fill value (a recorded block without them fails its crc32c)
    return out.reshape(-1) if store.quant.scales == "channel" else out
