"""Leftovers of killed runs: which ones a new run removes, and which it must leave alone."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

from epcache.extract._repair_backup import remove_dead_scratch


def test_second_repair_keeps_a_live_repairs_scratch(tmp_path: Path) -> None:
    """Scratch directories of a running repair (its pid is alive) and of other stores are never removed."""
    out = tmp_path / "s.zarr"
    out.mkdir()
    live = tmp_path / f".epcache-repair-s.zarr-{socket.gethostname()}-{os.getpid()}-abc123"
    other = tmp_path / f".epcache-repair-t.zarr-{socket.gethostname()}-999999999-abc123"
    dead = tmp_path / f".epcache-repair-s.zarr-{socket.gethostname()}-999999999-xyz789"
    for d in (live, other, dead):
        d.mkdir()
    assert remove_dead_scratch(str(out)) == [dead]
    assert live.is_dir() and other.is_dir() and not dead.exists()
    shutil.rmtree(live)
