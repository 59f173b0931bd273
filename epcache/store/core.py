"""The backend-independent feature store: metadata, splits, block records, the write path.

Backends (``backends/zarr.py``, ``backends/hdf5.py``) implement a handful of primitive array operations; all
policy lives here and in the mixins (``read/tokens.py``: every read; ``read/pooled_output.py``: the pooled
output; ``read/quantised.py``: quantised parts) so that both backends behave identically and pass
one contract test suite (tests/store/test_store_contract.py). cache_layout.md is the
specification this implements.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Self

import numpy as np

from epcache._storepeek import unknown_split_error
from epcache.errors import (
    CorruptStoreError,
    ReadOnlyStoreError,
    ShapeMismatchError,
    StoreExistsError,
    UnknownLayerError,
)
from epcache.store.layout.chunking import MISSING, NUMPY_DTYPES, ChunkPlan, plan_chunks, storage_permutation
from epcache.store.layout.crc import block_checksum
from epcache.store.layout.meta import SplitMeta, SplitSpec, StoreMeta
from epcache.store.layout.metadoc import FORMAT_VERSION
from epcache.store.layout.provenance import compute_provenance, provenance_of_document, split_fingerprint
from epcache.store.read.checks import ReadChecks
from epcache.store.read.chunkcache import ChunkCache
from epcache.store.read.masks import MaskArrays
from epcache.store.read.pooled_output import PooledArrays
from epcache.store.read.quantised import QuantArrays
from epcache.store.read.tokens import TokenReads
from epcache.store.verify.integrity import ArraySpec, validate_on_open

_NUMPY_DTYPES = NUMPY_DTYPES

__all__ = ["MISSING", "ChunkPlan", "FeatureStore", "block_checksum", "plan_chunks", "storage_permutation"]

class FeatureStore(TokenReads, PooledArrays, QuantArrays, MaskArrays, ABC):
    """A feature store: splits of labels, ids and per-layer ``[N, V, T, D]`` token arrays.

    Open one with ``open_store`` / ``create_store``; no code outside ``epcache.store`` knows
    which backend it holds. Stored rows follow a seeded random permutation of the dataset order
    (``read_order``), so reading whole chunks in random order gives class-mixed batches.
    """

    meta: StoreMeta
    location: str
    read_only: bool
    verify_reads: bool = False  # check every chunk read against its records (cache_layout.md §3.3)
    chunk_cache: ChunkCache | None = None  # local copies of remote chunks (store/read/chunkcache.py)

    def __init__(self, location: str, *, read_only: bool) -> None:
        self.location = location
        self.read_only = read_only
        self.format_version: str = FORMAT_VERSION  # "1.0" or "1.1": of the document as stored
        self._stored_doc: dict[str, Any] | None = None  # the root document as last read or written
        self._splits: dict[str, SplitMeta] = {}
        self._records_cache: dict[tuple[str, int], np.ndarray] = {}
        self._read_checks = ReadChecks()  # what verify_reads has checked so far

    # ------------------------------------------------------------------ backend primitives
    @property
    @abstractmethod
    def format(self) -> str:
        """ "zarr" or "h5"."""

    @abstractmethod
    def _write_meta_doc(self, doc: dict[str, Any]) -> None: ...

    @abstractmethod
    def _create_split_arrays(
        self, spec: SplitMeta, *, labels: np.ndarray, ids: Sequence[str], order: np.ndarray
    ) -> None: ...

    @abstractmethod
    def _read_array(self, split: str, layer: int, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) in the storage dtype."""

    @abstractmethod
    def _write_array(self, split: str, layer: int, start: int, data: np.ndarray) -> None:
        """Write rows starting at ``start`` (block-aligned) durably; atomic where possible."""

    @abstractmethod
    def _read_vector(self, split: str, name: str) -> np.ndarray:
        """``labels``, ``order`` or ``ids`` of a split."""

    @abstractmethod
    def _read_records(self, split: str, layer: int) -> np.ndarray:
        """Block records (int64; crc32c of the block's bytes, or MISSING)."""

    @abstractmethod
    def _write_record(self, split: str, layer: int, block: int, value: int) -> None: ...

    @abstractmethod
    def _array_shape(self, split: str, layer: int) -> tuple[int, ...]:
        """Shape of a token array as the backend records it (not as the JSON claims)."""

    @abstractmethod
    def _array_spec(self, split: str, layer: int, kind: str = "layers") -> ArraySpec:
        """dtype, shape and chunking of a token (``kind`` "scales": scales) array as the backend records it."""

    def _read_chunk_records(self, split: str, layer: int, first: int, stop: int) -> np.ndarray | None:
        """Per-chunk crc32c of chunks ``[first, stop)`` of a sharded split (format 1.1), or None."""
        return None

    def _write_chunk_records(self, split: str, layer: int, first: int, values: np.ndarray) -> None:
        """Record per-chunk crc32c of a sharded block (format 1.1); backends without shards have none."""

    def _validate(self) -> None:
        """Cross-check the JSON metadata against the arrays, so a hand-edited document fails here."""
        validate_on_open(self)

    @abstractmethod
    def size_bytes(self) -> int:
        """Bytes on disk."""

    def close(self) -> None:
        """Release file handles; the default has none."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ metadata
    @property
    def is_remote(self) -> bool:
        """Whether the store lives behind a URL (object storage), where each read is a request."""
        return "://" in self.location and not self.location.startswith("file://")

    @property
    def splits(self) -> dict[str, SplitMeta]:
        return dict(self._splits)

    @property
    def provenance(self) -> str:
        """The provenance key as STORED in the document (what every tool shows and compares).

        ``computed_provenance()`` recomputes it; the two differ only when the document was edited,
        which `epcache verify`, `info`, `ls` and `probe` report.
        """
        if self._stored_doc is not None and isinstance(self._stored_doc.get("provenance"), str):
            return str(self._stored_doc["provenance"])
        return self.computed_provenance()

    def computed_provenance(self) -> str:
        """The key recomputed from the stored document (cache_layout.md §2.3).

        Format 1.1 hashes the document exactly as stored. Format 1.0 writers hashed their parsed,
        normalised metadata, so a 1.0 key is recomputed the same way.
        """
        if self.format_version != "1.0" and self._stored_doc is not None:
            return provenance_of_document(self._stored_doc)
        return compute_provenance(self.meta, self._splits, self.format_version)

    def meta_document(self) -> dict[str, Any]:
        """The full root JSON document (cache_layout.md §2), every key written, with its provenance key."""
        doc = self.meta.to_json(self.format_version)
        doc["splits"] = {name: s.to_json() for name, s in self._splits.items()}
        doc["provenance"] = provenance_of_document(doc)
        return doc

    def _store_doc(self) -> None:
        """Write the root document and remember it as stored."""
        doc = self.meta_document()
        self._write_meta_doc(doc)
        self._stored_doc = doc

    def split(self, name: str) -> SplitMeta:
        try:
            return self._splits[name]
        except KeyError:
            raise unknown_split_error(self.location, name, self._splits) from None

    def _check_layer(self, layer: int) -> None:
        if layer not in self.meta.layers:
            raise UnknownLayerError(
                f"{self.location} has no layer {layer} (stored layers: "
                f"{', '.join(map(str, self.meta.layers))}); re-extract with `--layers` including it"
            )

    def _require_writable(self) -> None:
        if self.read_only:
            raise ReadOnlyStoreError(
                f"{self.location} is open read-only; open it with open_store(path, mode='a') to write"
            )

    # ------------------------------------------------------------------ writing
    def set_extra(self, key: str, value: Any) -> None:
        """Record free JSON under ``extra`` (not part of the provenance), e.g. skipped images."""
        import dataclasses

        self._require_writable()
        self.meta = dataclasses.replace(self.meta, extra={**self.meta.extra, key: value})
        self._store_doc()

    def add_split(
        self,
        spec: SplitSpec,
        *,
        chunk_samples: int | None = None,
        shard_samples: int | None = None,
    ) -> SplitMeta:
        """Declare a split: record labels/ids in permuted order and create its token arrays."""
        self._require_writable()
        if spec.name in self._splits:
            raise StoreExistsError(f"{self.location} already has a split {spec.name!r}")
        if not spec.name or "/" in spec.name or spec.name.startswith("."):
            raise ShapeMismatchError(f"invalid split name {spec.name!r}: use letters, digits, '-' and '_'")
        labels = np.asarray(spec.labels)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise ShapeMismatchError(f"labels of split {spec.name!r} must be a 1-D integer array")
        labels = labels.astype(np.int64)
        n = len(labels)
        if len(spec.ids) != n:
            raise ShapeMismatchError(f"split {spec.name!r} has {n} labels but {len(spec.ids)} ids")
        if spec.views < 1:
            raise ShapeMismatchError(f"views must be >= 1, got {spec.views}")
        widest = max(t * d for t, d in map(self.meta.layer_shape, self.meta.layers))  # chunks shared by layers
        sample_bytes = spec.views * widest * _NUMPY_DTYPES[self.meta.dtype].itemsize
        plan = plan_chunks(
            n, sample_bytes, len(self.meta.layers), chunk_samples=chunk_samples, shard_samples=shard_samples
        )
        ids_sha, labels_sha = split_fingerprint(spec)
        meta = SplitMeta(
            name=spec.name,
            num_samples=n,
            views=spec.views,
            classes=tuple(spec.classes),
            chunk_samples=plan.chunk_samples,
            block_samples=plan.block_samples,
            permutation_seed=spec.permutation_seed,
            ids_sha256=ids_sha,
            labels_sha256=labels_sha,
        )
        order = storage_permutation(n, spec.permutation_seed)
        ids = [spec.ids[i] for i in order]
        self._create_split_arrays(meta, labels=labels[order], ids=ids, order=order)
        self._splits[spec.name] = meta
        self._add_masks(spec, meta)  # a store with masks: the split's masks array (cache_layout.md §3.6)
        self._store_doc()
        return meta

    def block_range(self, split: str, block: int) -> tuple[int, int]:
        """Stored rows ``[start, stop)`` of write-block ``block``."""
        s = self.split(split)
        if not 0 <= block < s.num_blocks:
            raise IndexError(f"block {block} out of range for split {split!r} ({s.num_blocks} blocks)")
        start = block * s.block_samples
        return start, min(s.num_samples, start + s.block_samples)

    def write_block(self, split: str, layer: int, block: int, data: np.ndarray) -> None:
        """Write one block durably, then record it written with its crc32c (never the other order)."""
        self._require_writable()
        self._check_layer(layer)
        s = self.split(split)
        start, stop = self.block_range(split, block)
        want = (stop - start, s.views, *self.meta.layer_shape(layer))
        if tuple(data.shape) != want:
            raise ShapeMismatchError(
                f"block {block} of {split!r} layer {layer} must have shape {want}, got {tuple(data.shape)}"
            )
        if self.quant is not None:  # float in, codes and scales stored (cache_layout.md §3.5)
            codes, scales, crcs, whole = self._encode_block(split, data)
            self._write_scales(split, layer, self._scale_rows(split, start // s.chunk_samples, 0)[0], scales)
            self._write_array(split, layer, start, codes)
            self._finish_block(split, layer, block, crcs, whole)
            return
        expected = _NUMPY_DTYPES[self.meta.dtype]
        if data.dtype != expected:
            raise ShapeMismatchError(
                f"block data has dtype {data.dtype}, the store holds {self.meta.dtype}; convert before writing"
            )
        raw = np.ascontiguousarray(data).view(self.meta.storage_dtype)
        self._write_array(split, layer, start, raw)
        cs = s.chunk_samples
        sharded = s.block_samples != s.chunk_samples and self.format_version != "1.0"
        crcs = [block_checksum(raw[i : i + cs]) for i in range(0, len(raw), cs)] if sharded else []
        self._finish_block(split, layer, block, crcs, block_checksum(raw))

    def _finish_block(self, split: str, layer: int, block: int, chunk_crcs: list[int], whole: int) -> None:
        """After a block's arrays are written: its per-chunk records (1.1 sharded), then its record (§3.3)."""
        s = self.split(split)
        start, _ = self.block_range(split, block)
        if s.block_samples != s.chunk_samples and self.format_version != "1.0":
            self._write_chunk_records(split, layer, start // s.chunk_samples, np.array(chunk_crcs, np.int64))
        self._write_record(split, layer, block, whole)
        self._records_cache.pop((split, layer), None)

    # ------------------------------------------------------------------ completeness
    def block_records(self, split: str, layer: int) -> np.ndarray:
        """crc32c per block of one layer; MISSING where a block was never written."""
        self.split(split)
        self._check_layer(layer)
        key = (split, layer)
        if self.read_only and key in self._records_cache:
            return self._records_cache[key]
        rec = np.asarray(self._read_records(split, layer), dtype=np.int64)
        if rec.shape != (self._splits[split].num_blocks,):
            raise CorruptStoreError(
                f"{self.location}: block records of {split!r} layer {layer} have shape {rec.shape}, "
                f"expected ({self._splits[split].num_blocks},); re-extract the store"
            )
        if self.read_only:
            self._records_cache[key] = rec
        return rec

    def missing_blocks(self, split: str, layer: int | None = None) -> list[int]:
        """Blocks not yet recorded written, for ``layer`` or for any layer (and the masks) when None."""
        layers = self.meta.layers if layer is None else (layer,)
        missing: set[int] = set()
        for ly in layers:
            missing.update(np.flatnonzero(self.block_records(split, ly) == MISSING).tolist())
        if layer is None:  # a block is written once its masks are too (cache_layout.md §3.6)
            missing.update(self.missing_mask_blocks(split))
        return sorted(missing)

    def is_complete(self) -> bool:
        return bool(self._splits) and all(not self.missing_blocks(name) for name in self._splits)


def check_new_location(exists: bool, location: str, overwrite: bool) -> None:
    if exists and not overwrite:
        raise StoreExistsError(
            f"{location} already exists; pass --overwrite (overwrite=True) to replace it, "
            "or --resume to continue an interrupted extraction"
        )
