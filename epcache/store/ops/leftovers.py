"""Files a killed writer leaves inside a zarr store, removed when the next writer resumes.

zarr-python writes every object to ``<key>.<uuid hex>.partial`` and renames it into place
(``zarr/storage/_local.py``, ``_atomic_write``). A SIGKILL between the two leaves the
``.partial`` file for good: dead bytes, a whole shard in a sharded store. Such a file can
only belong to a write that never finished, i.e. to a block whose record is still missing
(records are written after their block, cache_layout.md §3.3), to a record, or to metadata;
so a resume looks exactly there instead of walking a store of a million chunk files.
"""

from __future__ import annotations

import re
from pathlib import Path

from epcache.store.core import FeatureStore

__all__ = ["PARTIAL_RE", "remove_partial_files"]

PARTIAL_RE = re.compile(r"\.[0-9a-f]{32}\.partial$")  # zarr's temporary name: <stem>.<uuid4 hex>.partial


def remove_partial_files(store: FeatureStore) -> list[Path]:
    """Delete the ``.partial`` files of interrupted writes in a local zarr store; return them.

    Only the writer holding the store's lock may call this (a live writer's ``.partial`` file is
    its write in progress).
    """
    loc = store.location
    if store.format != "zarr" or ("://" in loc and not loc.startswith("file://")):
        return []
    root = Path(loc.removeprefix("file://"))
    dirs = [root]
    for split in store.splits:
        base = root / "splits" / split
        dirs += [
            base,
            *(base / name for name in ("labels", "ids", "order")),
            *(base / n / "c" for n in ("labels", "ids", "order")),
            *((base / "masks", base / "records" / "masks", base / "records" / "masks" / "c") if store.has_masks(split)
              else ()),  # per-pixel masks (cache_layout.md §3.6)
        ]
        for layer in store.meta.layers:
            dirs += [base / "layers" / str(layer), base / "records" / str(layer), base / "records" / str(layer) / "c"]
            for block in store.missing_blocks(split, layer):
                dirs.append(base / "layers" / str(layer) / "c" / str(block) / "0" / "0")  # c/<block>/0/0/0
    removed = []
    for d in dirs:
        if not d.is_dir():
            continue
        for f in d.glob("*.partial"):
            if PARTIAL_RE.search(f.name) and f.is_file():
                f.unlink(missing_ok=True)
                removed.append(f)
    return removed
