"""Replace a store without ever losing it: build the new one beside it, swap it in when complete.

``extract --overwrite`` used to delete the old store before the new one had a single block, so a
bad image, a full disk or a kill later cost the user the store they had. Now the new store is
written to a hidden sibling (``<parent>/.epcache-overwrite-<name>``, which ``epcache ls`` skips
and which is incomplete until the last block, so it never looks like a finished store) and
swapped in with one rename once every block is recorded:

- HDF5 (one file): ``os.replace(staging, store)``, atomic on POSIX; the lock ``<file>.lock``
  stays where it is.
- zarr (a directory): ``renameat2(RENAME_EXCHANGE)`` swaps the two directories atomically
  (Linux); the old store then sits at the staging name and is deleted. Where the kernel or file
  system cannot exchange, the old store is first renamed to ``.epcache-replaced-<name>``, the
  new one renamed into place, then the old one deleted; an interruption between those two
  renames is undone by the next run (``recover_interrupted_swap``).

Until the swap the old store is untouched and readable. A run that fails removes its staging
store; a killed run's staging store is removed by the next ``--overwrite`` (it holds the lock
on the store's location, so nobody else can be writing it). Object stores (URLs) have no
rename: there ``--overwrite`` still deletes the old store first, as documented.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import shutil
from pathlib import Path

from epcache.errors import ConfigError
from epcache.store.ops.lock import LOCK_NAME

__all__ = [
    "check_replaceable",
    "discard_staging",
    "recover_interrupted_swap",
    "remove_new_store",
    "staging_location",
    "swap_in",
]

STAGING_PREFIX = ".epcache-overwrite-"
REPLACED_PREFIX = ".epcache-replaced-"
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def staging_location(location: str) -> str:
    """The hidden sibling a replacement of ``location`` is built in (same suffix, so same backend)."""
    p = Path(location.rstrip("/"))
    return str(p.parent / f"{STAGING_PREFIX}{p.name}")


def check_replaceable(location: str, fmt: str) -> bool:
    """True when a store exists at ``location`` that ``--overwrite`` may replace; False if nothing is there.

    Raises:
        ConfigError: something that is not a store of this backend sits there (never replaced).
    """
    p = Path(location.rstrip("/"))
    if not p.exists():
        return False
    if fmt == "h5":
        if p.is_dir() or not _is_hdf5(p):
            raise ConfigError(f"{p} exists and is not an HDF5 store; refusing to replace it with --overwrite")
        return True
    if p.is_file():
        raise ConfigError(f"{p} is a file, not a store; refusing to delete it for --overwrite")
    children = [c.name for c in p.iterdir() if c.name != LOCK_NAME]
    if not children:
        return False  # only our own lock: nothing to keep
    if "zarr.json" not in children:
        raise ConfigError(
            f"{p} is a non-empty directory that is not a zarr store; refusing to delete it for "
            "--overwrite. Choose another --out path"
        )
    return True


def discard_staging(staging: str) -> None:
    """Delete a staging store (a failed or killed replacement); the real store is never touched."""
    if not Path(staging).name.startswith(STAGING_PREFIX):
        raise ValueError(f"{staging} is not a staging location")  # internal invariant, never user input
    p = Path(staging)
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def remove_new_store(location: str) -> None:
    """Delete a store this run has just created (nothing was there before), keeping the writer lock.

    Used when creating its splits fails (a bad ``--chunk-samples``, a full disk), so the failure
    leaves nothing behind that looks like a store.
    """
    p = Path(location.rstrip("/"))
    if p.is_dir() and not p.is_symlink():
        for child in p.iterdir():
            if child.name == LOCK_NAME:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    child.unlink()
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def recover_interrupted_swap(location: str) -> bool:
    """Put an old store back that a swap interrupted between its two renames left aside.

    Only the two-rename fallback (no ``RENAME_EXCHANGE``) can be interrupted like that: then
    ``location`` holds nothing but possibly a lock, and ``.epcache-replaced-<name>`` holds the
    old store. Returns True when it was put back.
    """
    p = Path(location.rstrip("/"))
    aside = p.parent / f"{REPLACED_PREFIX}{p.name}"
    if not aside.exists():
        return False
    if p.exists() and (p.is_file() or any(c.name != LOCK_NAME for c in p.iterdir())):
        _discard_replaced(aside)  # the swap completed; only the old copy's deletion was interrupted
        return False
    lock = p / LOCK_NAME
    held = lock.read_bytes() if lock.is_file() else None
    if p.is_dir():
        shutil.rmtree(p)
    os.rename(aside, p)
    if held is not None:
        (p / LOCK_NAME).write_bytes(held)
    return True


def _discard_replaced(aside: Path) -> None:
    if aside.is_dir() and not aside.is_symlink():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            aside.unlink()


def swap_in(staging: str, location: str) -> None:
    """Make the complete store at ``staging`` the store at ``location``; delete the old one.

    The writer lock of a zarr store lives inside its directory, so a copy of it goes into the
    new store first: the lock keeps being held across the swap and is released as usual.
    """
    src, dst = Path(staging), Path(location.rstrip("/"))
    if src.is_file():  # HDF5
        os.replace(src, dst)
        return
    lock = dst / LOCK_NAME
    if lock.is_file():
        shutil.copyfile(lock, src / LOCK_NAME)
    if not dst.exists():
        os.rename(src, dst)
        return
    if _exchange(src, dst):
        discard_staging(str(src))  # now holds the old store
        return
    aside = dst.parent / f"{REPLACED_PREFIX}{dst.name}"
    _discard_replaced(aside)
    os.rename(dst, aside)
    try:
        os.rename(src, dst)
    except BaseException:
        os.rename(aside, dst)  # the old store goes back where it was
        raise
    _discard_replaced(aside)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths with ``renameat2(RENAME_EXCHANGE)``; False where unsupported."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _is_hdf5(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == _HDF5_SIGNATURE
