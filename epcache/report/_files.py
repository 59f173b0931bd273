"""Report files are written whole or not at all.

A figure or ``report.md`` cut short by a full disk would sit beside the complete ones and look
like them (a 0-byte PNG, a table ending mid-row). So each is written to a hidden temporary name
and renamed into place; a failed write removes its temporary file and leaves the previous
version (or nothing), and the error reaches the user as one line (``write_report``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["write_atomically"]


def write_atomically(path: Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a sibling temporary path (same suffix: matplotlib picks the format from
    it), then rename it to ``path``; returns ``path``."""
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path
