"""The backups of ``epcache verify --repair``: witness records, intact blocks set aside, scratch dirs.

Split from ``_repair.py`` at the seam between deciding *what* to re-extract (``repair_store``,
and the configuration the store records, there) and keeping the store safe *while* it is
re-extracted: before the resume, every layer-block it will rewrite gets its witness crc32c and,
when intact, a backup of its stored parts in a scratch directory beside the store; after it,
``settle_witnesses`` compares, puts intact blocks back and leaves damaged ones marked missing.
The scratch directory names (``scratch_prefix``) are the contract between a running repair and
``remove_dead_scratch`` of a later one, so both live here.
"""

from __future__ import annotations

import re
import shutil
import socket
from pathlib import Path

import numpy as np

from epcache._fs.lockfile import pid_alive
from epcache.store import FeatureStore
from epcache.store.layout.chunking import MISSING
from epcache.store.verify.blocks import MarkedBlocks, mark_blocks_missing

__all__ = ["back_up_witnesses", "remove_dead_scratch", "scratch_parent", "scratch_prefix", "settle_witnesses"]

_SCRATCH_RE = re.compile(r"^(?P<host>.+)-(?P<pid>\d+)-[^-]+$")  # after ".epcache-repair-<store>-"


def back_up_witnesses(
    store: FeatureStore,
    targets: list[tuple[str, int]],
    bad: set[tuple[str, int, int]],
    untrusted: set[tuple[str, int, int]],
    on_disk: dict[tuple[str, int, int], int],
    scratch: Path,
) -> dict[tuple[str, int, int], set[int]]:
    """The crc32c each layer-block that resume will rewrite must come back with; intact ones are saved.

    A damaged block's record predates the damage, so it is a witness too (but has no backup); when
    the record itself was damaged instead, re-extraction reproduces the stored bytes' crc32c.
    """
    witnesses: dict[tuple[str, int, int], set[int]] = {}
    for split, block in targets:
        records = {layer: int(store.block_records(split, layer)[block]) for layer in store.meta.layers}
        for layer, rec in records.items():
            key = (split, layer, block)
            if rec == MISSING or key in untrusted:
                continue
            witnesses[key] = {rec} if key not in on_disk else {rec, on_disk[key]}
            if key not in bad:
                start, stop = store.block_range(split, block)
                cs = store.split(split).chunk_samples  # tokens, or codes and scales (cache_layout.md §3.5)
                for i, part in enumerate(store.stored_parts(split, layer, start // cs, -(-stop // cs))):
                    np.save(scratch / _backup_name(key, i), part, allow_pickle=False)
    return witnesses


def settle_witnesses(
    store: FeatureStore,
    witnesses: dict[tuple[str, int, int], set[int]],
    marked: MarkedBlocks,
    scratch: Path,
    *,
    failed: bool,
) -> tuple[list[tuple[str, int, int]], int]:
    """After the resume: compare witnesses; on a mismatch put intact blocks back and mark damaged ones missing.

    Returns the layer-blocks whose new crc32c differs from the recorded one, and how many matched.
    """

    def record(key: tuple[str, int, int]) -> int:
        return int(store.block_records(key[0], key[1])[key[2]])

    rewritten = {k: record(k) for k in witnesses if record(k) != MISSING}
    differ = sorted(k for k, rec in rewritten.items() if rec not in witnesses[k])
    confirmed = len(rewritten) - len(differ)
    if differ:
        for key in differ:
            backup = scratch / _backup_name(key)
            if backup.is_file():  # an intact block overwritten with other bytes: put the original back
                parts = [np.load(backup, allow_pickle=False)]
                if (scratch / _backup_name(key, 1)).is_file():
                    parts.append(np.load(scratch / _backup_name(key, 1), allow_pickle=False))
                store.write_stored_parts(key[0], key[1], key[2], parts)
        mark_blocks_missing(store, [k for k in marked.previous if record(k) not in witnesses.get(k, set())])
    elif failed and all(record(k) == MISSING for k in marked.previous):  # refused before writing anything
        marked.undo(store)
    return differ, confirmed


def remove_dead_scratch(location: str) -> list[Path]:
    """Delete the scratch directories of repairs of this store whose process is gone; return them.

    A scratch directory is ``.epcache-repair-<store name>-<host>-<pid>-<random>`` beside the
    store, so repairs of other stores in the same directory, and a repair still running, are
    never touched. A killed repair left its damaged blocks marked missing (and the intact ones
    in place), so nothing in its scratch directory is needed by the next run.
    """
    parent = scratch_parent(location)
    if parent is None:
        return []
    removed = []
    for d in Path(parent).glob(scratch_prefix(location, None) + "*"):
        m = _SCRATCH_RE.match(d.name[len(scratch_prefix(location, None)) :])
        if m is None or m.group("host") != socket.gethostname() or pid_alive(int(m.group("pid"))):
            continue
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    return removed


def scratch_prefix(location: str, pid: int | None) -> str:
    name = Path(location.rstrip("/")).name
    base = f".epcache-repair-{name}-"
    return base if pid is None else f"{base}{socket.gethostname()}-{pid}-"


def scratch_parent(location: str) -> str | None:
    """Beside a local store (same file system: moving a block aside is a rename), else the temp dir."""
    if "://" in location and not location.startswith("file://"):
        return None
    return str(Path(location).expanduser().absolute().parent)


def _backup_name(key: tuple[str, int, int], part: int = 0) -> str:
    split, layer, block = key
    return f"{split}.{layer}.{block}.npy" if part == 0 else f"{split}.{layer}.{block}.part{part}.npy"
