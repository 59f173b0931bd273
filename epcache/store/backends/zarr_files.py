"""Files of a zarr store beside the token arrays: making room for a new store, the ids mirror."""

from __future__ import annotations

import shutil
from pathlib import Path

from epcache.errors import ConfigError
from epcache.store.core import check_new_location
from epcache.store.ops.lock import LOCK_NAME

__all__ = ["clear_url_store", "remove_local_store"]

def clear_url_store(location: str, *, overwrite: bool) -> None:
    """Make room for a new store under a URL prefix: refuse, or delete an old store for --overwrite.

    Never deletes objects under a prefix that is not a store, and keeps the writer's lock.
    """
    import fsspec

    fs, path = fsspec.core.url_to_fs(location)
    path = path.rstrip("/")
    fs.invalidate_cache(path)
    keys = [k for k in fs.find(path) if k.rstrip("/") != f"{path}/{LOCK_NAME}"]
    if not keys:
        return
    is_store = f"{path}/zarr.json" in keys
    check_new_location(is_store, location, overwrite)
    if not is_store:
        raise ConfigError(
            f"{location} holds objects but no zarr store (no zarr.json); refusing to write a store over "
            "them. Choose another --out"
        )
    fs.rm(keys)
    fs.invalidate_cache(path)


def remove_local_store(path: Path) -> None:
    """Delete an existing store for --overwrite, but never a directory that is not a store.

    The writer's lock file stays: it belongs to the extraction that is replacing the store.
    """
    if path.is_file():
        raise ConfigError(f"{path} is a file, not a store; refusing to delete it for --overwrite")
    if not (path / "zarr.json").is_file():
        raise ConfigError(
            f"{path} is a non-empty directory that is not a zarr store; refusing to delete it for "
            "--overwrite. Choose another --out path"
        )
    for child in path.iterdir():
        if child.name == LOCK_NAME:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
