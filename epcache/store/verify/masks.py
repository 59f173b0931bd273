"""``epcache verify`` of the per-pixel masks (cache_layout.md §3.6): every written block against its record.

Masks are checked like a layer: a block whose record is -1 is missing, any other block's bytes are
read back and their crc32c compared with ``records/masks``; values above the last class that are not
the ignore index are reported too, since a probe would index past its class list with them.
"""

from __future__ import annotations

import numpy as np

from epcache.store.core import MISSING, FeatureStore
from epcache.store.layout.crc import block_checksum
from epcache.store.verify.blocks import READ_ERRORS

__all__ = ["mask_problems"]


def mask_problems(store: FeatureStore, split: str) -> tuple[list[str], int, int]:
    """(problems, blocks checked, bytes checked) of ``split``'s masks; nothing for a split without masks."""
    if store.meta.dense is None:
        return [], 0, 0
    where = f"split {split!r} masks"
    try:
        info = store.dense_info()
        if not store.has_masks(split):
            return [f"{where}: the document has a 'dense' key but the split has no masks array"], 0, 0
        records = store.mask_records(split)
    except READ_ERRORS as e:
        return [f"{where}: the masks or their records cannot be read ({type(e).__name__}: {e})"], 0, 0
    assert info is not None
    problems: list[str] = []
    checked = nbytes = 0
    for b, rec in enumerate(records.tolist()):
        if rec == MISSING:
            problems.append(f"{where} block {b}: missing (record is -1: not written, or marked for re-extraction)")
            continue
        try:
            data = store.read_mask_rows(split, *store.block_range(split, b))
        except READ_ERRORS as e:
            problems.append(f"{where} block {b}: unreadable ({type(e).__name__}: {e})")
            continue
        checked += 1
        nbytes += data.nbytes
        crc = block_checksum(np.ascontiguousarray(data).astype(np.dtype(info.dtype).newbyteorder("<"), copy=False))
        if crc != rec:
            problems.append(f"{where} block {b}: checksum: crc32c of the stored bytes is {crc:#010x}, the record "
                            f"says {rec:#010x} (the masks were changed after extraction; re-extract the store)")
            continue
        bad = (data >= len(info.classes)) & (data != info.ignore_index)
        if bad.any():
            problems.append(f"{where} block {b}: value {int(data[bad][0])} is neither a class index "
                            f"(0..{len(info.classes) - 1}) nor the ignore index {info.ignore_index}")
    return problems, checked, nbytes
