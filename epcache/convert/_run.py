"""``convert_store()``: read a complete store chunk by chunk, transform each block, write a new store beside
its destination and swap it in when every block is recorded.

Layers are converted one after another, blocks in stored order; a source chunk that straddles two
new blocks is read once and kept until the next block has taken its rows. Writes run on extract's
background ``BlockWriter``, so reading and pooling the next block overlaps writing this one; memory
is bounded by three write-blocks of one layer of the new store plus one chunk of the source.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from epcache._fs.oserror import SpaceReserve, os_errors, require_free_space
from epcache.convert._config import ConvertConfig, ConvertResult
from epcache.convert._derive import derived_meta, select_layers
from epcache.convert._lock import DestinationLock
from epcache.errors import ConfigError, IncompleteStoreError, StoreExistsError, StoreNotFoundError
from epcache.extract.stages import BlockWriter
from epcache.store import FeatureStore, SplitSpec, StoreMeta, create_store, open_store
from epcache.store.layout.light import light_tokens, parse_keep
from epcache.store.layout.poolgrid import cast_tokens, pool_patch_tokens
from epcache.store.layout.quant import resolve_quantization
from epcache.store.open import detect_format
from epcache.store.ops.swap import STAGING_PREFIX, discard_staging, staging_location, swap_in
from epcache.store.verify.integrity import check_store_integrity

__all__ = ["convert_store"]

RESUME_HINT = "Nothing was written at the destination: run the same command again"
PENDING = 2  # blocks queued on the background writer besides the one it writes


def convert_store(config: ConvertConfig, *, progress: bool = True) -> ConvertResult:
    """Derive a store from ``config.src`` without the backbone: fewer layers, a pooled grid, another
    dtype or quantisation (int8/fp8 codes + scales, cache_layout.md §3.5), chunking or backend. Split
    order, ids, labels and classes are kept as they are.

    The source must be complete and pass the checks `epcache probe` runs; every chunk read is checked
    against its crc32c record. The new store is built at a hidden sibling of ``config.dst`` and
    renamed into place only when complete, so an interrupted conversion leaves nothing at ``dst``
    (and an existing store there, replaced with ``overwrite``, stays untouched until then).

    Raises:
        ConfigError: ``dst`` is ``src`` (or inside it), a pooling factor the grid cannot take, an
            unknown split, or something that is not a store at ``dst``.
        UnknownLayerError: ``layers`` names a layer the source does not store.
        StoreNotFoundError, CorruptStoreError, LayoutVersionError: no readable source, or one whose
            metadata, labels, ids or bytes fail their records.
        IncompleteStoreError: the source has blocks not yet written.
        StoreExistsError: a store at ``dst`` without ``overwrite``.
        StoreLockedError: another writer holds ``dst``.
        DiskFullError, FileSystemError: writing failed; nothing is left at ``dst``.
    """
    with os_errors(action=f"epcache convert into {config.dst}", resume_hint=RESUME_HINT):
        return _convert(config, progress=progress)


def _convert(config: ConvertConfig, *, progress: bool) -> ConvertResult:
    src_loc, dst_loc = _location(config.src), _location(config.dst)
    _refuse_same(src_loc, dst_loc)
    fmt = detect_format(dst_loc, config.format)
    t0 = time.perf_counter()
    with open_store(src_loc, "r", verify_reads=True) as src:
        splits = _select_splits(src, config.splits)
        layers = select_layers(src.meta, config.layers)
        check_store_integrity(src, splits)
        for name in splits:
            missing = src.missing_blocks(name)
            if missing:
                raise IncompleteStoreError(
                    f"{src_loc}: split {name!r} has {len(missing)} block(s) not written (e.g. block {missing[0]}); "
                    f"convert a complete store: finish it with `epcache extract ... --resume` or "
                    f"`epcache verify {src_loc} --repair` first"
                )
        dtype = config.dtype or src.meta.dtype
        quant = src.meta.quantization if config.quantize is None else resolve_quantization(config.quantize)
        ops: dict[str, object] = {}
        if layers != src.meta.layers:
            ops["layers"] = list(layers)
        if config.pool_patches > 1:
            ops["pool_patches"] = config.pool_patches
        if config.keep is not None:
            ops["keep"] = config.keep.split(",")
        if dtype != src.meta.dtype:
            ops["dtype"] = dtype
        if quant != src.meta.quantization:
            ops["quantize"] = quant or "none"
        if list(splits) != list(src.splits):
            ops["splits"] = list(splits)
        meta = derived_meta(
            src.meta, layers=layers, pool_patches=config.pool_patches, keep=parse_keep(config.keep), dtype=dtype,
            quantization=quant,
            source_provenance=src.provenance, source_location=src_loc, ops=ops, location=dst_loc,
            record_paths=config.record_paths, source_document=src._stored_doc,  # a writer's own keys stay
        )
        dest = DestinationLock(dst_loc, break_lock=config.break_lock)  # beside DST: nothing appears at DST
        staging: str | None = None
        try:
            exists = dest.check_destination(fmt, overwrite=config.overwrite) if dest.local else _url_exists(dst_loc)
            if exists and not config.overwrite:
                raise StoreExistsError(f"{dst_loc} already exists; pass --overwrite to replace it (kept until the "
                                       "new store is complete)")
            staging = staging_location(dst_loc) if dest.local else None
            if staging is not None:
                discard_staging(staging)  # a killed conversion's leftover: we hold the lock on dst
                require_free_space(staging, 0, action=f"creating the store {dst_loc}", resume_hint=RESUME_HINT)
            target = staging or dst_loc
            with _new_store(target, meta, fmt, config) as dst:
                read, written, samples = _copy(src, dst, splits, layers, config, progress=progress)
                if not dst.is_complete():  # every block of every layer was written above
                    raise RuntimeError(f"{target} is incomplete after conversion")  # internal invariant
                provenance = dst.provenance
            if staging is not None:
                dest.check_destination(fmt, overwrite=config.overwrite)  # a store may have appeared meanwhile
                swap_in(staging, dst_loc)
                staging = None
        finally:
            if staging is not None:
                discard_staging(staging)
            dest.release()
    return ConvertResult(
        src=src_loc, dst=dst_loc, provenance=provenance, source_provenance=src.provenance, ops=ops,
        samples=samples, bytes_read=read, bytes_written=written, seconds=time.perf_counter() - t0,
    )


@contextlib.contextmanager
def _new_store(target: str, meta: StoreMeta, fmt: str, config: ConvertConfig) -> Iterator[FeatureStore]:
    """``with create_store(...)``, made safe to close after a write failed for lack of space.

    HDF5 cannot close a file whose write failed on a full disk: the close flushes again, fails,
    and the half-closed file crashes the interpreter when it is collected (SIGSEGV at exit, after
    the one-line error was printed). So an HDF5 copy holds a ballast file (``SpaceReserve``), as
    extract's writer does; after a failure the ballast is freed and the copy, which is discarded
    anyway, is truncated before the close, so the library always finds room to finish it.
    """
    local_h5 = fmt == "h5" and "://" not in target
    staged = Path(target).name.startswith(STAGING_PREFIX)  # the copy is discarded after a failure
    reserve = SpaceReserve(target, resume_hint=RESUME_HINT) if local_h5 else None
    try:
        store = create_store(target, meta, format=fmt, overwrite="://" in target and config.overwrite,
                             compressor=config.compressor)
    except BaseException:
        if reserve is not None:
            reserve.release()
        raise
    try:
        yield store
    except BaseException:
        if reserve is not None:
            reserve.release()
            if staged:
                with contextlib.suppress(OSError):
                    os.truncate(target, 0)  # its blocks are given back to the disk
        with contextlib.suppress(Exception):
            store.close()  # the error that stopped the conversion is the one to report
        raise
    else:
        store.close()
    finally:
        if reserve is not None:
            reserve.release()


def _copy(
    src: FeatureStore, dst: FeatureStore, splits: list[str], layers: tuple[int, ...], config: ConvertConfig,
    *, progress: bool,
) -> tuple[int, int, dict[str, int]]:
    """Declare every split with the source's order, ids and labels, then write every block of every layer."""
    from tqdm.auto import tqdm

    read = written = 0
    samples: dict[str, int] = {}
    for name in splits:
        s = src.split(name)
        order, labels, ids = src.read_order(name), src.read_labels(name), src.read_ids(name)
        ds_labels = np.empty_like(labels)
        ds_labels[order] = labels
        ds_ids = [""] * s.num_samples
        for row, i in enumerate(order.tolist()):
            ds_ids[i] = ids[row]
        spec = SplitSpec(name=name, labels=ds_labels, ids=ds_ids, classes=s.classes, views=s.views,
                         permutation_seed=s.permutation_seed, masks_sha256=_masks_sha256(src, name))
        new = dst.add_split(spec, chunk_samples=config.chunk_samples, shard_samples=config.shard_samples)
        if src.has_masks(name):  # per-pixel labels do not depend on the tokens: copied as they are (§3.6)
            for b in range(new.num_blocks):
                dst.write_masks_block(name, b, src.read_mask_rows(name, *dst.block_range(name, b)))
        if src.has_pooled(name):  # the model's pooled output is not a grid: copied, cast to the new dtype
            dst.add_pooled(name, int(src.pooled_dim or 0))
            for b in range(new.num_blocks):
                start, stop = dst.block_range(name, b)
                rows = cast_tokens(src.read_pooled(name, start, stop), dst.meta.dtype)
                _check_space(dst, config, rows.nbytes, f"the pooled output of block {b} of split {name!r}")
                dst.write_pooled_block(name, b, rows)
        samples[name] = s.num_samples
        keep = parse_keep(config.keep)
        writer = BlockWriter(dst, max_pending=PENDING)
        try:
            with tqdm(total=s.num_samples * len(layers), desc=f"convert {name}", unit="row", disable=not progress,
                      dynamic_ncols=True) as bar:
                for li, layer in enumerate(layers):
                    layout = src.meta.for_layer(layer).layout
                    chunks = _ChunkCursor(src, name, layer)
                    for b in range(new.num_blocks):
                        start, stop = dst.block_range(name, b)
                        rows = chunks.rows(start, stop)
                        out = (pool_patch_tokens(rows, layout, config.pool_patches, dst.meta.dtype) if keep is None
                               else light_tokens(rows, layout, keep, dst.meta.dtype))
                        left = (len(layers) - li) * new.num_blocks - b
                        _check_space(dst, config, out.nbytes * min(left, PENDING + 1), f"block {b} of split "
                                     f"{name!r} layer {layer}")
                        writer.submit(name, b, {layer: out})
                        read += rows.nbytes
                        written += out.nbytes
                        bar.update(stop - start)
        except BaseException:
            with contextlib.suppress(Exception):
                writer.close()  # the store is discarded anyway: only stop the thread before it closes
            raise
        writer.close()  # re-raises a write error
    return read, written, samples


def _masks_sha256(src: FeatureStore, split: str) -> str | None:
    """The source's mask fingerprint of ``split``, carried into the copy with its masks."""
    return None if src.meta.dense is None else dict(src.meta.dense.get("masks_sha256", {})).get(split)


def _check_space(dst: FeatureStore, config: ConvertConfig, nbytes: int, what: str) -> None:
    """Refuse a block before it is written when the disk cannot take it (and those still queued).

    A write that fails for lack of space leaves an HDF5 file that cannot be closed cleanly, so
    the check comes first; compressed blocks are counted as nothing, since their size is unknown.
    """
    compressed = config.compressor not in (None, "none")
    require_free_space(dst.location, 0 if compressed else nbytes, action=f"writing {what} to {config.dst}",
                       resume_hint=RESUME_HINT)


class _ChunkCursor:
    """Rows of one layer read in increasing order, whole source chunks at a time (each chunk read once,
    checked against its record by the source's ``verify_reads``)."""

    def __init__(self, store: FeatureStore, split: str, layer: int) -> None:
        self.store, self.split, self.layer = store, split, layer
        self.cs = store.split(split).chunk_samples
        self.chunk = -1
        self.data: np.ndarray | None = None
        # every chunk once, in order: read ahead (many requests in flight from a store behind a URL)
        self._ahead = store.read_chunks(split, layer, range(store.split(split).num_chunks))

    def rows(self, start: int, stop: int) -> np.ndarray:
        parts: list[np.ndarray] = []
        row = start
        while row < stop:
            c = row // self.cs
            if c != self.chunk:
                self.chunk, self.data = next(self._ahead, (-1, None))
                if self.chunk != c:  # rows always advance chunk by chunk; read directly should they not
                    self.chunk, self.data = c, self.store.read_chunk(self.split, self.layer, c)
            assert self.data is not None
            first = c * self.cs
            take = min(stop, first + len(self.data))
            parts.append(self.data[row - first : take - first])
            row = take
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _select_splits(src: FeatureStore, names: tuple[str, ...] | None) -> list[str]:
    if names is None:
        return list(src.splits)
    unknown = [n for n in names if n not in src.splits]
    if unknown:
        raise ConfigError(f"--splits {','.join(unknown)}: {src.location} has splits {', '.join(src.splits)}")
    return list(dict.fromkeys(names))


def _location(loc: Path | str) -> str:
    s = str(loc)
    if "://" in s and not s.startswith("file://"):
        return s.rstrip("/")
    return str(Path(s.removeprefix("file://")).expanduser().resolve())


def _refuse_same(src: str, dst: str) -> None:
    """DST may be neither SRC nor a path inside it (nor contain it): the source is never written."""
    if "://" in src or "://" in dst:
        same = src == dst or dst.startswith(src + "/") or src.startswith(dst + "/")
    else:
        s, d = Path(src), Path(dst)
        same = s == d or s in d.parents or d in s.parents
    if same:
        raise ConfigError(
            f"convert writes a new store: the destination {dst} is the source {src} or overlaps it; choose another "
            "path (then replace the source yourself once the copy is verified)"
        )


def _url_exists(loc: str) -> bool:

    try:
        with open_store(loc):
            return True
    except StoreNotFoundError:
        return False
