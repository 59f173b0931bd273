"""zarr v3 backend: a directory store (or any fsspec URL) laid out as cache_layout.md §4.1."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.storage

from epcache.errors import ConfigError, CorruptStoreError, StoreNotFoundError
from epcache.store._base import MISSING, FeatureStore, check_new_location
from epcache.store._meta import SplitMeta, StoreMeta, parse_meta_json

__all__ = ["ZarrFeatureStore"]

ATTR_KEY = "epcache"


class ZarrFeatureStore(FeatureStore):
    """zarr v3 store. Token arrays are chunked by whole samples, sharded when large."""

    def __init__(self, location: str, group: zarr.Group, *, read_only: bool, compressor: str | None = None):
        super().__init__(location, read_only=read_only)
        self._group = group
        self._compressor = compressor
        self._arrays: dict[tuple[str, str], zarr.Array] = {}

    @property
    def format(self) -> str:
        return "zarr"

    # ------------------------------------------------------------------ open / create
    @classmethod
    def create(
        cls, location: str, meta: StoreMeta, *, overwrite: bool = False, compressor: str | None = None
    ) -> ZarrFeatureStore:
        _compressors(compressor)  # validate before touching the disk
        if _is_url(location):
            store: Any = zarr.storage.FsspecStore.from_url(location, read_only=False)
            exists = _url_exists(location)
            check_new_location(exists, location, overwrite)
            mode = "w"
        else:
            path = Path(location)
            exists = path.exists() and (path.is_file() or any(path.iterdir()))
            check_new_location(exists, location, overwrite)
            if exists:
                _remove_local_store(path)
            store = zarr.storage.LocalStore(path, read_only=False)
            mode = "w"
        group = zarr.open_group(store, mode=mode, zarr_format=3)
        obj = cls(location, group, read_only=False, compressor=compressor)
        obj.meta = meta
        obj._write_meta_doc(obj.meta_document())
        return obj

    @classmethod
    def open(cls, location: str, *, read_only: bool = True) -> ZarrFeatureStore:
        if _is_url(location):
            store: Any = zarr.storage.FsspecStore.from_url(location, read_only=read_only)
        else:
            path = Path(location)
            if not path.exists():
                raise StoreNotFoundError(f"{location} does not exist; create it with `epcache extract`")
            if not path.is_dir():
                raise StoreNotFoundError(
                    f"{location} is a file, but a zarr store is a directory; pass the .zarr directory "
                    "(or an .h5 file for the HDF5 backend)"
                )
            if not (path / "zarr.json").is_file():
                raise StoreNotFoundError(
                    f"{location} is not a zarr v3 store (no zarr.json); pass a store made by `epcache extract`"
                )
            store = zarr.storage.LocalStore(path, read_only=read_only)
        try:
            group = zarr.open_group(store, mode="r" if read_only else "r+", zarr_format=3)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, ValueError, KeyError) as e:
            raise StoreNotFoundError(f"{location} is not an epcache store ({e})") from None
        raw = group.attrs.get(ATTR_KEY)
        if raw is None:
            raise StoreNotFoundError(
                f"{location} is a zarr group without epcache metadata; it was not made by `epcache extract`"
            )
        doc = parse_meta_json(raw, location)
        obj = cls(location, group, read_only=read_only)
        obj.meta = StoreMeta.from_json(doc)
        splits = doc.get("splits")
        if not isinstance(splits, dict):
            raise CorruptStoreError(f"{location}: metadata key 'splits' is missing or not an object")
        obj._splits = {name: SplitMeta.from_json(name, s) for name, s in splits.items()}
        obj._compressor = doc.get("extra", {}).get("compressor")
        obj._validate()
        return obj

    # ------------------------------------------------------------------ primitives
    def _write_meta_doc(self, doc: dict[str, Any]) -> None:
        self._group.attrs[ATTR_KEY] = doc

    def _create_split_arrays(
        self, spec: SplitMeta, *, labels: np.ndarray, ids: Sequence[str], order: np.ndarray
    ) -> None:
        g = self._group.require_group("splits").create_group(spec.name)
        n = spec.num_samples
        vec_chunk = (max(1, min(n, 1 << 20)),)
        g.create_array("labels", shape=(n,), chunks=vec_chunk, dtype="int64", compressors=None)[...] = labels
        g.create_array("order", shape=(n,), chunks=vec_chunk, dtype="int64", compressors=None)[...] = order
        ids_arr = g.create_array("ids", shape=(n,), chunks=vec_chunk, dtype=str)
        if n:
            ids_arr[...] = np.asarray(list(ids), dtype=object)
        layers = g.create_group("layers")
        records = g.create_group("records")
        shape = (n, spec.views, self.meta.num_tokens, self.meta.dim)
        chunks = (spec.chunk_samples, *shape[1:])
        shards = (spec.block_samples, *shape[1:]) if spec.block_samples != spec.chunk_samples else None
        for layer in self.meta.layers:
            layers.create_array(
                str(layer),
                shape=shape,
                chunks=chunks,
                shards=shards,
                dtype=self.meta.storage_dtype,
                compressors=_compressors(self._compressor),
                fill_value=0,
                dimension_names=("sample", "view", "token", "channel"),
            )
            records.create_array(
                str(layer), shape=(spec.num_blocks,), chunks=(1,), dtype="int64", fill_value=MISSING,
                compressors=None,
            )

    def _array(self, split: str, kind: str, name: str) -> zarr.Array:
        key = (split, f"{kind}/{name}")
        arr = self._arrays.get(key)
        if arr is None:
            try:
                arr = self._group[f"splits/{split}/{kind}/{name}" if kind else f"splits/{split}/{name}"]
            except KeyError:
                raise CorruptStoreError(
                    f"{self.location}: array {kind}/{name} of split {split!r} is missing; re-extract the store"
                ) from None
            self._arrays[key] = arr
        return arr  # type: ignore[return-value]

    def _read_array(self, split: str, layer: int, start: int, stop: int) -> np.ndarray:
        try:
            return self._array(split, "layers", str(layer))[start:stop]
        except (ValueError, OSError) as e:
            raise CorruptStoreError(
                f"{self.location}: cannot decode rows [{start}, {stop}) of {split!r} layer {layer} ({e}); "
                "run `epcache verify` to locate the bad chunk"
            ) from None

    def _write_array(self, split: str, layer: int, start: int, data: np.ndarray) -> None:
        self._array(split, "layers", str(layer))[start : start + len(data)] = data

    def _read_vector(self, split: str, name: str) -> np.ndarray:
        return self._array(split, "", name)[...]

    def _read_records(self, split: str, layer: int) -> np.ndarray:
        return self._array(split, "records", str(layer))[...]

    def _write_record(self, split: str, layer: int, block: int, value: int) -> None:
        self._array(split, "records", str(layer))[block] = value

    def _array_shape(self, split: str, layer: int) -> tuple[int, ...]:
        return tuple(self._array(split, "layers", str(layer)).shape)

    def size_bytes(self) -> int:
        if _is_url(self.location):
            import fsspec

            fs, path = fsspec.core.url_to_fs(self.location)
            return int(sum(fs.du(path, total=False).values()))
        total = 0
        for dirpath, _, files in os.walk(self.location):
            for f in files:
                total += os.path.getsize(os.path.join(dirpath, f))
        return total


def _is_url(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def _url_exists(location: str) -> bool:
    import fsspec

    fs, path = fsspec.core.url_to_fs(location)
    return bool(fs.exists(path.rstrip("/") + "/zarr.json"))


def _remove_local_store(path: Path) -> None:
    """Delete an existing store for --overwrite, but never a directory that is not a store."""
    if path.is_file():
        raise ConfigError(f"{path} is a file, not a store; refusing to delete it for --overwrite")
    if not (path / "zarr.json").is_file():
        raise ConfigError(
            f"{path} is a non-empty directory that is not a zarr store; refusing to delete it for "
            "--overwrite. Choose another --out path"
        )
    shutil.rmtree(path)


def _compressors(spec: str | None) -> Any:
    """``None``/"none" -> no codec; "zstd[:level]"; "blosc[:level]" (lz4 + byte shuffle)."""
    if spec is None or spec == "none":
        return None
    name, _, level = spec.partition(":")
    try:
        lvl = int(level) if level else None
    except ValueError:
        raise ConfigError(f"compressor level in {spec!r} is not an integer") from None
    from zarr.codecs import BloscCodec, ZstdCodec

    if name == "zstd":
        return ZstdCodec(level=3 if lvl is None else lvl)
    if name == "blosc":
        return BloscCodec(cname="lz4", clevel=5 if lvl is None else lvl, shuffle="shuffle", typesize=2)
    raise ConfigError(f"unknown zarr compressor {spec!r}; use none, zstd[:level] or blosc[:level]")
