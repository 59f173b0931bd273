"""The lock file itself: its JSON document, exclusive creation, and the ``flock`` that arbitrates it.

``ops/lock.py`` decides what a store writer may do with a lock (refuse, break a stale one);
``epcache/probe/rundir.py`` does the same for probe run directories. Both take the file through
``take_local_lock`` (local and NFSv4 file systems) or ``create_exclusive`` (object stores).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypedDict

from epcache._fs.paths import is_url
from epcache.errors import EpcacheError

__all__ = [
    "LockInfo",
    "LockInfoJSON",
    "StoreLockedError",
    "create_exclusive",
    "is_url",
    "pid_alive",
    "read_lock",
    "remove_lock_file",
    "take_local_lock",
]

_MAX_LOCK_BYTES = 64 * 1024  # a lock is a few hundred bytes; anything larger is not ours


class StoreLockedError(EpcacheError):
    """Another writer holds the store's lock (or left a stale one behind)."""


class LockInfoJSON(TypedDict):
    host: str
    pid: int
    started: str
    purpose: str


@dataclass(frozen=True, slots=True)
class LockInfo:
    """Who holds a store's lock."""

    host: str  # socket.gethostname() of the writer
    pid: int  # process id of the writer on that host (rank 0 under torchrun)
    started: str  # ISO 8601 UTC time the lock was taken
    purpose: str  # what is writing, e.g. "epcache extract"

    @classmethod
    def current(cls, purpose: str) -> LockInfo:
        """The lock this process would write."""
        now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        return cls(host=socket.gethostname(), pid=os.getpid(), started=now, purpose=purpose)

    @classmethod
    def from_json(cls, raw: bytes | str) -> LockInfo:
        """Parse a lock file.

        Raises:
            ValueError: not a lock written by epcache.
        """
        doc = json.loads(raw)
        if not isinstance(doc, dict) or not isinstance(doc.get("pid"), int) or not isinstance(doc.get("host"), str):
            raise ValueError("not an epcache lock document")
        started, purpose = str(doc.get("started", "?")), str(doc.get("purpose", "?"))
        return cls(host=doc["host"], pid=doc["pid"], started=started, purpose=purpose)

    def to_json(self) -> LockInfoJSON:
        return LockInfoJSON(host=self.host, pid=self.pid, started=self.started, purpose=self.purpose)

    @property
    def on_this_host(self) -> bool:
        return self.host == socket.gethostname()

    @property
    def stale(self) -> bool | None:
        """True if the writer provably no longer runs, False if it runs, None if it cannot be told.

        Only a process on this host can be checked (``os.kill(pid, 0)``); a lock from another
        host of a cluster is None: the user has to know whether that job is still alive.
        """
        if not self.on_this_host:
            return None
        return not pid_alive(self.pid)

    def describe(self) -> str:
        """``pid 123 on host h since 2026-01-01T00:00:00+00:00 (epcache extract)``."""
        return f"pid {self.pid} on host {self.host} since {self.started} ({self.purpose})"



def take_local_lock(
    loc: str, path: str, payload: bytes, *, break_lock: bool, message: Callable[..., str]
) -> int:
    """Take the lock file at ``path`` under an exclusive ``flock``; return the descriptor to keep.

    The flock is the arbiter: a live holder keeps it, so a second process never gets past
    ``LOCK_NB``; a dead holder's flock is gone, and of the processes that then race for the
    file exactly one gets it and rewrites it, while the others find it held. The file's
    content only decides whether the winner may take over (no holder, or a stale one with
    ``break_lock``) and what a refused writer is told.
    """
    import fcntl

    for _ in range(20):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # a racing writer released and removed the lock's directory, or renamed it
            raise StoreLockedError(_vanished_message(loc, path)) from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = read_lock(path) or LockInfo(host="?", pid=-1, started="?", purpose="a writer taking the lock")
                raise StoreLockedError(message(loc, path, holder, held=True)) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the holder released (unlinked) it between our open and our flock: retry
                os.close(fd)
                continue
            raw = os.pread(fd, _MAX_LOCK_BYTES, 0)
            if raw.strip():
                holder = _parse(raw)
                alive = holder.on_this_host and pid_alive(holder.pid)
                if alive or not break_lock:  # a running writer's lock is never broken
                    raise StoreLockedError(message(loc, path, holder))
            os.ftruncate(fd, 0)
            os.pwrite(fd, payload, 0)
            os.fsync(fd)
            return fd
        except BaseException:
            os.close(fd)
            raise
    raise StoreLockedError(f"{loc}: could not take the writer lock {path}; another writer keeps taking it")


def _vanished_message(loc: str, path: str) -> str:
    """Why a racer lost: the directory of the lock went away between preparing it and creating the file.

    Only another writer removes or renames that directory (a holder releasing the lock of a store it
    never created, or swapping a rebuilt store in), so this is a lost race like a held ``flock``.
    """
    return (
        f"{loc}: another writer is creating, replacing or removing this location right now (the directory "
        f"of the writer lock {path} vanished while this process was taking the lock); wait for it to "
        "finish, then try again"
    )


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True



def create_exclusive(path: str, payload: bytes) -> bool:
    """Create ``path`` holding ``payload`` unless it exists; True if this call created it."""
    if not is_url(path):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, payload)
            os.fsync(fd)
        finally:
            os.close(fd)
        return True
    fs, p = _fs(path)
    try:
        fs.pipe_file(p, payload, mode="create")  # conditional put: atomic on S3 and compatible stores
    except FileExistsError:
        return False
    except TypeError:  # a filesystem without exclusive create: best effort, check then write
        if fs.exists(p):
            return False
        fs.pipe_file(p, payload)
    return True


def read_lock(path: str) -> LockInfo | None:
    try:
        if is_url(path):
            fs, p = _fs(path)
            fs.invalidate_cache(p)  # another process may have created or removed it since we listed
            with fs.open(p, "rb") as f:
                raw = f.read(_MAX_LOCK_BYTES)
        else:
            with open(path, "rb") as f:
                raw = f.read(_MAX_LOCK_BYTES)
    except FileNotFoundError:
        return None
    return _parse(raw)


def _parse(raw: bytes) -> LockInfo:
    try:
        return LockInfo.from_json(raw)
    except ValueError:  # also json.JSONDecodeError and UnicodeDecodeError
        return LockInfo(host="?", pid=-1, started="?", purpose="unreadable lock file")


def remove_lock_file(path: str) -> None:
    if is_url(path):
        fs, p = _fs(path)
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(p)
        fs.invalidate_cache(p)
        return
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def _fs(url: str) -> tuple[Any, str]:
    import fsspec

    return fsspec.core.url_to_fs(url)

