"""Files of a zarr store beside the token arrays: making room for a new store, the ids mirror, scales reads."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from epcache.errors import ConfigError, CorruptStoreError
from epcache.store._base import check_new_location
from epcache.store._lock import LOCK_NAME
from epcache.store._rawread import pread_into

__all__ = ["clear_url_store", "ids_utf8", "read_scales_direct", "remove_local_store"]

NO_CHUNK = 2**64 - 1  # shard index entry of an inner chunk that was never written


def ids_utf8(ids: Sequence[str]) -> np.ndarray:
    """The ids as a ``uint8 [N, W]`` array of UTF-8 bytes, zero-padded to the longest (W >= 1)."""
    encoded = [i.encode("utf-8") for i in ids]
    width = max([1, *(len(e) for e in encoded)])
    out = np.zeros((len(encoded), width), np.uint8)
    for row, e in enumerate(encoded):
        out[row, : len(e)] = np.frombuffer(e, np.uint8)
    return out


def clear_url_store(location: str, *, overwrite: bool) -> None:
    """Make room for a new store under a URL prefix: refuse, or delete an old store for --overwrite.

    Never deletes objects under a prefix that is not a store, and keeps the writer's lock.
    """
    import fsspec

    fs, path = fsspec.core.url_to_fs(location)
    path = path.rstrip("/")
    fs.invalidate_cache(path)
    keys = [k for k in fs.find(path) if k.rstrip("/") != f"{path}/{LOCK_NAME}"]
    if not keys:
        return
    is_store = f"{path}/zarr.json" in keys
    check_new_location(is_store, location, overwrite)
    if not is_store:
        raise ConfigError(
            f"{location} holds objects but no zarr store (no zarr.json); refusing to write a store over "
            "them. Choose another --out"
        )
    fs.rm(keys)
    fs.invalidate_cache(path)


def remove_local_store(path: Path) -> None:
    """Delete an existing store for --overwrite, but never a directory that is not a store.

    The writer's lock file stays: it belongs to the extraction that is replacing the store.
    """
    if path.is_file():
        raise ConfigError(f"{path} is a file, not a store; refusing to delete it for --overwrite")
    if not (path / "zarr.json").is_file():
        raise ConfigError(
            f"{path} is a non-empty directory that is not a zarr store; refusing to delete it for "
            "--overwrite. Choose another --out path"
        )
    for child in path.iterdir():
        if child.name == LOCK_NAME:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


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
