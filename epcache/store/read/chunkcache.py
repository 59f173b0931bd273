"""A local directory of copies of remote chunks, so that epochs after the first read local disk.

``epcache probe --cache-dir DIR`` (``ProbeConfig.cache_dir``) sets a :class:`ChunkCache` on the
stores it opens; every chunk read of a read-only store behind a URL then goes through it. An entry
is one chunk's bytes exactly as stored (C order, little-endian storage dtype: the bytes its crc32c
record covers) and the sha256 of those bytes, at::

    DIR/<provenance>/<split>/<layer>/<chunk>-<crc32c as 8 hex digits>.bin
    DIR/<provenance>/<split>/<layer>/<chunk>-<crc32c as 8 hex digits>.sha256

The key holds the store's provenance (two stores with one provenance hold identical tokens), the
array and the chunk's own crc32c record: the block record where a chunk is a block, the
per-chunk record of a sharded format-1.1 store, so a store re-extracted with other bytes gets
other entries. An entry is written only by the verified path: bytes just fetched from the store
that match that crc32c record; its ``.sha256`` is computed from those bytes. It is served only
when its bytes hash to that sha256 (kept in memory for entries this process wrote or checked), its
files belong to the user running the probe, and it has the exact size; anything else (a torn
write of a killed run, an edited or planted file, a file without its ``.sha256``) is counted in
``stats.rejected``, deleted and fetched again, with one note per cache. The read checks
(``verify_reads``) still run on every chunk served. Chunks without a per-chunk record (sharded
format-1.0 stores, never-written blocks) are not cached. Files are written to a temporary name and
renamed into place.

What the cache protects against, and what not. crc32c is no MAC: anyone can make other bytes with
the same crc32c, so the crc32c in the name only keys the entry. DIR is created with mode 0700, and
an existing DIR that belongs to another user or that others may write to (group or world write
bit) is refused (``ConfigError``): on a shared scratch disk use a folder of your own, such as
``/scratch/$USER/epcache``. So other users cannot put or change entries; an entry file owned by
another user (planted while the folder was open) is never served; and a forged ``.bin`` with the
right crc32c but no matching sha256 is never served. Someone who runs as the same user (or root)
can rewrite a ``.bin`` and its ``.sha256`` together between runs, and that entry is served: this
cache is no defence against one's own account (which could as well change the code). Within one
run, an entry is checked against the sha256 held in memory, which no file edit can change.

The cache never changes a byte that is read, so it changes no result; it is not recorded in
result rows. Size: ``max_bytes`` evicts the least recently used entries once the directory holds
more; without it the directory grows to the size of the chunks read. Deleting the directory (or
any file in it) at any time, between runs, is safe: entries are fetched again.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from epcache.errors import ConfigError
from epcache.store.layout.chunking import MISSING
from epcache.store.layout.crc import block_checksum

if TYPE_CHECKING:
    from epcache.store.core import FeatureStore

__all__ = ["CacheStats", "ChunkCache"]

_SAFE = re.compile(r"[^A-Za-z0-9._-]")
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass
class CacheStats:
    """What the cache did since it was made (for tests and progress notes; never in result rows)."""

    hits: int = 0  # chunks served from the directory
    misses: int = 0  # chunks fetched from the store (then written to the directory)
    rejected: int = 0  # entries that failed their checks (sha256, owner, size): deleted and fetched again
    evicted: int = 0  # entries deleted to stay under max_bytes


class ChunkCache:
    """Local copies of remote chunks, keyed by provenance, array and the chunk's crc32c record.

    Args:
        root: the cache directory (created, mode 0700, on the first write).
        max_bytes: evict least recently used entries beyond this size; None: no limit.
        say: where the one note about rejected entries goes (default: nowhere; counted in ``stats``).

    Raises:
        ConfigError: ``root`` is a file or lies under one, belongs to another user or may be written
            by others, or ``max_bytes`` is not positive.
    """

    def __init__(self, root: str | os.PathLike[str], *, max_bytes: int | None = None,
                 say: Callable[[str], None] | None = None) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"--cache-dir {self.root} is a file; pass a directory (it is created if missing)")
        if self.root.is_dir():
            _check_private(self.root)
        elif any(p.exists() and not p.is_dir() for p in self.root.parents):
            raise ConfigError(f"--cache-dir {self.root} cannot be created: a part of that path is a regular file; "
                              "pass another directory")
        if max_bytes is not None and max_bytes <= 0:
            raise ConfigError(f"the chunk cache size limit must be positive, got {max_bytes} bytes")
        self.max_bytes = max_bytes
        self.say = say
        self.stats = CacheStats()
        self._lock = threading.Lock()
        self._size: int | None = None  # bytes held, scanned on the first write under a limit
        self._records: dict[tuple[int, str, int], tuple[np.ndarray, np.ndarray | None]] = {}
        self._records_lock = threading.Lock()
        self._digests: dict[Path, str] = {}  # sha256 of entries this process wrote or checked
        self._root_ready = False

    def applies_to(self, store: FeatureStore) -> bool:
        """Only read-only stores behind a URL: local disk needs no copy, and a writable store may change."""
        return store.is_remote and store.read_only

    def fetch(self, store: FeatureStore, split: str, layer: int, chunk: int, start: int, stop: int) -> np.ndarray:
        """Chunk ``chunk``'s stored bytes (as ``_read_chunk_array``): from the directory when it holds them."""
        if not self.applies_to(store):
            return store._read_chunk_array(split, layer, chunk, start, stop)
        crc = self._expected_crc(store, split, layer, chunk)
        if crc is None:
            return store._read_chunk_array(split, layer, chunk, start, stop)
        path = self.root / _SAFE.sub("_", store.provenance) / split / str(layer) / f"{chunk}-{crc:08x}.bin"
        shape = (stop - start, store.split(split).views, *store.meta.layer_shape(layer))
        held = self._load(path, shape, np.dtype(store.meta.storage_dtype).newbyteorder("<"))
        if held is not None:
            with self._lock:
                self.stats.hits += 1
            return held
        raw = store._read_chunk_array(split, layer, chunk, start, stop)
        with self._lock:
            self.stats.misses += 1
        if block_checksum(raw) == crc:  # never keep bytes that fail their record: the read check reports them
            self._save(path, raw, _sha256(raw))
        return raw

    # ------------------------------------------------------------------ internals
    def _expected_crc(self, store: FeatureStore, split: str, layer: int, chunk: int) -> int | None:
        s = store.split(split)
        per_block = s.block_samples // s.chunk_samples
        blocks, chunks = self._layer_records(store, split, layer)
        block_record = int(blocks[chunk // per_block])
        if block_record == MISSING:
            return None
        if per_block == 1:
            return block_record
        if chunks is None or int(chunks[chunk]) == MISSING:
            return None
        return int(chunks[chunk])

    def _layer_records(self, store: FeatureStore, split: str, layer: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Block and per-chunk records of a layer, read once (read-ahead threads wait for the first)."""
        key = (id(store), split, layer)
        with self._records_lock:
            if key not in self._records:
                s = store.split(split)
                shared = store._read_checks.chunk_records  # the read checks' copy: each record array read once
                if s.block_samples != s.chunk_samples and (split, layer) not in shared:
                    shared[(split, layer)] = store._read_chunk_records(split, layer, 0, s.num_chunks)
                chunks = shared.get((split, layer)) if s.block_samples != s.chunk_samples else None
                self._records[key] = (store.block_records(split, layer), chunks)
            return self._records[key]

    def _load(self, path: Path, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray | None:
        out = np.empty(shape, dtype)
        view = memoryview(out.reshape(-1).view(np.uint8))
        try:
            with open(path, "rb") as f:
                mine = _owned(f.fileno())
                n = f.readinto(view) if mine else -1
                extra = f.read(1) if mine else b""
        except FileNotFoundError:
            return None
        except OSError:
            n, extra = -1, b""
        expected = self._digests.get(path) or _read_digest(_digest_path(path))
        if n == len(view) and not extra and expected is not None and _sha256(out) == expected:
            self._digests[path] = expected
            with contextlib.suppress(OSError):
                os.utime(path)  # least recently used goes first under max_bytes
            return out
        with self._lock:
            self.stats.rejected += 1
            first = self.stats.rejected == 1
        if first and self.say is not None:
            self.say(f"note: chunk cache {self.root}: entry {path.relative_to(self.root)} fails its sha256, size "
                     "or owner check; it is fetched from the store again (so is any other such entry)")
        self._digests.pop(path, None)
        for p in (path, _digest_path(path)):
            with contextlib.suppress(OSError):
                p.unlink()
        return None

    def _save(self, path: Path, raw: np.ndarray, digest: str) -> None:
        self._digests[path] = digest  # this run serves the entry only if it still hashes to the verified bytes
        try:
            self._make_root()
            path.parent.mkdir(parents=True, exist_ok=True)
            _atomic_bytes(path, memoryview(np.ascontiguousarray(raw).reshape(-1).view(np.uint8)))
            _atomic_bytes(_digest_path(path), (digest + "\n").encode())  # after the bytes: a lone .bin is rejected
        except OSError:
            return  # a full or read-only cache disk costs speed, never a result
        if self.max_bytes is not None:
            self._account(raw.nbytes)

    def _make_root(self) -> None:
        """Create the cache directory private to its user (0700), once; check one that appeared meanwhile.

        Raises:
            ConfigError: the directory belongs to another user or may be written by others.
        """
        if self._root_ready:
            return
        made = not self.root.exists()
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if made:
            with contextlib.suppress(OSError):
                os.chmod(self.root, 0o700)
        _check_private(self.root)
        self._root_ready = True

    def _account(self, added: int) -> None:
        assert self.max_bytes is not None
        with self._lock:
            if self._size is None:
                self._size = sum(_size_of(p) for p in self.root.rglob("*.bin"))
            else:
                self._size += added
            if self._size <= self.max_bytes:
                return
            entries = sorted((_mtime_of(p), p) for p in self.root.rglob("*.bin"))
            self._size = sum(_size_of(p) for _, p in entries)
            target = int(self.max_bytes * 0.9)  # evict to below the limit, not one entry per write
            for _, p in entries:
                if self._size <= target:
                    break
                size = _size_of(p)
                p.unlink(missing_ok=True)
                _digest_path(p).unlink(missing_ok=True)
                self._digests.pop(p, None)
                self._size -= size
                self.stats.evicted += 1


def _check_private(root: Path) -> None:
    """Refuse a cache directory another user owns or may write: they could plant entries in it.

    Raises:
        ConfigError: names the directory, why, and the fix.
    """
    st = root.stat()
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise ConfigError(f"--cache-dir {root} belongs to another user (uid {st.st_uid}), who could put chunks in it "
                          "that the probe would read; pass a directory of your own, e.g. /scratch/$USER/epcache")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(f"--cache-dir {root} may be written by other users (mode {stat.S_IMODE(st.st_mode):o}), "
                          f"who could put chunks in it that the probe would read; run `chmod 700 {root}` "
                          "or pass a private directory")


def _owned(fd: int) -> bool:
    """Whether an open entry file belongs to the user running the probe (a planted file does not)."""
    return not hasattr(os, "getuid") or os.fstat(fd).st_uid == os.getuid()


def _sha256(raw: np.ndarray) -> str:
    view = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
    return hashlib.sha256(view).hexdigest()


def _digest_path(path: Path) -> Path:
    return path.with_suffix(".sha256")


def _read_digest(path: Path) -> str | None:
    """The sha256 recorded beside an entry, if the file is ours and holds one."""
    try:
        with open(path, "rb") as f:
            if not _owned(f.fileno()):
                return None
            text = f.read(100).decode("ascii", "replace").strip()
    except OSError:
        return None
    return text if _HEX64.fullmatch(text) else None


def _atomic_bytes(path: Path, data: memoryview | bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)  # a killed run leaves a .tmp file at most, never a torn entry
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def _size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:  # deleted meanwhile (by another run sharing the directory)
        return 0


def _mtime_of(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
