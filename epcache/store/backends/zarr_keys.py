"""Where a zarr array's chunks live on disk or in object storage (cache_layout.md §4.1).

The key encoding and shard layout parsed here are all the local (``local.py``) and remote
(``remote.py``) chunk sources need to find a chunk's bytes without zarr-python, so a zarr
format change has one module to check.
"""

from __future__ import annotations

from typing import Any

__all__ = ["chunk_keys", "plain_bytes", "raw_chunks_per_shard"]


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
