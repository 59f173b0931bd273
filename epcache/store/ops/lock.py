"""One writer at a time: a lock file that names the host, process and start time of a store's writer.

Two extractions into one store would interleave their blocks and metadata writes, and nothing in
the store itself would show it afterwards. So a writer first creates a lock file, exclusively:

- zarr (a directory or a URL prefix): ``<store>/.epcache.lock``;
- HDF5 (one file): ``<file>.lock`` beside it.

The file is JSON (``LockInfoJSON``) and holds nothing but where the writer runs; never a path
with credentials, never command-line options. A second writer is refused with that information.
A lock whose process no longer runs on this host is *stale* (the writer crashed or was killed):
it is reported as such and ``break_lock=True`` (``--break-lock``) removes it. A lock held on
another host cannot be checked from here; the same option breaks it once the user knows that
writer is gone. Under torchrun only rank 0 takes the lock; the other ranks follow its barrier.

On local (and NFSv4) file systems the holder also keeps an advisory ``flock`` on the lock file
for as long as it writes; the kernel drops it when the process dies. That makes taking the lock,
and replacing a stale one, atomic: whoever gets the ``flock`` decides, so of several
``--break-lock`` resumers racing for one stale lock exactly one wins (job-array retries do
this), and a lock whose process still runs on this host is never broken, ``--break-lock`` or
not. On object stores creation is a conditional put (``If-None-Match: *``, s3fs
``mode="create"``); there a stale lock is removed and re-created, which is not atomic. Readers never
look at the lock: what they may read is decided by the metadata and the block records
(cache_layout.md §3.3), so reading while a writer appends is safe without it.
"""

from __future__ import annotations

import json
import os
import stat
from os import PathLike
from pathlib import Path
from typing import Self

from epcache._fs.lockfile import (
    LockInfo,
    StoreLockedError,
    create_exclusive,
    is_url,
    pid_alive,
    read_lock,
    remove_lock_file,
    take_local_lock,
)
from epcache.errors import StoreExistsError

__all__ = [
    "LOCK_NAME",
    "LockInfo",
    "StoreLock",
    "StoreLockedError",
    "acquire_store_lock",
    "lock_location",
    "read_store_lock",
]

LOCK_NAME = ".epcache.lock"  # inside a zarr store; an HDF5 file gets "<file>.lock" beside it
_H5_SUFFIXES = (".h5", ".hdf5", ".hdf")


class StoreLock:
    """An acquired lock on one store; release it with ``release()`` or by leaving the ``with`` block."""

    def __init__(
        self, location: str, info: LockInfo, *, made_dirs: tuple[str, ...] = (), fd: int | None = None
    ) -> None:
        self.location = location  # the store
        self.lock_path = lock_location(location)
        self.info = info
        self._made_dirs = made_dirs  # directories made for the lock (removed again if left empty)
        self._fd = fd  # local locks: the descriptor holding the flock, closed last
        self._held = True

    @property
    def held(self) -> bool:
        return self._held

    def release(self) -> None:
        """Remove the lock file if it is still ours; idempotent.

        A directory that only existed to hold the lock (the store was never created because the
        extraction stopped at a user error) is removed too, so such errors leave nothing behind.
        """
        if not self._held:
            return
        self._held = False
        try:
            current = read_lock(self.lock_path)
            if current is not None and (current.host, current.pid, current.started) != (
                self.info.host,
                self.info.pid,
                self.info.started,
            ):
                return  # someone broke our lock and took it: it is theirs now
            remove_lock_file(self.lock_path)  # unlinked while the flock is held: see _acquire_local's retry
            _remove_empty_dirs(self._made_dirs)
        finally:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_location(location: str | PathLike[str]) -> str:
    """Where the lock of the store at ``location`` lives (a local path or a URL)."""
    loc = str(location).rstrip("/")
    if _is_h5(loc):
        return loc + ".lock"
    return f"{loc}/{LOCK_NAME}"


def read_store_lock(location: str | PathLike[str]) -> LockInfo | None:
    """The lock on the store at ``location``, or None when no writer holds it.

    An unreadable lock file (a writer killed while writing it) reads as a lock of host "?" and
    pid -1, which is never treated as provably stale.
    """
    return read_lock(lock_location(location))


def acquire_store_lock(
    location: str | PathLike[str], *, break_lock: bool = False, purpose: str = "epcache extract"
) -> StoreLock:
    """Take the writer lock of the store at ``location`` (which need not exist yet).

    Args:
        location: the store: a zarr directory, an HDF5 file or an fsspec URL.
        break_lock: remove an existing lock first (after a crash; also on another host, which
            epcache cannot check: only pass it when that writer is known to be gone).
        purpose: recorded in the lock so a refused writer learns what holds it.

    Raises:
        StoreLockedError: another writer holds the lock, or a crashed one left it (the message
            says which, and suggests ``--break-lock`` for the latter).
        StoreExistsError: a file sits where a zarr store directory would go.
    """
    loc = str(location).rstrip("/")
    path = lock_location(loc)
    info = LockInfo.current(purpose)
    made_dirs = _prepare_parent(loc, path)
    payload = json.dumps(info.to_json()).encode()
    try:
        if not is_url(path):
            fd = take_local_lock(loc, path, payload, break_lock=break_lock, message=_locked_message)
            return StoreLock(loc, info, made_dirs=made_dirs, fd=fd)
        for attempt in range(2):
            if create_exclusive(path, payload):
                return StoreLock(loc, info, made_dirs=made_dirs)
            holder = read_lock(path)
            if holder is None:  # released between our attempt and the read: try again
                continue
            if break_lock and attempt == 0 and not (holder.on_this_host and pid_alive(holder.pid)):
                remove_lock_file(path)
                continue
            raise StoreLockedError(_locked_message(loc, path, holder))
        raise StoreLockedError(f"{loc}: could not take the writer lock {path}; another writer keeps taking it")
    except BaseException:
        _remove_empty_dirs(made_dirs)
        raise


# ---------------------------------------------------------------------------------------- helpers


def _locked_message(loc: str, path: str, holder: LockInfo, *, held: bool = False) -> str:
    stale = holder.stale
    if held and (holder.pid < 0 or stale):  # the flock says someone holds it right now
        return (
            f"{loc} is being written by another process that is taking its writer lock ({path}) right now; "
            "wait for it to finish, or stop it first"
        )
    if holder.pid < 0:
        return (
            f"{loc} has an unreadable writer lock ({path}), left by a writer killed while taking it. "
            "If no extraction is running on this store, pass --break-lock (break_lock=True) to remove it"
        )
    if stale:
        return (
            f"{loc} has a stale writer lock: {holder.describe()}, and that process no longer runs on this "
            "host (it crashed or was killed). Pass --break-lock (break_lock=True) to remove the lock and "
            "continue the extraction"
        )
    if stale is None:
        return (
            f"{loc} is locked by another writer: {holder.describe()}. epcache cannot check a process on "
            f"another host; if that job is gone, pass --break-lock (break_lock=True). Lock file: {path}"
        )
    return (
        f"{loc} is being written by another process: {holder.describe()}. Two writers would corrupt the "
        "store: wait for it to finish (it may be still running), or stop it first. --break-lock never "
        f"removes the lock of a process that runs on this host (if pid {holder.pid} is not an epcache "
        f"writer, the pid was reused: delete {path} by hand)"
    )


def _is_h5(location: str) -> bool:
    if location.lower().endswith(_H5_SUFFIXES):
        return True
    if is_url(location):
        return False
    p = Path(location)
    if p.is_file():
        with open(p, "rb") as f:
            return f.read(8) == b"\x89HDF\r\n\x1a\n"
    return False


def _prepare_parent(loc: str, path: str) -> tuple[str, ...]:
    """Create the directory the lock goes into; return the directories made, deepest first.

    For a new zarr store that is the store's own directory (and missing parents), for an HDF5
    file the directory it will be created in. Object stores have no directories to create.

    Racing creators of one new store make and remove this directory concurrently (a holder that
    releases the lock of a store it never created removes it again), so every look at it is one
    ``stat`` and a directory that vanishes mid-way is a lost race (``StoreLockedError``), never
    reported as a file in the way or left to fail later with ``FileNotFoundError``.
    """
    if is_url(loc):
        return ()
    parent = Path(path).parent
    kind = _kind(parent)
    if kind == "dir":
        return ()
    if kind == "other":
        raise _in_the_way(loc, parent)
    missing = [parent, *(p for p in parent.parents if _kind(p) == "none")]
    try:
        parent.mkdir(parents=True, exist_ok=True)  # two new-store writers may race to make it
    except (FileExistsError, NotADirectoryError, FileNotFoundError):
        blocker = next((p for p in (parent, *parent.parents) if _kind(p) == "other"), None)
        if blocker is not None:
            raise _in_the_way(loc, blocker) from None
        raise StoreLockedError(  # made and removed again by a racing writer while we made it
            f"{loc}: another writer is creating or removing this location right now (its directory {parent} "
            "vanished while this process was taking the writer lock); wait for it to finish, then try again"
        ) from None
    return tuple(str(p) for p in missing)


def _kind(p: Path) -> str:
    """``dir``, ``none`` (nothing there) or ``other`` (a file, a broken link...), from one ``stat``."""
    for look in (os.stat, os.lstat):  # lstat: a dangling symbolic link is in the way, not "nothing"
        try:
            mode = look(p).st_mode
        except FileNotFoundError:
            continue
        except NotADirectoryError:  # a parent is a file: reported for that parent
            return "none"
        return "dir" if stat.S_ISDIR(mode) else "other"
    return "none"


def _in_the_way(loc: str, blocker: Path) -> StoreExistsError:
    if str(blocker) == loc:
        return StoreExistsError(
            f"{loc} exists and is a file, not a zarr store directory; choose another --out "
            "(or an .h5 path for the HDF5 backend)"
        )
    return StoreExistsError(
        f"{loc}: {blocker} is a regular file, so nothing can be created under it; choose another --out"
    )


def _remove_empty_dirs(dirs: tuple[str, ...]) -> None:
    for d in dirs:
        try:
            os.rmdir(d)  # only succeeds when empty: never removes anything but the lock's own directories
        except OSError:
            return


