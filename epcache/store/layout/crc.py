"""crc32c (Castagnoli) of stored bytes, and the combination of two crc32c values.

A block's record is the crc32c of all its bytes (cache_layout.md §3.3). A reader that gets a
sharded block one inner chunk at a time, in any order, can still check the block without reading
a byte twice: it keeps each chunk's crc32c and combines them in row order once it has them all
(``crc32c_combine`` is zlib's ``crc32_combine`` for the Castagnoli polynomial).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import google_crc32c
import numpy as np

__all__ = ["block_checksum", "crc32c_combine", "crc32c_concat"]

_POLY = 0x82F63B78  # Castagnoli, reflected


def block_checksum(raw: np.ndarray) -> int:
    """crc32c of a block's bytes as stored (C order, little-endian storage dtype).

    The crc32c extension takes read-only buffers only: a read-only byte view of the array, not a
    ``tobytes()`` copy (a copy would cost as much again as the crc32c itself).
    """
    view = np.ascontiguousarray(raw).reshape(-1).view(np.uint8).view()
    view.flags.writeable = False
    return int(google_crc32c.value(view))


def _times(mat: list[int], vec: int) -> int:
    out = 0
    i = 0
    while vec:
        if vec & 1:
            out ^= mat[i]
        vec >>= 1
        i += 1
    return out


def _square(mat: list[int]) -> list[int]:
    return [_times(mat, mat[n]) for n in range(32)]


@functools.lru_cache(maxsize=64)
def _zeros_operator(nbytes: int) -> tuple[int, ...]:
    """The GF(2) matrix (32 columns) that appends ``nbytes`` zero bytes to a crc32c register.

    Cached: a reader combines chunks of one size over and over, and the matrix is the slow part.
    """
    op = [1 << n for n in range(32)]  # identity
    odd = [_POLY] + [1 << n for n in range(31)]  # operator for one zero bit
    even = _square(odd)  # two zero bits
    odd = _square(even)  # four zero bits
    while True:  # zlib's crc32_combine, collecting the operator instead of applying it
        even = _square(odd)
        if nbytes & 1:
            op = [_times(even, c) for c in op]
        nbytes >>= 1
        if not nbytes:
            break
        odd = _square(even)
        if nbytes & 1:
            op = [_times(odd, c) for c in op]
        nbytes >>= 1
        if not nbytes:
            break
    return tuple(op)


def crc32c_combine(crc1: int, crc2: int, len2: int) -> int:
    """crc32c(a + b) from crc32c(a), crc32c(b) and len(b)."""
    if len2 <= 0:
        return crc1
    return _times(list(_zeros_operator(len2)), crc1) ^ crc2


def crc32c_concat(parts: Sequence[tuple[int, int]]) -> int:
    """crc32c of the concatenation of parts given as ``(crc32c, nbytes)`` in order."""
    crc = 0
    for c, n in parts:
        crc = crc32c_combine(crc, c, n)
    return crc
