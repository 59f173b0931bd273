"""``epcache verify``: check every byte of a store against its own records (cache_layout.md §3.3).

Extraction records each write-block's crc32c only after the block is durable, so a store can be
checked without its source images: every written block is read back through the backend's
library path (the bytes as stored, not a cached or direct-read copy), its crc32c recomputed chunk
by chunk and compared with the record. Around that: the metadata is parsed and cross-checked
against the arrays (opening the store already does part of this), the provenance key is
recomputed, and each split's ``order``, ``labels`` and ``ids`` are checked against each other and
against the fingerprints in the metadata. ``deep=True`` also scans every value for inf/nan.

Memory stays at one chunk: blocks are streamed, never a whole layer.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from os import PathLike
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Literal

import google_crc32c
import numpy as np

from epcache.errors import EpcacheError, StoreNotFoundError
from epcache.store._base import MISSING, FeatureStore, storage_permutation
from epcache.store._hdf5 import HDF5FeatureStore
from epcache.store._info import human_bytes
from epcache.store._lock import read_store_lock
from epcache.store._meta import MAX_META_BYTES, SplitMeta
from epcache.store._open import detect_format, open_store
from epcache.store._zarr import ZarrFeatureStore, _is_url

__all__ = ["BadBlock", "BlockProblem", "MarkedBlocks", "VerifyReport", "mark_blocks_missing", "verify_store"]

BlockProblem = Literal["missing", "checksum", "unreadable", "bad-record", "non-finite"]
_MAX_CRC = 0xFFFFFFFF
_READ_ERRORS = (EpcacheError, OSError, ValueError, RuntimeError)  # what a damaged chunk raises in zarr/h5py


@dataclass(frozen=True, slots=True)
class BadBlock:
    """One write-block of one layer that cannot be trusted (cache_layout.md §3.2 blocks)."""

    split: str
    layer: int
    block: int
    rows: tuple[int, int]  # stored rows [start, stop)
    problem: BlockProblem  # missing: record -1; checksum: bytes differ from the record; unreadable:
    #                        the chunk cannot be decoded; bad-record: the record itself is damaged;
    #                        non-finite: inf/nan values (deep scan only)
    detail: str  # what was found, in words
    where: str  # the chunk file (zarr) or dataset and chunk (HDF5) that holds the block
    record: int | None = None  # the recorded crc32c (None: missing or unreadable record)
    stored_crc: int | None = None  # crc32c of the bytes as stored, where they could be read

    @property
    def key(self) -> tuple[str, int, int]:
        return self.split, self.layer, self.block

    def format_text(self) -> str:
        return (
            f"split={self.split} layer={self.layer} block={self.block} rows={self.rows[0]}-{self.rows[1]}  "
            f"{self.problem}: {self.detail}  [{self.where}]"
        )


@dataclass(frozen=True)
class VerifyReport:
    """What ``verify_store`` found. ``ok`` is True only when nothing at all is wrong."""

    location: str
    format: str  # "zarr" or "h5"
    deep: bool  # values were also scanned for inf/nan
    splits: tuple[str, ...]
    layers: tuple[int, ...]
    blocks_total: int  # write-blocks x layers over all splits
    blocks_checked: int  # written blocks whose crc32c was recomputed from the stored bytes
    bytes_checked: int
    seconds: float
    problems: tuple[str, ...] = ()  # store- and split-level: metadata, provenance, ids, labels, order
    bad_blocks: tuple[BadBlock, ...] = ()
    readable: bool = True  # False: the store could not be opened at all (see ``problems``)
    writer: str | None = None  # the writer lock on the store, if any (store/_lock.py), described
    writer_stale: bool | None = None  # True: its process is gone (crashed); None: cannot be told

    @property
    def ok(self) -> bool:
        return self.readable and not self.problems and not self.bad_blocks

    @property
    def missing(self) -> tuple[BadBlock, ...]:
        return tuple(b for b in self.bad_blocks if b.problem == "missing")

    @property
    def corrupt(self) -> tuple[BadBlock, ...]:
        return tuple(b for b in self.bad_blocks if b.problem != "missing")

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["ok"] = self.ok
        return doc

    def format_text(self) -> str:
        """Summary line, then one line per problem and per bad block."""
        head = (
            f"verify {self.location} [{self.format}]: {len(self.splits)} split(s), {len(self.layers)} layer(s), "
            f"{self.blocks_total} blocks; {self.blocks_checked} checksummed "
            f"({human_bytes(self.bytes_checked)}{', values scanned' if self.deep else ''}) in {self.seconds:.1f} s"
        )
        if not self.readable:
            head = f"verify {self.location} [{self.format}]: the store cannot be opened"
        lines = [head]
        if self.writer is not None:
            state = {
                True: "its process is gone (killed or crashed): re-run the extraction with --break-lock to finish",
                False: "an extraction is writing this store now: missing blocks may still come",
                None: "held from another host: missing blocks may still come",
            }[self.writer_stale]
            lines.append(f"writer: {self.writer}; {state}")
        if self.ok:
            lines.append("clean: metadata consistent, every block present and equal to its recorded crc32c")
            return "\n".join(lines)
        lines.append(
            f"BAD: {len(self.problems)} metadata/split problem(s), {len(self.corrupt)} corrupt block(s), "
            f"{len(self.missing)} missing block(s)"
        )
        lines.extend(f"  problem  {p}" for p in self.problems)
        lines.extend(f"  block    {b.format_text()}" for b in self.bad_blocks)
        if self.readable and not self.problems:
            lines.append(
                f"fix: `epcache verify {self.location} --repair` re-extracts exactly these blocks from the images "
                "(add --data ROOT if the images moved since extraction)"
            )
        elif any("already open for write" in p for p in self.problems):
            lines.append(
                "fix: a process killed while writing left the HDF5 file marked open for write; `h5clear -s FILE` "
                "(hdf5 tools) clears the mark, then re-run the extraction with --break-lock to finish it; or "
                "re-extract with `epcache extract --overwrite`"
            )
        else:
            lines.append("fix: the metadata itself is damaged; re-extract the store with `epcache extract --overwrite`")
        return "\n".join(lines)


def verify_store(location: str | PathLike[str], *, deep: bool = False, progress: bool = False) -> VerifyReport:
    """Check a store's metadata, completeness and every written block's bytes.

    Args:
        location: a .zarr directory, an .h5 file or a URL.
        deep: also scan every stored value for inf/nan (reads the same bytes; costs a pass over them).
        progress: show a tqdm bar (bytes read) on stderr.

    Returns:
        The report; ``report.ok`` is False if anything is missing, corrupt or inconsistent. A store
        whose metadata cannot be parsed is reported (``readable=False``), not raised.

    Raises:
        StoreNotFoundError: nothing at ``location`` is an epcache store (no store to verify).
    """
    t0 = time.perf_counter()
    loc = str(location)
    writer, writer_stale = _writer(loc)
    oversized = _oversized_root_document(loc)  # zarr parses zarr.json itself, before any size check
    if oversized is not None:
        return _unreadable(loc, "zarr", oversized, deep=deep, t0=t0, writer=(writer, writer_stale))
    try:
        store = open_store(loc, "r")
    except StoreNotFoundError:
        damage = _damaged_root_document(loc)  # a zarr.json that is there but does not parse
        if damage is None:
            raise
        return _unreadable(loc, "zarr", damage, deep=deep, t0=t0, writer=(writer, writer_stale))
    except EpcacheError as e:  # CorruptStoreError, LayoutVersionError: a store, but not a sound one
        return _unreadable(loc, _format_of(loc), str(e), deep=deep, t0=t0, writer=(writer, writer_stale))
    with store:
        checker = _Checker(store, deep=deep)
        checker.check_document()
        total_bytes = sum(
            s.num_samples * s.views * store.meta.num_tokens * store.meta.dim * checker.itemsize
            for s in store.splits.values()
        ) * len(store.meta.layers)
        from tqdm.auto import tqdm

        with tqdm(
            total=total_bytes, desc="verify", unit="B", unit_scale=True, disable=not progress, dynamic_ncols=True
        ) as bar:
            for name, s in store.splits.items():
                checker.check_split(name, s)
                for layer in store.meta.layers:
                    checker.check_layer(name, s, layer, bar)
        return VerifyReport(
            location=loc,
            format=store.format,
            deep=deep,
            splits=tuple(store.splits),
            layers=tuple(store.meta.layers),
            blocks_total=sum(s.num_blocks for s in store.splits.values()) * len(store.meta.layers),
            blocks_checked=checker.blocks_checked,
            bytes_checked=checker.bytes_checked,
            seconds=time.perf_counter() - t0,
            problems=tuple(checker.problems),
            bad_blocks=tuple(checker.bad),
            writer=writer,
            writer_stale=writer_stale,
        )


def mark_blocks_missing(
    store: FeatureStore, blocks: Iterable[tuple[str, int, int]], *, set_aside: Path | None = None
) -> MarkedBlocks:
    """Set the records of ``(split, layer, block)`` to MISSING so that a resumed extraction rewrites them.

    In a local zarr store the block's file (a chunk, or the whole shard) and anything occupying its
    path are moved out of the way: zarr merges a write into an existing shard and fails on a damaged
    one, and a directory where the chunk file belongs (or a file where a directory belongs) would
    stop the write. They go to ``set_aside`` (``MarkedBlocks.undo`` puts them back), or are deleted
    when it is None. HDF5 blocks are overwritten in place, so nothing moves.

    Returns:
        What was changed, enough to undo it exactly.

    Raises:
        ReadOnlyStoreError: the store is open read-only.
    """
    store._require_writable()
    previous: dict[tuple[str, int, int], int | None] = {}
    moved: list[tuple[str, str]] = []
    for split, layer, block in blocks:
        key = (split, layer, block)
        if key in previous:
            continue
        try:
            previous[key] = int(store.block_records(split, layer)[block])
        except _READ_ERRORS:
            previous[key] = None
        for path in _block_occupants(store, split, layer, block):
            if set_aside is None and path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif set_aside is None:
                path.unlink()
            else:
                aside = set_aside / f"{len(moved)}.{path.name}"
                shutil.move(path, aside)
                moved.append((str(path), str(aside)))
        store._write_record(split, layer, block, MISSING)
    store._records_cache.clear()
    return MarkedBlocks(previous=previous, moved=tuple(moved))


@dataclass(frozen=True)
class MarkedBlocks:
    """What ``mark_blocks_missing`` changed: the previous records and the files it moved aside."""

    previous: dict[tuple[str, int, int], int | None]  # None: the record could not be read
    moved: tuple[tuple[str, str], ...] = ()  # (original path, where it went)

    def undo(self, store: FeatureStore) -> None:
        """Put every moved file back and every readable record back, as before the marking."""
        for original, aside in reversed(self.moved):
            path = Path(original)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(aside, original)
        for (split, layer, block), rec in self.previous.items():
            if rec is not None:
                store._write_record(split, layer, block, rec)
        store._records_cache.clear()


# ---------------------------------------------------------------------------------------- checks


@dataclass
class _Checker:
    store: FeatureStore
    deep: bool
    problems: list[str] = field(default_factory=list)
    bad: list[BadBlock] = field(default_factory=list)
    blocks_checked: int = 0
    bytes_checked: int = 0

    @property
    def itemsize(self) -> int:
        return np.dtype(self.store.meta.storage_dtype).itemsize

    def check_document(self) -> None:
        """The stored provenance key must be the hash of the stored metadata (§2.3)."""
        doc = _stored_document(self.store)
        if doc is None:
            return
        stored = doc.get("provenance")
        if stored != self.store.provenance:
            self.problems.append(
                f"metadata: the recorded provenance key {stored!r} is not the hash of the metadata "
                f"({self.store.provenance}); the document was edited after extraction"
            )

    def check_split(self, name: str, s: SplitMeta) -> None:
        """``order``, ``labels``, ``ids``: lengths, permutation, ranges, uniqueness, fingerprints."""
        where = f"split {name!r}"
        try:
            order = self.store.read_order(name)
            labels = self.store.read_labels(name)
            ids = self.store.read_ids(name)
        except _READ_ERRORS as e:
            self.problems.append(f"{where}: cannot read order/labels/ids ({_why(e)})")
            return
        n = s.num_samples
        for vec, what in ((order, "order"), (labels, "labels"), (ids, "ids")):
            if len(vec) != n:
                self.problems.append(f"{where}: {what} has {len(vec)} entries, the metadata says {n} samples")
                return
        if not np.array_equal(np.sort(order), np.arange(n)):
            self.problems.append(f"{where}: order is not a permutation of 0..{n - 1}")
            return
        if not np.array_equal(order, storage_permutation(n, s.permutation_seed)):
            self.problems.append(
                f"{where}: order is not the permutation of seed {s.permutation_seed} (cache_layout.md §3.1)"
            )
        if n and (labels.min() < 0 or labels.max() >= len(s.classes)):
            bad = int(np.flatnonzero((labels < 0) | (labels >= len(s.classes)))[0])
            self.problems.append(
                f"{where}: label {int(labels[bad])} of row {bad} ({ids[bad]!r}) is outside 0..{len(s.classes) - 1} "
                f"({len(s.classes)} classes)"
            )
        if len(set(ids)) != n:
            dup, count = Counter(ids).most_common(1)[0]
            self.problems.append(f"{where}: sample id {dup!r} appears {count} times; ids must be unique")
        unsafe = next((i for i in ids if _unsafe_id(i)), None)
        if unsafe is not None:
            self.problems.append(
                f"{where}: sample id {unsafe!r} is not a relative path under the data root (absolute, empty or '..')"
            )
        dataset_ids: list[str] = [""] * n  # stored row i holds dataset sample order[i]
        for row, i in enumerate(order.tolist()):
            dataset_ids[i] = ids[row]
        dataset_labels = np.empty(n, np.int64)
        dataset_labels[order] = labels
        ids_sha = hashlib.sha256("\n".join(dataset_ids).encode("utf-8")).hexdigest()
        labels_sha = hashlib.sha256(np.ascontiguousarray(dataset_labels, dtype="<i8").tobytes()).hexdigest()
        if ids_sha != s.ids_sha256:
            self.problems.append(f"{where}: the ids do not match ids_sha256 of the metadata (edited or damaged)")
        if labels_sha != s.labels_sha256:
            self.problems.append(f"{where}: the labels do not match labels_sha256 of the metadata (edited or damaged)")

    def check_layer(self, name: str, s: SplitMeta, layer: int, bar: Any) -> None:
        store = self.store
        geometry = _chunk_geometry(store, name, layer)
        if geometry is not None and geometry != (s.chunk_samples, s.block_samples):
            self.problems.append(
                f"split {name!r} layer {layer}: the array is chunked {geometry[0]} samples per chunk and "
                f"{geometry[1]} per block, the metadata says {s.chunk_samples} and {s.block_samples}"
            )
            return
        try:
            records = store.block_records(name, layer)
        except _READ_ERRORS as e:
            for b in range(s.num_blocks):
                self._bad(name, layer, b, "bad-record", f"the records of this layer cannot be read ({_why(e)})")
            return
        per_block = s.block_samples // s.chunk_samples
        for b in range(s.num_blocks):
            start, stop = store.block_range(name, b)
            nbytes = (stop - start) * s.views * store.meta.num_tokens * store.meta.dim * self.itemsize
            rec = int(records[b])
            if rec == MISSING:
                self._bad(name, layer, b, "missing", "record is -1: not written (interrupted, or marked for repair)")
                bar.update(nbytes)
                continue
            if not 0 <= rec <= _MAX_CRC:
                self._bad(name, layer, b, "bad-record", f"record {rec} is neither -1 nor a crc32c")
                bar.update(nbytes)
                continue
            try:
                crc, non_finite = self._read_block(name, layer, b * per_block, min(s.num_chunks, (b + 1) * per_block))
            except _READ_ERRORS as e:
                self._bad(name, layer, b, "unreadable", _why(e), record=rec)
                bar.update(nbytes)
                continue
            self.blocks_checked += 1
            self.bytes_checked += nbytes
            bar.update(nbytes)
            if crc != rec:
                state = _file_state(store, name, layer, b)
                detail = f"crc32c of the stored bytes is {crc:#010x}, the record says {rec:#010x}" + state
                self._bad(name, layer, b, "checksum", detail, record=rec, stored_crc=crc)
            elif non_finite:
                self._bad(
                    name, layer, b, "non-finite", f"{non_finite} values are inf or nan", record=rec, stored_crc=crc
                )

    def _read_block(self, split: str, layer: int, first_chunk: int, end_chunk: int) -> tuple[int, int]:
        """crc32c of a block's bytes, read one chunk at a time, and its count of non-finite values."""
        crc = 0
        non_finite = 0
        for c in range(first_chunk, end_chunk):
            start, stop = self.store.chunk_range(split, c)
            raw = np.ascontiguousarray(self.store._read_array(split, layer, start, stop))
            crc = google_crc32c.extend(crc, raw.tobytes())  # crc32c(a + b) = extend(crc32c(a), b)
            if self.deep:
                values = self.store._logical(raw)
                non_finite += int(values.size - np.count_nonzero(np.isfinite(values)))
        return int(crc), non_finite

    def _bad(
        self,
        split: str,
        layer: int,
        block: int,
        problem: BlockProblem,
        detail: str,
        *,
        record: int | None = None,
        stored_crc: int | None = None,
    ) -> None:
        self.bad.append(
            BadBlock(
                split=split,
                layer=layer,
                block=block,
                rows=self.store.block_range(split, block),
                problem=problem,
                detail=detail,
                where=_block_where(self.store, split, layer, block),
                record=record,
                stored_crc=stored_crc,
            )
        )


# ---------------------------------------------------------------------------------------- backends


def _block_file(store: FeatureStore, split: str, layer: int, block: int) -> Path | None:
    """A local zarr store's file for a block: ``c/<block>/0/0/0`` (a chunk, or the shard when sharded)."""
    if not isinstance(store, ZarrFeatureStore) or _is_url(store.location):
        return None
    arr = store._array(split, "layers", str(layer))
    if getattr(arr.metadata.chunk_key_encoding, "separator", None) != "/":
        return None
    return Path(store.location) / "splits" / split / "layers" / str(layer) / "c" / str(block) / "0" / "0" / "0"


def _block_where(store: FeatureStore, split: str, layer: int, block: int) -> str:
    path = _block_file(store, split, layer, block)
    if path is not None:
        return path.as_posix()
    if isinstance(store, HDF5FeatureStore):
        start, stop = store.block_range(split, block)
        detail = ""
        try:
            info = store._ds(split, f"layers/{layer}").id.get_chunk_info_by_coord((start, 0, 0, 0))
            if info.byte_offset is not None:
                detail = f", {info.size} bytes at offset {info.byte_offset}"
        except _READ_ERRORS:
            pass
        return f"{store.location}:/splits/{split}/layers/{layer} chunk at rows {start}-{stop}{detail}"
    return f"{store.location}/splits/{split}/layers/{layer} block {block}"


def _file_state(store: FeatureStore, split: str, layer: int, block: int) -> str:
    """Why a zarr chunk read as zeros: its file is gone or is not a file."""
    path = _block_file(store, split, layer, block)
    if path is None:
        return ""
    try:
        if path.is_file():
            return ""
        if path.is_dir():
            return "; a directory stands where the chunk file belongs"
    except OSError:
        pass
    if any(p.is_file() for p in list(path.parents)[:4]):
        return "; a file stands where a directory of the chunk path belongs"
    return "; the chunk file is missing (zarr reads it as the fill value, zeros)"


def _block_occupants(store: FeatureStore, split: str, layer: int, block: int) -> list[Path]:
    """The block's file of a local zarr store, or whatever occupies its path (a file in place of a directory)."""
    path = _block_file(store, split, layer, block)
    if path is None:
        return []
    root = Path(store.location) / "splits" / split / "layers" / str(layer)
    for parent in reversed(list(path.parents)[:4]):  # c, c/<block>, c/<block>/0, c/<block>/0/0
        if parent.is_relative_to(root) and (parent.is_symlink() or (parent.exists() and not parent.is_dir())):
            return [parent]  # a file where a directory belongs: nothing below it exists
    return [path] if path.exists() or path.is_symlink() else []


def _chunk_geometry(store: FeatureStore, split: str, layer: int) -> tuple[int, int] | None:
    """(chunk samples, block samples) as the backend stores the array, or None if unknown."""
    try:
        if isinstance(store, ZarrFeatureStore):
            arr = store._array(split, "layers", str(layer))
            shards = arr.shards
            return int(arr.chunks[0]), int(shards[0] if shards is not None else arr.chunks[0])
        if isinstance(store, HDF5FeatureStore):
            chunks = store._ds(split, f"layers/{layer}").chunks
            return None if chunks is None else (int(chunks[0]), int(chunks[0]))
    except _READ_ERRORS:
        return None
    return None


def _stored_document(store: FeatureStore) -> dict[str, Any] | None:
    """The root JSON document exactly as stored (not as re-derived from the parsed metadata)."""
    if isinstance(store, ZarrFeatureStore):
        raw: Any = store._group.attrs.get("epcache")
    elif isinstance(store, HDF5FeatureStore):
        raw = store._file.attrs.get("epcache")
    else:
        return None
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8")
    if isinstance(raw, str):
        raw = json.loads(raw)  # already size-checked and parsed once by open_store
    return dict(raw) if isinstance(raw, dict) else None


def _unreadable(
    loc: str, fmt: str, problem: str, *, deep: bool, t0: float, writer: tuple[str | None, bool | None]
) -> VerifyReport:
    return VerifyReport(
        location=loc,
        format=fmt,
        deep=deep,
        splits=(),
        layers=(),
        blocks_total=0,
        blocks_checked=0,
        bytes_checked=0,
        seconds=time.perf_counter() - t0,
        problems=(problem,),
        readable=False,
        writer=writer[0],
        writer_stale=writer[1],
    )


def _damaged_root_document(location: str) -> str | None:
    """Why a local zarr store's root ``zarr.json`` exists but cannot be parsed; None if it parses (or is absent)."""
    if _is_url(location):
        return None
    doc = Path(location) / "zarr.json"
    try:
        if not doc.is_file() or _oversized_root_document(location) is not None:
            return None
        json.loads(doc.read_bytes())
    except (OSError, ValueError) as e:
        return f"{doc} is damaged: not valid JSON ({type(e).__name__}: {e})"
    return None


def _oversized_root_document(location: str) -> str | None:
    """A local zarr store's root ``zarr.json`` over MAX_META_BYTES (cache_layout.md §2), described."""
    if _is_url(location):
        return None
    doc = Path(location) / "zarr.json"
    try:
        size = doc.stat().st_size if doc.is_file() else 0
    except OSError:
        return None
    if size <= MAX_META_BYTES:
        return None
    return f"{doc} is {size} bytes, over the {MAX_META_BYTES}-byte metadata limit; refusing to parse it"


def _writer(location: str) -> tuple[str | None, bool | None]:
    try:
        lock = read_store_lock(location)
    except (EpcacheError, OSError):
        return None, None
    return (None, None) if lock is None else (lock.describe(), lock.stale)


def _format_of(location: str) -> str:
    try:
        return detect_format(location)
    except EpcacheError:
        return "?"


def _unsafe_id(sid: str) -> bool:
    p = PurePosixPath(sid)
    return (
        not sid
        or "\x00" in sid
        or p.is_absolute()
        or PureWindowsPath(sid).is_absolute()
        or bool(PureWindowsPath(sid).drive)
        or ".." in p.parts
        or ".." in PureWindowsPath(sid).parts
    )


def _why(e: BaseException) -> str:
    text = (str(e) or type(e).__name__).split("; run `epcache verify`")[0]  # we are that command
    return text if isinstance(e, EpcacheError) else f"{type(e).__name__}: {text}"
