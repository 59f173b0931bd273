"""Direct reads of uncompressed chunks: one ``preadv`` into the output buffer.

Going through zarr-python costs ~2 ms of Python and asyncio per 5 MB chunk and a copy
(measured: 1.9 GB/s vs 12 GB/s for a memmap of the same page-cached bytes); HDF5's
``read_direct`` is faster but still about half of memmap. For uncompressed chunks the bytes on
disk ARE the array (cache_layout.md §4), so reading them straight into a numpy buffer is exact.
Both backends fall back to their library path whenever a codec or filter is configured.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["pread_into"]


def pread_into(path: str, offset: int, out: np.ndarray) -> bool:
    """Fill ``out`` with ``out.nbytes`` bytes at ``offset``; False if the file does not exist."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        view = memoryview(out.reshape(-1).view(np.uint8))
        done = 0
        while done < len(view):
            n = os.preadv(fd, [view[done:]], offset + done)
            if n == 0:
                raise OSError(f"{path}: file ends {len(view) - done} bytes early (truncated chunk)")
            done += n
    finally:
        os.close(fd)
    return True
