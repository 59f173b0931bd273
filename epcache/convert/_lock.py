"""convert's hold on its destination: a writer lock *beside* DST, never a directory made to hold one.

convert builds its store at a hidden sibling and renames it into place when complete, so nothing
may appear at DST before then: a killed conversion must leave DST absent (``epcache info DST``
then says there is no store), not a directory holding only a lock (which reads as a damaged
zarr store). So the lock of a local DST is the hidden sibling file
``<parent>/.epcache-convert-<name>.lock`` (``LockInfo`` JSON under an exclusive ``flock``, like
a store writer's lock). A conversion writes nothing but its staging copy, which the next run
discards, so the lock a killed conversion left on this host is taken over without
``--break-lock``; a live one is never broken, and one from another host needs the flag.

Once a store is at DST (to be replaced with ``--overwrite``, or one that appeared while
converting), its own writer lock is taken as well, so an extraction writing DST and a conversion
replacing it exclude each other. URLs have no siblings: there the store's own lock is taken, as
before.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from epcache._fs.lockfile import LockInfo, read_lock, take_local_lock
from epcache._fs.paths import is_url
from epcache.errors import ConfigError, StoreExistsError
from epcache.store.ops.lock import StoreLock, acquire_store_lock, read_store_lock
from epcache.store.ops.swap import check_replaceable

__all__ = ["CONVERT_LOCK_PREFIX", "PURPOSE", "DestinationLock", "convert_lock_location"]

CONVERT_LOCK_PREFIX = ".epcache-convert-"
PURPOSE = "epcache convert"


def convert_lock_location(dst: str) -> str:
    """The hidden sibling lock file of a local destination ``dst``."""
    p = Path(dst.rstrip("/"))
    return str(p.parent / f"{CONVERT_LOCK_PREFIX}{p.name}.lock")


class _SiblingLock(StoreLock):
    """A held sibling lock; ``release()`` removes it and the directories made for it, if left empty."""

    def __init__(self, dst: str, path: str, info: LockInfo, fd: int, made: tuple[str, ...]) -> None:
        super().__init__(dst, info, fd=fd, made_dirs=made)
        self.lock_path = path


class DestinationLock:
    """Every lock a conversion holds on DST, taken with ``acquire`` and dropped with ``release``.

    Raises:
        StoreLockedError: another conversion or writer holds DST (the message names it), or a
            killed writer other than a conversion left its lock there (``--break-lock`` removes it).
        ConfigError: a part of DST's parent path is a regular file.
    """

    def __init__(self, dst: str, *, break_lock: bool) -> None:
        self.dst = dst
        self.break_lock = break_lock
        self.local = not is_url(dst)
        self._store_lock: StoreLock | None = None
        self._sibling = _take_sibling(dst, break_lock) if self.local else None
        if not self.local:
            self._store_lock = _take_store_lock(dst, break_lock)

    def check_destination(self, fmt: str, *, overwrite: bool) -> bool:
        """True when a store is at DST to be replaced; takes its own writer lock first.

        Called before converting and again just before the swap, since a store may have
        appeared at DST meanwhile (an extraction started there): it is then locked, checked and
        replaced only with ``overwrite`` like one that was there from the start.

        Raises:
            StoreExistsError: a store at DST without ``overwrite``.
            ConfigError: something that is not a store of this backend is at DST.
            StoreLockedError: a writer holds DST's own lock.
        """
        if not self.local:
            return False  # the caller asks the object store
        exists = check_replaceable(self.dst, fmt)
        if Path(self.dst).exists() and self._store_lock is None:
            self._store_lock = _take_store_lock(self.dst, self.break_lock)
        if exists and not overwrite:
            raise StoreExistsError(
                f"{self.dst} already exists; pass --overwrite to replace it (kept until the new store is complete)"
            )
        return exists

    def release(self) -> None:
        """Drop DST's own lock, then the sibling; idempotent."""
        for lock in (self._store_lock, self._sibling):
            if lock is not None:
                lock.release()


def _take_sibling(dst: str, break_lock: bool) -> StoreLock:
    path = convert_lock_location(dst)
    made = _make_parent(Path(path).parent, dst)
    info = LockInfo.current(PURPOSE)
    holder = read_lock(path)
    take_over = break_lock or (holder is not None and holder.stale is True)  # a killed conversion's lock
    try:
        fd = take_local_lock(dst, path, json.dumps(info.to_json()).encode(), break_lock=take_over,
                             message=_locked_message)
    except BaseException:
        _remove_empty(made)
        raise
    return _SiblingLock(dst, path, info, fd, made)


def _take_store_lock(dst: str, break_lock: bool) -> StoreLock:
    """DST's own writer lock; a killed conversion's (left by earlier versions) is taken over."""
    holder = read_store_lock(dst)
    killed_convert = holder is not None and holder.stale is True and holder.purpose == PURPOSE
    return acquire_store_lock(dst, break_lock=break_lock or killed_convert, purpose=PURPOSE)


def _make_parent(parent: Path, dst: str) -> tuple[str, ...]:
    """Create DST's parent (where the staging copy and the lock go); return what was made, deepest first."""
    missing = tuple(str(p) for p in (parent, *parent.parents) if not p.exists())
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(
            f"{dst}: a part of its parent path {parent} is a regular file, so nothing can be created there; "
            "choose another destination"
        ) from None
    return missing


def _remove_empty(dirs: tuple[str, ...]) -> None:
    for d in dirs:
        try:
            os.rmdir(d)  # only empty ones: never anything but the directories made for the lock
        except OSError:
            return


def _locked_message(loc: str, path: str, holder: LockInfo, *, held: bool = False) -> str:
    if holder.pid < 0 and not held:
        return (
            f"{loc} has an unreadable conversion lock ({path}), left by a conversion killed while taking it. "
            "If no conversion into it is running, pass --break-lock to remove it"
        )
    if held or (holder.on_this_host and holder.stale is False):
        return (
            f"{loc} is being written by another conversion: {holder.describe()} (lock {path}). Wait for it to "
            "finish, or stop it first; --break-lock never removes the lock of a process that runs on this host"
        )
    return (
        f"{loc} is locked by a conversion on another host: {holder.describe()}. epcache cannot check a process "
        f"on another host; if that job is gone, pass --break-lock. Lock file: {path}"
    )

