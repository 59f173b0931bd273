"""HDF5 backend: one file laid out as cache_layout.md §4.2 (the same tree as the zarr store)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from epcache.errors import ConfigError, CorruptStoreError, EpcacheError, StoreNotFoundError
from epcache.store.backends.chunks import check_library_chunk, fill_absent_chunk
from epcache.store.backends.local import pread_into
from epcache.store.core import MISSING, FeatureStore, check_new_location
from epcache.store.layout.chunking import ids_utf8
from epcache.store.layout.meta import SplitMeta, StoreMeta, writer_version
from epcache.store.layout.metadoc import document_version, parse_meta_json
from epcache.store.layout.quant import token_attributes
from epcache.store.ops.lock import StoreLockedError, read_store_lock
from epcache.store.verify.integrity import ArraySpec

__all__ = ["HDF5FeatureStore"]

ATTR_KEY = "epcache"
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


class HDF5FeatureStore(FeatureStore):
    """Single-file store. One writer at a time; chunk = write unit (HDF5 has no shards)."""

    def __init__(self, location: str, file: Any, *, read_only: bool, compressor: str | None = None):
        super().__init__(location, read_only=read_only)
        self._file = file
        self._compressor = compressor
        self._datasets: dict[str, Any] = {}

    @property
    def format(self) -> str:
        return "h5"

    @classmethod
    def create(
        cls, location: str, meta: StoreMeta, *, overwrite: bool = False, compressor: str | None = None
    ) -> HDF5FeatureStore:
        import h5py

        _filter(compressor)
        path = Path(location)
        check_new_location(path.exists(), location, overwrite)
        if path.exists():
            if path.is_dir() or not _is_hdf5(path):
                raise ConfigError(f"{path} exists and is not an HDF5 store; refusing to replace it with --overwrite")
            path.unlink()
        # v108, not "latest": "latest" writes superblock v3, whose file-consistency flag a SIGKILLed
        # writer leaves set, and HDF5 then refuses to open the file again (h5clear needed)
        f = h5py.File(path, "w-", libver=("v108", "latest"))
        obj = cls(location, f, read_only=False, compressor=compressor)
        obj.meta = meta
        obj.format_version = writer_version(meta)
        obj._store_doc()
        return obj

    @classmethod
    def open(cls, location: str, *, read_only: bool = True) -> HDF5FeatureStore:
        import h5py

        path = Path(location)
        if not path.exists():
            raise StoreNotFoundError(f"{location} does not exist; create it with `epcache extract --format h5`")
        if path.is_dir():
            raise StoreNotFoundError(f"{location} is a directory, but an HDF5 store is a single file")
        if not _is_hdf5(path):
            raise StoreNotFoundError(f"{location} is not an HDF5 file; pass a store made by `epcache extract`")
        try:
            f = h5py.File(path, "r" if read_only else "r+")
        except OSError as e:
            raise _open_error(location, e) from None
        try:
            raw = f.attrs.get(ATTR_KEY)
        except (KeyError, OSError, RuntimeError, ValueError) as e:  # a damaged root object header
            f.close()
            raise CorruptStoreError(
                f"{location}: the HDF5 root group's header is damaged ({type(e).__name__}: {e}); the store "
                "cannot be read. Re-extract it with `epcache extract --overwrite`"
            ) from None
        if raw is None:
            f.close()
            raise StoreNotFoundError(f"{location} is an HDF5 file without epcache metadata")
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8")
        doc = parse_meta_json(str(raw), location)
        obj = cls(location, f, read_only=read_only)
        try:
            obj.meta = StoreMeta.from_json(doc)
            obj.format_version = document_version(doc)
            obj._stored_doc = doc
            splits = doc.get("splits")
            if not isinstance(splits, dict):
                raise CorruptStoreError(f"{location}: metadata key 'splits' is missing or not an object")
            obj._splits = {name: SplitMeta.from_json(name, s) for name, s in splits.items()}
            obj._validate()
        except Exception:
            f.close()
            raise
        obj._compressor = doc.get("extra", {}).get("compressor")
        return obj

    def close(self) -> None:
        if self._file:
            self._file.close()

    def _write_meta_doc(self, doc: dict[str, Any]) -> None:
        self._file.attrs[ATTR_KEY] = json.dumps(doc)
        self._file.flush()

    def _create_split_arrays(
        self, spec: SplitMeta, *, labels: np.ndarray, ids: Sequence[str], order: np.ndarray
    ) -> None:
        import h5py

        parent = self._file.require_group("splits")
        if spec.name in parent:  # left by a run killed inside add_split: the metadata does not list it
            del parent[spec.name]
        g = parent.create_group(spec.name)
        g.create_dataset("labels", data=labels.astype("<i8"))
        g.create_dataset("order", data=order.astype("<i8"))
        g.create_dataset("ids", data=np.asarray(list(ids), dtype=object), dtype=h5py.string_dtype("utf-8"))
        v11 = self.format_version != "1.0"
        if v11:
            g.create_dataset("ids_utf8", data=ids_utf8(ids))
        flt = _filter(self._compressor)
        for layer in self.meta.layers:
            shape = (spec.num_samples, spec.views, *self.meta.layer_shape(layer))
            chunks = (spec.chunk_samples, *shape[1:]) if spec.num_samples else None
            g.create_dataset(
                f"layers/{layer}",
                shape=shape,
                dtype=np.dtype(self.meta.storage_dtype).newbyteorder("<"),
                chunks=chunks,
                fillvalue=0,
                **flt,
            )
            if v11:
                g[f"layers/{layer}"].attrs.update(token_attributes(self.meta))
            if self.quant is not None:  # cache_layout.md §3.5: the codes' scales, chunked like them along N
                sshape, schunks, _ = self.scales_layout(spec, layer)
                g.create_dataset(f"scales/{layer}", shape=sshape, dtype="<f4", fillvalue=0,
                                 chunks=schunks if spec.num_samples else None)
            g.create_dataset(f"records/{layer}", shape=(spec.num_blocks,), dtype="<i8", fillvalue=MISSING)
        self._file.flush()

    def _ds(self, split: str, name: str) -> Any:
        key = f"splits/{split}/{name}"
        ds = self._datasets.get(key)
        if ds is None:
            try:
                ds = self._file[key]
            except KeyError as e:
                gone = "missing" if "doesn't exist" in str(e) or "not found" in str(e).lower() else "damaged"
                raise CorruptStoreError(
                    f"{self.location}: dataset {name} of split {split!r} is {gone} ({e}); re-extract the store"
                ) from None
            except (OSError, RuntimeError, ValueError) as e:  # a damaged object header
                raise CorruptStoreError(
                    f"{self.location}: dataset {name} of split {split!r} is damaged ({type(e).__name__}: {e}); "
                    "re-extract the store"
                ) from None
            self._datasets[key] = ds
        return ds

    def _read_array(self, split: str, layer: int, start: int, stop: int) -> np.ndarray:
        ds = self._ds(split, f"layers/{layer}")
        out = np.empty((stop - start, *ds.shape[1:]), dtype=ds.dtype)
        if stop > start:
            try:
                ds.read_direct(out, np.s_[start:stop])
            except OSError as e:
                raise CorruptStoreError(
                    f"{self.location}: cannot read rows [{start}, {stop}) of {split!r} layer {layer} ({e}); "
                    "run `epcache verify`"
                ) from None
        return out

    def _read_chunk_array(self, split: str, layer: int, chunk: int, start: int, stop: int) -> np.ndarray:
        ds = self._ds(split, f"layers/{layer}")
        if ds.compression is not None or ds.shuffle or ds.fletcher32 or ds.scaleoffset is not None:
            return check_library_chunk(self, split, layer, chunk, self._read_array(split, layer, start, stop))
        out = np.empty((stop - start, *ds.shape[1:]), dtype=ds.dtype)
        info = ds.id.get_chunk_info_by_coord((start, 0, 0, 0))
        if info.byte_offset is None:  # never allocated: the one absent-chunk rule (backends/chunks.py) decides
            return fill_absent_chunk(self, split, layer, chunk, out)
        full = out.nbytes // max(1, stop - start) * ds.chunks[0]
        try:
            if info.size != full:
                raise OSError(f"chunk has {info.size} bytes, expected {full}")
            pread_into(self.location, info.byte_offset, out)
        except OSError as e:
            raise CorruptStoreError(
                f"{self.location}: cannot read chunk {chunk} of {split!r} layer {layer} ({e}); run `epcache verify`"
            ) from None
        return out

    def _chunk_present(self, split: str, layer: int, chunk: int) -> bool:
        ds = self._ds(split, f"layers/{layer}")
        if ds.chunks is None:  # contiguous: one allocation, not chunk by chunk
            return True
        start = chunk * self.split(split).chunk_samples
        return ds.id.get_chunk_info_by_coord((start, 0, 0, 0)).byte_offset is not None

    def _write_array(self, split: str, layer: int, start: int, data: np.ndarray) -> None:
        self._ds(split, f"layers/{layer}")[start : start + len(data)] = data
        self._file.flush()  # data reaches the file before its record is written

    def _read_vector(self, split: str, name: str) -> np.ndarray:
        ds = self._ds(split, name)
        if name == "ids":
            return np.asarray(ds.asstr()[...], dtype=object)
        return ds[...]

    def _read_records(self, split: str, layer: int) -> np.ndarray:
        return self._ds(split, f"records/{layer}")[...]

    def _read_scales(self, split: str, layer: int, start: int, stop: int) -> np.ndarray:
        ds = self._ds(split, f"scales/{layer}")
        out = np.empty((stop - start, *ds.shape[1:]), dtype="<f4")
        if stop > start:
            try:
                ds.read_direct(out, np.s_[start:stop])
            except OSError as e:
                raise CorruptStoreError(
                    f"{self.location}: cannot read scales [{start}, {stop}) of {split!r} layer {layer} ({e}); "
                    "run `epcache verify`"
                ) from None
        return out

    def _write_scales(self, split: str, layer: int, start: int, data: np.ndarray) -> None:
        self._ds(split, f"scales/{layer}")[start : start + len(data)] = data
        self._file.flush()

    def _write_record(self, split: str, layer: int, block: int, value: int) -> None:
        self._ds(split, f"records/{layer}")[block] = value
        self._file.flush()

    def _array_shape(self, split: str, layer: int) -> tuple[int, ...]:
        return tuple(self._ds(split, f"layers/{layer}").shape)

    def _array_spec(self, split: str, layer: int, kind: str = "layers") -> ArraySpec:
        ds = self._ds(split, f"{kind}/{layer}")
        chunks = ds.chunks
        attrs = {k: ds.attrs[k] for k in ds.attrs if k.startswith("epcache_")}
        return ArraySpec(
            dtype=ds.dtype.str, shape=tuple(ds.shape), chunks=None if chunks is None else tuple(chunks), attrs=attrs
        )

    # ------------------------------------------------------------------ pooled output (cache_layout.md §3.4)
    def _create_pooled_array(self, split: str, shape: tuple[int, int, int], chunks: tuple[int, int, int]) -> None:
        dtype = np.dtype(self.meta.value_storage_dtype).newbyteorder("<")
        self._file[f"splits/{split}"].create_dataset("pooled", shape=shape, dtype=dtype,
                                                     chunks=chunks if shape[0] else None, fillvalue=0)
        self._file.flush()

    def _write_pooled(self, split: str, start: int, data: np.ndarray) -> None:
        self._ds(split, "pooled")[start : start + len(data)] = data
        self._file.flush()

    def _read_pooled(self, split: str, start: int, stop: int) -> np.ndarray:
        return self._ds(split, "pooled")[start:stop]

    def _has_pooled(self, split: str) -> bool:
        return f"splits/{split}/pooled" in self._file

    # ------------------------------------------------------------------ masks (cache_layout.md §3.6)
    def _create_masks_array(
        self, s: SplitMeta, shape: tuple[int, ...], chunks: tuple[int, ...], shards: tuple[int, ...] | None, dtype: str
    ) -> None:
        g = self._file[f"splits/{s.name}"]
        g.create_dataset("masks", shape=shape, dtype=np.dtype(dtype).newbyteorder("<"),
                         chunks=chunks if shape[0] else None, fillvalue=0, **_filter(self._compressor))
        g.create_dataset("records/masks", shape=(s.num_blocks,), dtype="<i8", fillvalue=MISSING)
        self._file.flush()

    def _write_masks(self, split: str, start: int, data: np.ndarray) -> None:
        self._ds(split, "masks")[start : start + len(data)] = data
        self._file.flush()

    def _read_masks(self, split: str, start: int, stop: int) -> np.ndarray:
        return self._ds(split, "masks")[start:stop]

    def _has_masks(self, split: str) -> bool:
        return f"splits/{split}/masks" in self._file

    def size_bytes(self) -> int:
        return os.path.getsize(self.location)


def _open_error(location: str, e: OSError) -> EpcacheError:
    """Why h5py cannot open the file: a writer has it open (named from its lock), or it is damaged."""
    try:
        lock = read_store_lock(location)
    except (EpcacheError, OSError):
        lock = None
    if lock is not None and lock.stale is not True:
        return StoreLockedError(
            f"{location} is being written by {lock.describe()}: HDF5 cannot be read while a writer has the "
            "file open (cache_layout.md §4.3). Wait until the extraction ends, or extract to zarr, which "
            "can be read during an append"
        )
    if lock is not None:
        return StoreLockedError(
            f"{location} cannot be opened ({e}); its writer {lock.describe()} is gone (killed) and left the file "
            "marked open for write. Run `h5clear -s FILE`, then resume the extraction with --break-lock"
        )
    return CorruptStoreError(
        f"{location}: HDF5 file cannot be opened ({e}); it is truncated or damaged, or another program has "
        "it open for writing. Run `epcache verify` on it; re-extract it if it is damaged"
    )


def _is_hdf5(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == HDF5_SIGNATURE


def _filter(spec: str | None) -> dict[str, Any]:
    if spec is None or spec == "none":
        return {}
    name, _, level = spec.partition(":")
    if name == "gzip":
        return {"compression": "gzip", "compression_opts": int(level) if level else 4}
    if name == "lzf":
        return {"compression": "lzf"}
    raise ConfigError(f"unknown HDF5 compressor {spec!r}; use none, gzip[:level] or lzf (zstd needs --format zarr)")
