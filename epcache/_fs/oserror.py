"""Operating-system errors a user can cause, as one-line errors with the fix.

A full disk, a directory without write permission, a read-only mount or an ``--out`` path that
runs through a regular file are not bugs: they reach the user as an ``EpcacheError`` (exit 2,
one line) that names the path and what to do, never as a traceback. Writers also check free
space before each block (``require_free_space``): a block refused before it is written leaves
every earlier block intact and resumable. HDF5 cannot be closed once a write has failed for
lack of space (the library then crashes flushing its metadata at exit), so an HDF5 writer also
holds a small ballast file (``SpaceReserve``) that it deletes before closing after a failure,
for the case where another process fills the disk between the check and the write.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Iterator
from pathlib import Path

from epcache._text import human_bytes
from epcache.errors import DiskFullError, EpcacheError, FileSystemError

__all__ = ["MIN_FREE_BYTES", "SpaceReserve", "os_errors", "require_free_space", "translate_os_error"]

MIN_FREE_BYTES = 1 << 20  # headroom for metadata, records and the file system's own blocks
_SHORT_WRITE = re.compile(r"\b\d+ requested and \d+ written\b")  # numpy's message, which carries no errno
RESERVE_BYTES = 512 << 10  # an HDF5 writer's ballast: freed so a failed file can still flush and close

_FIXES = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "the file system is read-only",
    errno.ENOTDIR: "a part of the path is a regular file, not a directory",
    errno.EISDIR: "it is a directory where a file was expected",
    errno.ENAMETOOLONG: "the path is too long",
    errno.ELOOP: "the path is a symlink loop",
}


def translate_os_error(e: OSError, *, action: str, resume_hint: str = "") -> EpcacheError | None:
    """The user-facing error for ``e``, or None when it is not one a user can fix (a bug: re-raise).

    Args:
        e: the error as raised by the OS, zarr or h5py.
        action: what was being done, e.g. "writing the store /data/s.zarr".
        resume_hint: what re-running does, appended to disk-full messages.
    """
    code = _errno_of(e)
    if code not in _FIXES:
        return None
    where = f" ({e.filename})" if getattr(e, "filename", None) else ""
    what = f"{action}: {_FIXES[code]}{where}"
    if code in (errno.ENOSPC, errno.EDQUOT):
        msg = f"{what}; free some space or choose a location on a larger disk"
        return DiskFullError(code, msg + (f". {resume_hint}" if resume_hint else ""))
    fix = {
        errno.EACCES: "choose a location you can write to, or fix its permissions",
        errno.EPERM: "choose a location you can write to, or fix its permissions",
        errno.EROFS: "choose a location on a writable file system",
    }.get(code, "choose another path")
    return FileSystemError(code, f"{what}; {fix}")


@contextlib.contextmanager
def os_errors(*, action: str, resume_hint: str = "") -> Iterator[None]:
    """Re-raise user-fixable ``OSError``s in the block as one-line ``EpcacheError``s.

    h5py reports a failed write as a ``RuntimeError``/``OSError`` whose text carries the errno
    ("errno = 28"); that is recognised too.
    """
    try:
        yield
    except EpcacheError:
        raise
    except (OSError, RuntimeError) as e:
        err = translate_os_error(
            e if isinstance(e, OSError) else OSError(_errno_of(e), str(e)), action=action, resume_hint=resume_hint
        )
        if err is None:
            raise
        raise err from None


def require_free_space(location: str, nbytes: int, *, action: str, resume_hint: str = "") -> None:
    """Refuse to write ``nbytes`` (plus ``MIN_FREE_BYTES``) at ``location`` when the disk lacks them.

    Local paths only (URLs: the object store answers for itself); the nearest existing parent
    decides which file system is meant.

    Raises:
        DiskFullError: not enough free space; the message says how much is needed and free.
    """
    if "://" in location and not location.startswith("file://"):
        return
    p = Path(location.removeprefix("file://"))
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        st = os.statvfs(p)
    except OSError:
        return
    free = st.f_bavail * st.f_frsize
    need = nbytes + MIN_FREE_BYTES
    if free < need:

        msg = (
            f"{action}: no space left on the device of {p} ({human_bytes(free)} free, the next write needs "
            f"{human_bytes(need)} with headroom); free some space or choose a location on a larger disk"
        )
        raise DiskFullError(errno.ENOSPC, msg + (f". {resume_hint}" if resume_hint else ""))


class SpaceReserve:
    """A hidden ballast file beside a local HDF5 store: ``release()`` frees its space.

    Created when the writer opens the store (replacing one a killed writer left), deleted when
    the store is closed; after a failed write it is deleted *before* the close, so the HDF5
    library has room to flush its metadata and the file closes cleanly (and stays resumable).

    Raises:
        DiskFullError: not even ``nbytes`` are free; the writer must not start.
    """

    def __init__(self, location: str, nbytes: int = RESERVE_BYTES, *, resume_hint: str = "") -> None:
        p = Path(location)
        self.path = p.parent / f".{p.name}.epcache-reserve"
        try:
            with open(self.path, "wb") as f:
                os.posix_fallocate(f.fileno(), 0, nbytes)
        except OSError as e:  # without the ballast a failed write could not be closed: do not start
            self.release()
            action = f"opening the HDF5 store {location} for writing"
            err = translate_os_error(e, action=action, resume_hint=resume_hint)
            raise (err or e) from None

    def release(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _errno_of(e: BaseException) -> int | None:
    code = getattr(e, "errno", None)
    if isinstance(code, int):
        return code
    text = str(e)
    for code, name in (
        (errno.ENOSPC, "errno = 28"),
        (errno.EDQUOT, "errno = 122"),
        (errno.EACCES, "errno = 13"),
        (errno.EROFS, "errno = 30"),
    ):
        if name in text:
            return code
    if isinstance(e, OSError) and _SHORT_WRITE.search(text):  # numpy (np.save, tofile): a file write cut short
        return errno.ENOSPC
    return None
