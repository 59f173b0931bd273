"""convert's writer lock lives beside DST: a killed conversion leaves nothing at DST and re-runs as is.

Each kill lands inside a block write of the copy (reliability_helpers.CHILD), for zarr and HDF5.
Afterwards DST is absent (``epcache info`` says so, rather than calling a lock-only directory a
damaged store), or the store the user had is untouched, and the same command run again, without
``--break-lock``, finishes the copy and leaves no lock, staging copy or ballast behind.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from reliability_helpers import TINY, make_imagefolder, run_cli, run_killed, store_arrays

from epcache.convert._lock import DestinationLock, convert_lock_location

pytestmark = pytest.mark.reliability_kill

KILLS = {"zarr": ("d.zarr", "zarr-partial:3"), "h5": ("d.h5", "h5-data:3")}
TOKENS = ("labels", "order", "ids", "layers")  # what a copy shares with its source (records follow its chunking)


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 16-image store: 4 blocks of 2 layers, so a copy writes 8 blocks."""
    root = tmp_path_factory.mktemp("convlock")
    data = make_imagefolder(root / "data", splits={"train": 16}, seed=4)
    out = root / "src.zarr"
    code, text = run_cli("extract", *TINY, "--data", str(data), "--split", "train=train", "--out", str(out))
    assert code == 0, text
    return out


def _tokens(path: Path) -> dict[str, bytes]:
    return {k: v for k, v in store_arrays(path).items() if k != "meta" and k.split("/")[1] in TOKENS}


def _convert(src: Path, dst: Path, *extra: str) -> list[str]:
    return ["convert", str(src), str(dst), "--chunk-samples", "4", "--no-progress", *extra]


@pytest.mark.parametrize("fmt", list(KILLS))
def test_killed_convert_leaves_nothing_at_dst_and_reruns_without_break_lock(src: Path, tmp_path: Path,
                                                                             fmt: str) -> None:
    name, kill = KILLS[fmt]
    out = tmp_path / "out"
    out.mkdir()
    dst = out / name
    run_killed(tmp_path, kill, _convert(src, dst))
    assert not dst.exists()  # never a directory holding only the lock
    assert all(p.name.startswith(".") for p in out.iterdir())  # the hidden copy and lock, beside it
    assert Path(convert_lock_location(str(dst))).is_file()
    code, text = run_cli("info", str(dst))
    assert code == 2 and "does not exist" in text and "not a zarr v3 store" not in text, text
    code, text = run_cli(*_convert(src, dst))  # the killed conversion's lock is taken over: no flag needed
    assert code == 0 and "Traceback" not in text, text
    assert sorted(p.name for p in out.iterdir()) == [name]  # no lock, staging copy or ballast left
    assert _tokens(dst) == _tokens(src)
    code, text = run_cli("verify", str(dst), "--no-progress")
    assert code == 0, text


@pytest.mark.parametrize("fmt", list(KILLS))
def test_killed_overwrite_keeps_the_old_store_and_reruns(src: Path, tmp_path: Path, fmt: str) -> None:
    name, kill = KILLS[fmt]
    dst = tmp_path / name
    code, text = run_cli(*_convert(src, dst, "--layers", "0"))
    assert code == 0, text
    before = store_arrays(dst)
    run_killed(tmp_path, kill, _convert(src, dst, "--overwrite"))
    assert store_arrays(dst) == before  # untouched until the swap
    code, text = run_cli(*_convert(src, dst, "--overwrite"))
    assert code == 0 and "Traceback" not in text, text
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    assert _tokens(dst) == _tokens(src)


def test_a_running_conversions_lock_is_never_taken(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "d.zarr"
    held = DestinationLock(str(dst), break_lock=False)  # this process: alive, its flock held
    try:
        for extra in ((), ("--break-lock",)):
            code, text = run_cli(*_convert(src, dst, *extra))
            assert code == 2 and "being written by another conversion" in text, text
        assert not dst.exists()
    finally:
        held.release()
    assert list(tmp_path.iterdir()) == []  # released: the sibling lock is gone too
    code, text = run_cli(*_convert(src, dst))
    assert code == 0, text


def test_lock_only_directory_of_an_earlier_killed_conversion_is_replaced(src: Path, tmp_path: Path) -> None:
    """Earlier versions kept the lock inside DST: a killed one left DST holding only that lock."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dst = tmp_path / "d.zarr"
    dst.mkdir()
    lock = {"host": socket.gethostname(), "pid": int(dead.stdout), "started": "2026-01-01T00:00:00+00:00",
            "purpose": "epcache convert"}
    (dst / ".epcache.lock").write_text(json.dumps(lock))
    code, text = run_cli(*_convert(src, dst))
    assert code == 0 and "Traceback" not in text, text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.zarr"]
    assert not (dst / ".epcache.lock").exists() and _tokens(dst) == _tokens(src)
