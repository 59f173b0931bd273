"""``epcache verify``: check every byte of a store against its own records (cache_layout.md §3.3).

Extraction records each write-block's crc32c only after the block is durable, so a store can be
checked without its source images: every written block is read back through the backend's
library path (the bytes as stored, not a cached or direct-read copy), its crc32c recomputed chunk
by chunk and compared with the record (and, in format 1.1 sharded splits, each inner chunk with
its own record). Around that: the metadata is parsed, the provenance key recomputed, the arrays'
own dtype/shape/chunking compared with the metadata, and each split's ``order``, ``labels`` and
``ids`` checked against each other and the fingerprints (store/verify/integrity.py, shared with
`probe`). ``deep=True`` also scans every value for inf/nan. Leftovers of killed writers
(``*.partial``) and repairs (``.epcache-repair-*``) are reported, not removed.

Memory stays at one chunk: blocks are streamed, never a whole layer.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import google_crc32c
import numpy as np

from epcache._fs.paths import is_url
from epcache.errors import EpcacheError, StoreNotFoundError
from epcache.store.backends.chunks import absent_chunk_problem
from epcache.store.core import MISSING, FeatureStore
from epcache.store.layout.meta import SplitMeta
from epcache.store.layout.metadoc import MAX_META_BYTES
from epcache.store.open import detect_format, open_store
from epcache.store.ops.lock import read_store_lock
from epcache.store.read.quantised import parts_checksum
from epcache.store.verify.blocks import READ_ERRORS as _READ_ERRORS
from epcache.store.verify.blocks import MarkedBlocks, block_where, file_state, mark_blocks_missing
from epcache.store.verify.integrity import (
    array_problems,
    attribute_problems,
    ids_mirror_problem,
    provenance_problem,
    split_problems,
)
from epcache.store.verify.masks import mask_problems
from epcache.store.verify.report import BadBlock, BlockProblem, VerifyReport
from epcache.store.verify.taps import tap_problems

__all__ = ["BadBlock", "BlockProblem", "MarkedBlocks", "VerifyReport", "mark_blocks_missing", "verify_store"]

_MAX_CRC = 0xFFFFFFFF


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
            s.num_samples * s.views * t * d * checker.itemsize
            for s in store.splits.values()
            for t, d in map(store.meta.layer_shape, store.meta.layers)
        )
        from tqdm.auto import tqdm

        with tqdm(
            total=total_bytes, desc="verify", unit="B", unit_scale=True, disable=not progress, dynamic_ncols=True
        ) as bar:
            for name, s in store.splits.items():
                checker.check_split(name, s)
                for layer in store.meta.layers:
                    checker.check_layer(name, s, layer, bar)
                problems, blocks, nbytes = mask_problems(store, name)  # per-pixel labels (cache_layout.md §3.6)
                checker.problems.extend(problems)
                checker.blocks_checked += blocks
                checker.bytes_checked += nbytes
        if not store.splits:  # killed between creating the store and declaring its first split: never clean
            checker.problems.append("the store holds no split yet (its extraction stopped before writing any); "
                                    "re-run the same `epcache extract` to continue")
        checker.problems += tap_problems(store, lambda loc: verify_store(loc, deep=deep))
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
            leftovers=tuple(_leftovers(loc, writer_stale)),
            version=store.format_version,
        )




@dataclass
class _Checker:
    store: FeatureStore
    deep: bool
    problems: list[str] = field(default_factory=list)
    bad: list[BadBlock] = field(default_factory=list)
    blocks_checked: int = 0
    bytes_checked: int = 0
    bad_layers: set[str] = field(default_factory=set)

    @property
    def itemsize(self) -> int:
        return np.dtype(self.store.meta.storage_dtype).itemsize

    def check_document(self) -> None:
        """The stored provenance key must be the hash of the stored metadata (§2.3); arrays as described."""
        prov = provenance_problem(self.store)
        if prov is not None:
            self.problems.append(f"metadata: {prov}")
        for p in array_problems(self.store):
            self.problems.append(f"array metadata: {p}")
            self.bad_layers.add(p.split(":")[0])
        for p in attribute_problems(self.store):  # the bytes are still checked: only their label is wrong
            self.problems.append(f"array attributes: {p}")

    def check_split(self, name: str, s: SplitMeta) -> None:
        """``order``, ``labels``, ``ids``: lengths, permutation, ranges, uniqueness, fingerprints; the ids mirror."""
        self.problems.extend(split_problems(self.store, name))
        try:
            ids = self.store.read_ids(name)
            labels = self.store.read_labels(name)
        except _READ_ERRORS:
            return  # reported by split_problems
        if len(labels) == len(ids) and len(labels) and (labels.min() < 0 or labels.max() >= len(s.classes)):
            bad = int(np.flatnonzero((labels < 0) | (labels >= len(s.classes)))[0])
            self.problems.append(  # probe's own label check names the fix for training
                f"split {name!r}: label {int(labels[bad])} of row {bad} ({ids[bad]!r}) is outside "
                f"0..{len(s.classes) - 1} ({len(s.classes)} classes)"
            )
        unsafe = next((i for i in ids if _unsafe_id(i)), None)
        if unsafe is not None:
            self.problems.append(
                f"split {name!r}: sample id {unsafe!r} is not a relative path under the data root "
                "(absolute, empty or '..')"
            )
        mirror = ids_mirror_problem(self.store, name, ids)
        if mirror is not None:
            self.problems.append(mirror)

    def check_layer(self, name: str, s: SplitMeta, layer: int, bar: Any) -> None:
        store = self.store
        if f"split {name!r} layer {layer}" in self.bad_layers:
            return  # its array metadata is wrong: reading it through that metadata proves nothing
        try:
            records = store.block_records(name, layer)
        except _READ_ERRORS as e:
            for b in range(s.num_blocks):
                self._bad(name, layer, b, "bad-record", f"the records of this layer cannot be read ({_why(e)})")
            return
        per_block = s.block_samples // s.chunk_samples
        for b in range(s.num_blocks):
            start, stop = store.block_range(name, b)
            nbytes = (stop - start) * s.views * int(np.prod(store.meta.layer_shape(layer))) * self.itemsize
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
                crc, non_finite, chunk_bad, absent = self._read_block(
                    name, layer, b * per_block, min(s.num_chunks, (b + 1) * per_block)
                )
            except _READ_ERRORS as e:
                self._bad(name, layer, b, "unreadable", _why(e), record=rec)
                bar.update(nbytes)
                continue
            self.blocks_checked += 1
            self.bytes_checked += nbytes
            bar.update(nbytes)
            if crc == rec and absent:  # zeros that match, from a chunk that must exist (backends/chunks.py)
                self._bad(name, layer, b, "unreadable", absent, record=rec, stored_crc=crc)
            elif crc == rec and chunk_bad:
                self._bad(name, layer, b, "bad-record", chunk_bad, record=rec, stored_crc=crc)
            elif crc != rec:
                state = file_state(store, name, layer, b)
                detail = f"crc32c of the stored bytes is {crc:#010x}, the record says {rec:#010x}" + state
                self._bad(name, layer, b, "checksum", detail, record=rec, stored_crc=crc)
            elif non_finite:
                self._bad(
                    name, layer, b, "non-finite", f"{non_finite} values are inf or nan", record=rec, stored_crc=crc
                )

    def _read_block(self, split: str, layer: int, first_chunk: int, end_chunk: int) -> tuple[int, int, str, str]:
        """crc32c of a block's bytes, read one chunk at a time; its count of non-finite values; which
        per-chunk record (format 1.1 sharded splits) disagrees with its chunk, if any; and why an absent
        chunk of it may not be read as zeros, if one may not (the rule probe's reads apply, backends/chunks.py)."""
        crc = 0
        non_finite = 0
        chunk_crcs: list[int] = []
        absent = ""
        for c in range(first_chunk, end_chunk):
            parts = self.store.stored_parts(split, layer, c, c + 1)  # tokens, or codes then scales (§3.5)
            if not absent and _all_zero(parts[0]) and not self.store._chunk_present(split, layer, c):
                absent = absent_chunk_problem(self.store, split, layer, c) or ""
            chunk_crcs.append(parts_checksum(parts))
            for p in parts:
                crc = google_crc32c.extend(crc, p.tobytes())  # crc32c(a + b) = extend(crc32c(a), b)
            if self.deep:
                values = self.store._logical(parts[0]) if len(parts) == 1 else parts[1]
                non_finite += int(values.size - np.count_nonzero(np.isfinite(values)))
        chunk_bad = ""
        s = self.store.split(split)
        if s.block_samples != s.chunk_samples:
            recs = self.store._read_chunk_records(split, layer, first_chunk, end_chunk)
            if recs is not None:
                pairs = zip(recs.tolist(), chunk_crcs, strict=True)
                wrong = [first_chunk + k for k, (a, b) in enumerate(pairs) if a != b]
                if wrong:
                    chunk_bad = f"the per-chunk records of chunk(s) {wrong} disagree with their bytes (records damaged)"
        return int(crc), non_finite, chunk_bad, absent

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
                where=block_where(self.store, split, layer, block),
                record=record,
                stored_crc=stored_crc,
            )
        )


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
    if is_url(location):
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
    if is_url(location):
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


def _all_zero(a: np.ndarray) -> bool:
    """Every byte zero: what zarr-python and h5py return for an absent chunk (also for a stored all-zero one)."""
    return not np.ascontiguousarray(a).view(np.uint8).any()


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


def _leftovers(location: str, writer_stale: bool | None) -> list[str]:
    """``*.partial`` files in a local zarr store (a writer killed inside zarr's atomic write) and
    ``.epcache-repair-*`` scratch directories beside the store (a killed repair), unless a live writer
    may still own them. Resume and repair remove them; verify only reports."""
    if is_url(location) or writer_stale is False:
        return []
    path = Path(location)
    out: list[str] = []
    if path.is_dir():
        partial = sorted(path.rglob("*.partial"))
        out.extend(f"{p} (a write killed before its rename; resume or repair removes it)" for p in partial[:20])
        if len(partial) > 20:
            out.append(f"... and {len(partial) - 20} more .partial files")
    parent = path.expanduser().absolute().parent
    try:
        scratch = sorted(p for p in parent.glob(".epcache-repair-*") if p.is_dir())
    except OSError:
        scratch = []
    out.extend(f"{p} (scratch of a killed `verify --repair`; the next repair removes it)" for p in scratch)
    return out
