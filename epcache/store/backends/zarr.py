"""zarr v3 backend: a directory store (or any fsspec URL) laid out as cache_layout.md §4.1."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.storage

from epcache._fs.paths import is_url
from epcache._storepeek import check_local_zarr
from epcache.errors import ConfigError, CorruptStoreError, StoreNotFoundError
from epcache.store.backends.zarr_direct import ZarrDirectReads
from epcache.store.backends.zarr_files import clear_url_store, remove_local_store
from epcache.store.core import MISSING, FeatureStore, check_new_location
from epcache.store.layout.chunking import ids_utf8
from epcache.store.layout.meta import SplitMeta, StoreMeta, writer_version
from epcache.store.layout.metadoc import MAX_META_BYTES, document_version, parse_meta_json
from epcache.store.layout.quant import QUANTIZATIONS, token_attributes
from epcache.store.ops.lock import LOCK_NAME
from epcache.store.verify.integrity import ArraySpec

__all__ = ["ZarrFeatureStore"]

ATTR_KEY = "epcache"


class ZarrFeatureStore(ZarrDirectReads, FeatureStore):
    """zarr v3 store. Token arrays are chunked by whole samples, sharded when large.

    Chunk reads of local, uncompressed arrays bypass zarr-python (``backends/zarr_direct.py``).
    """

    def __init__(self, location: str, group: zarr.Group, *, read_only: bool, compressor: str | None = None):
        super().__init__(location, read_only=read_only)
        self._group = group
        self._compressor = compressor
        self._arrays: dict[tuple[str, str], zarr.Array] = {}
        self._raw: dict[tuple[Any, ...], tuple[str, int] | None] = {}  # (dir, chunks per shard) or None; scales too
        self._shard_index: dict[str, np.ndarray] = {}

    @property
    def format(self) -> str:
        return "zarr"

    # ------------------------------------------------------------------ open / create
    @classmethod
    def create(
        cls, location: str, meta: StoreMeta, *, overwrite: bool = False, compressor: str | None = None
    ) -> ZarrFeatureStore:
        _compressors(compressor)  # validate before touching the disk
        # The writer's lock file (store/ops/lock.py) may already sit inside the store: it is neither
        # "something existing" nor deleted by --overwrite, so mode "a" (create) rather than "w" (wipe).
        if is_url(location):
            store: Any = zarr.storage.FsspecStore.from_url(location, read_only=False)
            clear_url_store(location, overwrite=overwrite)
        else:
            path = Path(location)
            exists = path.exists() and (path.is_file() or any(p.name != LOCK_NAME for p in path.iterdir()))
            check_new_location(exists, location, overwrite)
            if exists:
                remove_local_store(path)
            store = zarr.storage.LocalStore(path, read_only=False)
        group = zarr.open_group(store, mode="a", zarr_format=3)
        obj = cls(location, group, read_only=False, compressor=compressor)
        obj.meta = meta
        obj.format_version = writer_version(meta)
        obj._store_doc()
        return obj

    @classmethod
    def open(cls, location: str, *, read_only: bool = True) -> ZarrFeatureStore:
        if is_url(location):
            store: Any = zarr.storage.FsspecStore.from_url(location, read_only=read_only)
        else:
            path = check_local_zarr(location).parent
            size = (path / "zarr.json").stat().st_size
            if size > MAX_META_BYTES:  # zarr parses zarr.json itself: bound it before it does
                raise CorruptStoreError(
                    f"{location}: zarr.json is {size} bytes (limit {MAX_META_BYTES}); refusing to parse it"
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
        obj.format_version = document_version(doc)
        obj._stored_doc = doc
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
        parent = self._group.require_group("splits")
        if spec.name in parent:  # left by a run killed inside add_split: the metadata does not list it
            del parent[spec.name]
        g = parent.create_group(spec.name)
        n = spec.num_samples
        v11 = self.format_version != "1.0"
        vec_chunk = (max(1, min(n, 1 << 20)),)
        dims = {"dimension_names": ("sample",)} if v11 else {}
        for name, vec in (("labels", labels), ("order", order)):
            arr = g.create_array(name, shape=(n,), chunks=vec_chunk, dtype="int64", compressors=None, **dims)
            if n:  # every chunk written (cache_layout.md §4.1), even an all-zero one
                arr.with_config({"write_empty_chunks": True})[...] = vec
        ids_arr = g.create_array("ids", shape=(n,), chunks=vec_chunk, dtype=str, **dims)
        if n:
            ids_arr[...] = np.asarray(list(ids), dtype=object)
        if v11:  # the ids again as fixed-width UTF-8 bytes: readable by tools without vlen strings
            utf8 = ids_utf8(ids)
            mirror = g.create_array(
                "ids_utf8", shape=utf8.shape, chunks=(vec_chunk[0], utf8.shape[1]), dtype="uint8",
                compressors=None, fill_value=0, dimension_names=("sample", "byte"),
            )
            if n:
                mirror.with_config({"write_empty_chunks": True})[...] = utf8
        layers = g.create_group("layers")
        records = g.create_group("records")
        chunk_records = g.create_group("chunk_records") if v11 and spec.block_samples != spec.chunk_samples else None
        for layer in self.meta.layers:
            shape = (n, spec.views, *self.meta.layer_shape(layer))
            chunks = (spec.chunk_samples, *shape[1:])
            shards = (spec.block_samples, *shape[1:]) if spec.block_samples != spec.chunk_samples else None
            layers.create_array(
                str(layer),
                shape=shape,
                chunks=chunks,
                shards=shards,
                dtype=self.meta.storage_dtype,
                compressors=_compressors(self._compressor),
                fill_value=0,
                dimension_names=token_dims(self.meta, layer),
                attributes=token_attributes(self.meta) if v11 else None,
            )
            if self.quant is not None:  # cache_layout.md §3.5: the codes' scales, chunked like them along N
                scale_shape, scale_chunks, scale_shards = self.scales_layout(spec, layer)
                g.require_group("scales").create_array(
                    str(layer), shape=scale_shape, chunks=scale_chunks,
                    shards=scale_shards, dtype="float32", compressors=None, fill_value=0,
                    dimension_names=scale_dims(self.meta, layer),
                )
            records.create_array(
                str(layer),
                shape=(spec.num_blocks,),
                chunks=(1,),
                dtype="int64",
                fill_value=MISSING,
                compressors=None,
                **({"dimension_names": ("block",)} if v11 else {}),
            )
            if chunk_records is not None:
                chunk_records.create_array(
                    str(layer),
                    shape=(spec.num_chunks,),
                    chunks=(spec.block_samples // spec.chunk_samples,),
                    dtype="int64",
                    fill_value=MISSING,
                    compressors=None,
                    dimension_names=("chunk",),
                )

    def _array(self, split: str, kind: str, name: str) -> zarr.Array:
        key = (split, f"{kind}/{name}")
        arr = self._arrays.get(key)
        if arr is None:
            rel = f"splits/{split}/{kind}/{name}" if kind else f"splits/{split}/{name}"
            try:
                arr = self._group[rel]
            except (KeyError, ValueError, TypeError, AttributeError) as e:  # zarr's errors for a bad zarr.json
                doc = Path(self.location) / rel / "zarr.json"
                state = "is damaged" if not is_url(self.location) and doc.is_file() else "is missing or damaged"
                raise CorruptStoreError(
                    f"{self.location}: array {kind}/{name} of split {split!r} {state} ({type(e).__name__}: {e}; "
                    f"its metadata is {rel}/zarr.json); re-extract the store"
                ) from None
            if not self.read_only and kind in ("layers", "scales"):  # zarr skips all-zero chunks unless told (§4.1)
                arr = arr.with_config({"write_empty_chunks": True})  # type: ignore[union-attr]
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

    def _read_scales(self, split: str, layer: int, start: int, stop: int) -> np.ndarray:
        try:
            return self._array(split, "scales", str(layer))[start:stop]
        except (ValueError, OSError) as e:
            raise CorruptStoreError(
                f"{self.location}: cannot decode scales [{start}, {stop}) of {split!r} layer {layer} ({e}); "
                "run `epcache verify` to locate the bad chunk"
            ) from None

    def _write_scales(self, split: str, layer: int, start: int, data: np.ndarray) -> None:
        self._array(split, "scales", str(layer))[start : start + len(data)] = data

    def _read_records(self, split: str, layer: int) -> np.ndarray:
        return self._array(split, "records", str(layer))[...]

    def _write_record(self, split: str, layer: int, block: int, value: int) -> None:
        self._array(split, "records", str(layer))[block] = value

    def _array_shape(self, split: str, layer: int) -> tuple[int, ...]:
        return tuple(self._array(split, "layers", str(layer)).shape)

    def _array_spec(self, split: str, layer: int, kind: str = "layers") -> ArraySpec:
        arr = self._array(split, kind, str(layer))
        dtype = np.dtype(arr.dtype)
        codecs = arr.metadata.codecs
        inner = codecs[0].codecs if len(codecs) == 1 and type(codecs[0]).__name__ == "ShardingCodec" else codecs
        for c in inner:  # the bytes codec decides the byte order of the stored values
            if type(c).__name__ == "BytesCodec" and dtype.itemsize > 1:
                big = str(getattr(c.endian, "value", c.endian)) == "big"
                dtype = dtype.newbyteorder(">" if big else "<")
        shards = arr.shards
        return ArraySpec(
            dtype=dtype.str,
            shape=tuple(arr.shape),
            chunks=tuple(arr.chunks),
            shards=None if shards is None else tuple(shards),
            attrs={k: v for k, v in arr.attrs.asdict().items() if k.startswith("epcache_")},
        )

    def _read_chunk_records(self, split: str, layer: int, first: int, stop: int) -> np.ndarray | None:
        if self.format_version == "1.0":
            return None
        return self._array(split, "chunk_records", str(layer))[first:stop]

    def _write_chunk_records(self, split: str, layer: int, first: int, values: np.ndarray) -> None:
        self._array(split, "chunk_records", str(layer))[first : first + len(values)] = values

    # ------------------------------------------------------------------ pooled output (cache_layout.md §3.4)
    def _create_pooled_array(self, split: str, shape: tuple[int, int, int], chunks: tuple[int, int, int]) -> None:
        # a width other than the layers' `dim` needs its own axis name: xarray gives a name one size per tree
        channel = "channel" if shape[2] == self.meta.dim else "channel_pooled"
        self._group[f"splits/{split}"].create_array(  # type: ignore[union-attr]
            "pooled", shape=shape, chunks=chunks, dtype=self.meta.value_storage_dtype, compressors=None, fill_value=0,
            dimension_names=("sample", "view", channel),
        )

    def _write_pooled(self, split: str, start: int, data: np.ndarray) -> None:
        self._array(split, "", "pooled")[start : start + len(data)] = data

    def _read_pooled(self, split: str, start: int, stop: int) -> np.ndarray:
        return self._array(split, "", "pooled")[start:stop]

    def _has_pooled(self, split: str) -> bool:
        return f"splits/{split}/pooled" in self._group

    # ------------------------------------------------------------------ masks (cache_layout.md §3.6)
    def _create_masks_array(
        self, s: SplitMeta, shape: tuple[int, ...], chunks: tuple[int, ...], shards: tuple[int, ...] | None, dtype: str
    ) -> None:
        g = self._group[f"splits/{s.name}"]
        g.create_array(  # type: ignore[union-attr]
            "masks", shape=shape, chunks=chunks, shards=shards, dtype=dtype, compressors=_compressors(self._compressor),
            fill_value=0, dimension_names=("sample", "view", "mask_y", "mask_x"),
        )
        g["records"].create_array(  # type: ignore[union-attr]
            "masks", shape=(s.num_blocks,), chunks=(1,), dtype="int64", fill_value=MISSING, compressors=None,
            dimension_names=("block",),
        )

    def _write_masks(self, split: str, start: int, data: np.ndarray) -> None:
        arr = self._array(split, "", "masks").with_config({"write_empty_chunks": True})  # every chunk exists (§3.3)
        arr[start : start + len(data)] = data

    def _read_masks(self, split: str, start: int, stop: int) -> np.ndarray:
        try:
            return self._array(split, "", "masks")[start:stop]
        except (ValueError, OSError) as e:
            raise CorruptStoreError(
                f"{self.location}: cannot decode mask rows [{start}, {stop}) of {split!r} ({e}); "
                "run `epcache verify` to locate the bad chunk"
            ) from None

    def _has_masks(self, split: str) -> bool:
        return f"splits/{split}/masks" in self._group

    def size_bytes(self) -> int:
        if is_url(self.location):
            import fsspec

            fs, path = fsspec.core.url_to_fs(self.location)
            return int(sum(fs.du(path, total=False).values()))
        total = 0
        for dirpath, _, files in os.walk(self.location):
            for f in files:
                total += os.path.getsize(os.path.join(dirpath, f))
        return total


def token_dims(meta: StoreMeta, layer: int) -> tuple[str, str, str, str]:
    """``dimension_names`` of a layer's token array (cache_layout.md §3).

    xarray gives one size to one dimension name across a group: layers of different shapes (a
    convnet's stages, recorded as ``layer_shapes``) name their token and channel axes per layer.
    """
    if meta.layer_shapes:
        return ("sample", "view", f"token_{layer}", f"channel_{layer}")
    return ("sample", "view", "token", "channel")


def scale_dims(meta: StoreMeta, layer: int) -> tuple[str, ...]:
    """``dimension_names`` of a layer's scales array (cache_layout.md §3.5), named as its token array's axes."""
    _, _, token, channel = token_dims(meta, layer)
    q = meta.quantization
    return ("chunk", channel) if q is not None and QUANTIZATIONS[q].scales == "channel" else ("sample", "view", token)


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
