"""The run directory's safety: one sweep per directory (per shard), and the leftovers a killed sweep leaves.

Two ``epcache probe`` processes writing the same results file would both train every config
and append duplicate rows. So a sweep takes ``<run dir>/.epcache-run<suffix>.lock`` first, the
same kind of lock file as a store writer's (``ops/lock.py``: JSON holder, ``flock``-arbitrated):
``suffix`` is empty for a whole sweep and ``.shard-I-of-N`` for one shard of a job array, so
the shards of one sweep still run side by side. A lock whose holder died (its ``flock`` is gone
and its pid no longer runs here) is simply taken over: resuming a killed sweep needs no flag.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

from epcache._fs.lockfile import LockInfo, pid_alive, take_local_lock
from epcache.errors import ConfigError
from epcache.store.ops.lock import StoreLock

__all__ = ["RUN_LOCK_PREFIX", "acquire_run_lock", "check_pooled_dir", "remove_stale_checkpoints", "run_dir_lock"]

RUN_LOCK_PREFIX = ".epcache-run"
_CKPT_META_KEY = "epcache_ckpt"  # probe/results.py: the JSON state inside a checkpoint's metadata
_TMP_CKPT = re.compile(r"^\..+\.tmp-(\d+)$")  # results/rows.py _atomic_safetensors', solvers/vectors.py's temp name
_POOLED_DIR = "pooled"  # probe/solvers/vectors.py: the solver heads' pooled-vector cache
_TMP_DIRS = ("ckpt", "heads", _POOLED_DIR)  # where a killed sweep can leave temporary files


class _RunLock(StoreLock):
    """A held run-directory lock; ``release()`` removes it (and closes its flock)."""

    def __init__(self, run_dir: Path, path: Path, info: LockInfo, fd: int, made: tuple[str, ...]) -> None:
        super().__init__(str(run_dir), info, fd=fd, made_dirs=made)  # made: removed again if left empty
        self.lock_path = str(path)


def acquire_run_lock(run_dir: Path, *, suffix: str = "", purpose: str = "epcache probe") -> StoreLock:
    """Take the lock of one sweep (or one shard of it) in ``run_dir``, creating the directory.

    Raises:
        StoreLockedError: another sweep into this run directory (and shard) is running; the
            message names its host, pid and start time.
        ConfigError: ``run_dir`` is a file, or lies under one.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir} is an existing file, not a run directory; choose another --out")
    made = tuple(str(p) for p in (run_dir, *run_dir.parents) if not p.exists())
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(
            f"--out {run_dir} cannot be created: a part of that path is a regular file; choose another --out"
        ) from None
    path = run_dir / f"{RUN_LOCK_PREFIX}{suffix}.lock"
    info = LockInfo.current(purpose)
    payload = json.dumps(info.to_json()).encode()
    try:
        fd = take_local_lock(str(run_dir), str(path), payload, break_lock=True, message=_run_locked_message)
    except BaseException:
        _remove_empty(made)
        raise
    return _RunLock(run_dir, path, info, fd, made)


@contextlib.contextmanager
def run_dir_lock(run_dir: str | Path | None, *, shard: tuple[int, int] | None = None) -> Iterator[None]:
    """Hold the sweep lock of ``run_dir`` (nothing when there is no run directory) for the block.

    Raises:
        StoreLockedError, ConfigError: as ``acquire_run_lock``.
    """
    if not run_dir:
        yield
        return
    suffix = "" if shard is None else f".shard-{shard[0]}-of-{shard[1]}"  # probe/run.py's results suffix
    lock = acquire_run_lock(Path(run_dir), suffix=suffix)
    try:
        yield
    finally:
        lock.release()


def remove_stale_checkpoints(run_dir: Path, finished: set[str]) -> list[Path]:
    """Delete per-epoch checkpoints no sweep will resume from, and dead writers' temporary files.

    A checkpoint is stale when every config it holds already has its results row (the sweep
    was killed after writing the rows, before deleting the checkpoint). A temporary file
    (``.<name>.tmp-<pid>``) of a checkpoint, a head or a pooled-vector cache entry is removed
    when its process is gone: a killed sweep's leftover, never renamed into place. Checkpoints
    of configs without a row and temporary files of running processes are kept: another shard
    of the sweep may be writing them right now. Returns what was removed.

    Raises:
        ConfigError: ``<run dir>/pooled`` (the solver heads' cache folder) is a regular file.
    """
    from safetensors import safe_open

    run_dir = Path(run_dir)
    check_pooled_dir(run_dir / _POOLED_DIR)  # at the start of a sweep, not after its trained heads
    removed = [f for sub in _TMP_DIRS for f in _remove_dead_tmp(run_dir / sub)]
    ckpt_dir = run_dir / "ckpt"
    if not ckpt_dir.is_dir():
        return removed
    for f in sorted(ckpt_dir.iterdir()):
        if f.suffix != ".safetensors" or _TMP_CKPT.match(f.name):
            continue
        try:
            with safe_open(str(f), framework="pt") as st:
                ids = json.loads((st.metadata() or {})[_CKPT_META_KEY]).get("config_ids") or []
        except (OSError, KeyError, ValueError, RuntimeError):
            continue  # unreadable: the sweep that owns it restarts that group and replaces it
        if ids and all(i in finished for i in ids):
            f.unlink(missing_ok=True)
            removed.append(f)
    return removed


def check_pooled_dir(root: Path) -> None:
    """Refuse a regular file where the solver heads' pooled-vector cache folder belongs.

    Raises:
        ConfigError: ``root`` exists and is not a directory (names the path and the fix).
    """
    if (root.exists() or root.is_symlink()) and not root.is_dir():
        raise ConfigError(f"{root} is a regular file where the solver heads keep their pooled-vector cache "
                          "(a folder); move or delete that file (the cache is pooled from the store again)")


def _remove_dead_tmp(folder: Path) -> list[Path]:
    """Temporary files in ``folder`` whose writing process no longer runs here, deleted."""
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for f in sorted(folder.iterdir()):
        tmp = _TMP_CKPT.match(f.name)
        if tmp is not None and not pid_alive(int(tmp.group(1))):
            f.unlink(missing_ok=True)
            removed.append(f)
    return removed


def _remove_empty(dirs: tuple[str, ...]) -> None:
    for d in dirs:
        try:
            os.rmdir(d)
        except OSError:
            return


def _run_locked_message(loc: str, path: str, holder: LockInfo, *, held: bool = False) -> str:
    del held
    if holder.pid < 0 or holder.on_this_host:
        return (
            f"another sweep is already running into the run directory {loc}: {holder.describe()}. Two sweeps "
            "into one directory would both train every config and write duplicate rows: wait for it to "
            "finish, or use another --out (job arrays: --shard I/N)"
        )
    return (
        f"the run directory {loc} is locked by a sweep on another host: {holder.describe()}. If that job "
        f"is gone, delete {path}; otherwise wait for it or use another --out"
    )
