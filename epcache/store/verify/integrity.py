"""Is a store still what its records say? The checks `epcache probe` runs before it trains.

Extraction records a fingerprint of everything a probe depends on: the provenance key of the
metadata document, sha256 of the labels and of the ids, the seeded stored order, and the dtype
and chunking of every token array (the bytes themselves are checked per chunk as they are read,
``FeatureStore._check_chunk``). A store whose labels were shuffled, whose document was edited
(a wrong backbone name would go into every results row) or whose array metadata says int16
where float16 was written must not be trained on: ``check_store_integrity`` raises, naming the
check that failed and the fix. `epcache verify` reports the same problems (all of them) and
reads every byte on top.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from epcache.errors import CorruptStoreError, EpcacheError
from epcache.store.layout.chunking import MISSING, ids_utf8, storage_permutation
from epcache.store.layout.meta import SplitMeta
from epcache.store.layout.quant import token_attributes

if TYPE_CHECKING:
    from epcache.store.core import FeatureStore

__all__ = [
    "ArraySpec",
    "array_problems",
    "attribute_problems",
    "check_for_probe",
    "check_store_integrity",
    "ids_mirror_problem",
    "provenance_problem",
    "split_problems",
    "validate_on_open",
]

_READ_ERRORS = (EpcacheError, OSError, ValueError, RuntimeError, KeyError)


@dataclass(frozen=True)
class ArraySpec:
    """A token array as its backend records it (zarr.json / the HDF5 dataset), not as the JSON claims."""

    dtype: str  # numpy dtype string with byte order, e.g. "<f2"
    shape: tuple[int, ...]
    chunks: tuple[int, ...] | None  # read chunk (inner chunk when sharded); None: contiguous HDF5
    shards: tuple[int, ...] | None = None  # zarr shard shape, None when not sharded
    attrs: dict[str, object] | None = None  # the array's ``epcache_*`` attributes (cache_layout.md §3)


def validate_on_open(store: FeatureStore) -> None:
    """What opening a store checks of its arrays against the JSON metadata.

    A shape mismatch always fails. A dtype or chunking mismatch fails only when the store is
    opened for writing: written through a wrong dtype, intact blocks would be converted and lost
    (readers get the full report from `epcache verify` and the refusal from `probe`).
    """
    for name, s in store.splits.items():
        for layer in store.meta.layers:
            want = (s.num_samples, s.views, *store.meta.layer_shape(layer))
            got = store._array_shape(name, layer)
            if got != want:
                raise CorruptStoreError(
                    f"{store.location}: metadata says split {name!r} layer {layer} has shape {want}, "
                    f"the array has shape {got}; the metadata was edited or the store is damaged. "
                    "Re-extract it"
                )
    if not store.read_only:
        problems = array_problems(store)
        if problems:
            raise CorruptStoreError(
                f"{store.location}: refusing to write into this store: {problems[0]}. Writing would store "
                "blocks in a dtype or layout the metadata does not describe"
            )


def array_problems(store: FeatureStore, splits: Iterable[str] | None = None) -> list[str]:
    """Every token array whose dtype, shape or chunking differs from the metadata, described."""
    want_dtype = np.dtype(store.meta.storage_dtype).newbyteorder("<").str
    out: list[str] = []
    for name in store.splits if splits is None else splits:
        s = store.split(name)
        for layer in store.meta.layers:
            shape = (s.num_samples, s.views, *store.meta.layer_shape(layer))
            chunk = (s.chunk_samples, *shape[1:])
            shard = (s.block_samples, *shape[1:]) if s.block_samples != s.chunk_samples else None
            where = f"split {name!r} layer {layer}"
            try:
                spec = store._array_spec(name, layer)
            except _READ_ERRORS as e:
                out.append(f"{where}: the array's metadata cannot be read ({e})")
                continue
            if spec.dtype != want_dtype:
                out.append(
                    f"{where}: the array's own metadata says dtype {spec.dtype}, the store's storage_dtype is "
                    f"{store.meta.storage_dtype} ({want_dtype}); the array metadata was edited (the bytes are "
                    f"likely intact): set its data type back to {store.meta.storage_dtype}, or re-extract"
                )
            if spec.shape != shape:
                out.append(f"{where}: the array has shape {spec.shape}, the metadata says {shape}")
            if s.num_samples and (spec.chunks != chunk or spec.shards != shard):
                out.append(
                    f"{where}: the array is chunked {spec.chunks} sharded {spec.shards}, the metadata says "
                    f"chunks {chunk} shards {shard} (chunk_samples={s.chunk_samples}, "
                    f"block_samples={s.block_samples})"
                )
            if store.quant is not None:
                out.extend(_scales_problems(store, s, layer, where))
    return out


def attribute_problems(store: FeatureStore, splits: Iterable[str] | None = None) -> list[str]:
    """Every token array whose ``epcache_*`` attributes disagree with the metadata document, described.

    Other tools read a token array by its attributes (cache_layout.md §3: ``epcache_dtype`` says that
    a ``uint16`` array holds bfloat16 bits), so an edited attribute makes them misread intact bytes,
    while epcache, which reads the document, would not notice. Format 1.0 did not write them: there
    an attribute is checked only where one is present.
    """

    want = token_attributes(store.meta)
    out: list[str] = []
    for name in store.splits if splits is None else splits:
        for layer in store.meta.layers:
            try:
                got = store._array_spec(name, layer).attrs or {}
            except _READ_ERRORS:
                continue  # array_problems reports an array whose metadata cannot be read
            for key, value in want.items():
                have = got.get(key)
                have = have.decode("utf-8", "replace") if isinstance(have, bytes) else have
                if have == value or (have is None and store.format_version == "1.0"):
                    continue
                said = "is missing" if have is None else f"is {have!r}"
                out.append(
                    f"split {name!r} layer {layer}: the token array's attribute {key} {said}, the metadata document "
                    f"says {value!r} (tools that read the attribute would misread the values; the bytes are "
                    f"likely intact): set the attribute back to {value!r} (zarr: the array's zarr.json "
                    "`attributes`; HDF5: the dataset's attribute), or re-extract the store with "
                    "`epcache extract --overwrite`"
                )
    return out


def _scales_problems(store: FeatureStore, s: SplitMeta, layer: int, where: str) -> list[str]:
    """A quantised layer's scales array (cache_layout.md §3.5) against the shape and chunking it must have."""
    shape, chunks, shards = store.scales_layout(s, layer)
    try:
        spec = store._array_spec(s.name, layer, "scales")
    except _READ_ERRORS as e:
        return [f"{where}: the scales array cannot be read ({e})"]
    if spec.dtype != "<f4" or spec.shape != shape:
        return [f"{where}: the scales array is {spec.dtype} {spec.shape}, the metadata says <f4 {shape}"]
    if s.num_samples and (spec.chunks != chunks or (spec.shards is not None and spec.shards != shards)):
        return [f"{where}: the scales array is chunked {spec.chunks} sharded {spec.shards}, expected {chunks} {shards}"]
    return []


def provenance_problem(store: FeatureStore) -> str | None:
    """The stored provenance key differs from the one recomputed from the stored document."""
    stored, computed = store.provenance, store.computed_provenance()
    if stored == computed:
        return None
    return (
        f"the stored provenance key {stored} is not the hash of the stored metadata ({computed}); "
        "the document was edited after extraction"
    )


def split_problems(store: FeatureStore, name: str, *, ids_too: bool = True) -> list[str]:
    """``order``, ``labels`` and ``ids`` of a split against each other and the metadata's fingerprints."""
    s: SplitMeta = store.split(name)
    where = f"split {name!r}"
    try:
        order = store.read_order(name)
        labels = store.read_labels(name)
        ids = store.read_ids(name) if ids_too else None
    except _READ_ERRORS as e:
        return [f"{where}: cannot read order/labels/ids ({e})"]
    n = s.num_samples
    for vec, what in ((order, "order"), (labels, "labels"), (ids, "ids")):
        if vec is not None and len(vec) != n:
            return [f"{where}: {what} has {len(vec)} entries, the metadata says {n} samples"]
    if not np.array_equal(np.sort(order), np.arange(n)):
        return [f"{where}: order is not a permutation of 0..{n - 1}"]
    out: list[str] = []
    if not np.array_equal(order, storage_permutation(n, s.permutation_seed)):
        out.append(f"{where}: order is not the permutation of seed {s.permutation_seed} (cache_layout.md §3.1)")
    dataset_labels = np.empty(n, np.int64)
    dataset_labels[order] = labels
    labels_sha = hashlib.sha256(np.ascontiguousarray(dataset_labels, dtype="<i8").tobytes()).hexdigest()
    if labels_sha != s.labels_sha256:
        out.append(f"{where}: the labels do not match labels_sha256 of the metadata (edited, shuffled or damaged)")
    if ids is not None:
        if len(set(ids)) != n:
            dup, count = Counter(ids).most_common(1)[0]
            out.append(f"{where}: sample id {dup!r} appears {count} times; ids must be unique")
        dataset_ids: list[str] = [""] * n  # stored row i holds dataset sample order[i]
        for row, i in enumerate(order.tolist()):
            dataset_ids[i] = ids[row]
        ids_sha = hashlib.sha256("\n".join(dataset_ids).encode("utf-8")).hexdigest()
        if ids_sha != s.ids_sha256:
            out.append(f"{where}: the ids do not match ids_sha256 of the metadata (edited or damaged)")
    return out


def check_store_integrity(store: FeatureStore, splits: Iterable[str]) -> None:
    """Refuse a store whose metadata, arrays, labels or ids do not match their records.

    Cheap: it reads the metadata, the labels, ids and order of ``splits``, and nothing of the
    tokens (their bytes are checked chunk by chunk as they are read, with ``verify_reads``).

    Raises:
        CorruptStoreError: naming the failed check (provenance, array metadata, labels, ids,
            order) and the fix: `epcache verify STORE`, or `--trust-store` to train anyway.
    """
    names = list(dict.fromkeys(splits))
    checks: list[tuple[str, list[str]]] = []
    prov = provenance_problem(store)
    checks.append(("provenance", [prov] if prov else []))
    checks.append(("array metadata", array_problems(store, names)))
    checks.append(("array attributes", attribute_problems(store, names)))
    for name in names:
        problems = split_problems(store, name)
        if not problems and store.format_version != "1.0":
            mirror = ids_mirror_problem(store, name, store.read_ids(name))
            problems = [mirror] if mirror else []
        checks.append((f"split {name!r}", problems))
        try:
            records_ok = all(
                store.block_records(name, layer).min(initial=0) >= MISSING for layer in store.meta.layers
            )
        except _READ_ERRORS as e:
            checks.append(("records", [f"the block records of split {name!r} cannot be read ({e})"]))
            continue
        if not records_ok:
            checks.append(("records", [f"split {name!r} has block records below -1 (damaged)"]))
    for check, problems in checks:
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise CorruptStoreError(
                f"{store.location} fails the {check} check: {problems[0]}{more}. Run `epcache verify "
                f"{store.location}` for the full report; pass --trust-store (trust_store=True) to use it anyway"
            )


def ids_mirror_problem(store: FeatureStore, name: str, ids: list[str]) -> str | None:
    """Format 1.1: ``ids_utf8`` (fixed-width UTF-8 bytes) must hold exactly the ids."""
    if store.format_version == "1.0":
        return None

    try:
        mirror = np.asarray(store._read_vector(name, "ids_utf8"))
    except _READ_ERRORS as e:
        return f"split {name!r}: the ids_utf8 mirror cannot be read ({e})"
    want = ids_utf8(ids)
    if mirror.shape != want.shape or not np.array_equal(mirror, want):
        return f"split {name!r}: the ids_utf8 mirror differs from the ids (edited or damaged)"
    return None


def check_for_probe(
    store: FeatureStore, eval_store: FeatureStore, train_split: str, eval_split: str, trust: bool
) -> list[str]:
    """What `epcache probe` checks before training: ``check_store_integrity`` on the train store (train and,
    when it holds it, eval split) and on a separate eval store. With ``trust`` (--trust-store) nothing is
    checked; a stored provenance key that differs from the recomputed one is returned as a warning."""
    pairs = [(store, [train_split] + ([eval_split] if eval_store is store else []))]
    if eval_store is not store:
        pairs.append((eval_store, [eval_split]))
    warnings: list[str] = []
    for st, splits in pairs:
        if not trust:
            check_store_integrity(st, splits)
        elif (problem := provenance_problem(st)) is not None:
            warnings.append(f"{st.location}: {problem}; --trust-store: training on it anyway")
    return warnings
