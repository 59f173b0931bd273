"""What sibling packages (extract, convert, probe, launch) use of the store's file-system safety.

Disk-full translation and space reserves, the atomic swap of a replaced store, the writer and
run-directory locks and the removal of partial files: one public face, so no other package reaches
into the store's private modules.
"""

from __future__ import annotations

from epcache.store._atomic import atomic_write
from epcache.store._leftovers import remove_partial_files
from epcache.store._lock import LOCK_NAME, StoreLock, read_store_lock
from epcache.store._lockfile import LockInfo, StoreLockedError, pid_alive, read_lock, take_local_lock
from epcache.store._oserror import SpaceReserve, os_errors, require_free_space
from epcache.store._paths import HF_PREFIX, is_url, resolve_recorded_path, store_parent
from epcache.store._runlock import acquire_run_lock, check_pooled_dir, remove_stale_checkpoints, run_dir_lock
from epcache.store._swap import (
    STAGING_PREFIX,
    check_replaceable,
    discard_staging,
    recover_interrupted_swap,
    remove_new_store,
    staging_location,
    swap_in,
)

__all__ = [
    "HF_PREFIX", "LOCK_NAME", "STAGING_PREFIX", "LockInfo", "SpaceReserve", "StoreLock", "StoreLockedError",
    "acquire_run_lock", "atomic_write", "check_pooled_dir", "check_replaceable", "discard_staging", "is_url",
    "os_errors", "pid_alive", "read_lock", "read_store_lock", "recover_interrupted_swap", "remove_new_store",
    "remove_partial_files", "remove_stale_checkpoints", "require_free_space", "resolve_recorded_path",
    "run_dir_lock", "staging_location", "store_parent", "swap_in", "take_local_lock",
]
