"""One writer at a time: the lock file, its refusal message, stale locks and --break-lock."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from scale_helpers import LOCK_NAME, TINY_VIT, make_imagefolder
from typer.testing import CliRunner

from epcache._fs.lockfile import LockInfo
from epcache.cli import app
from epcache.store import StoreLockedError, describe_store, open_store
from epcache.store.ops.lock import acquire_store_lock, read_store_lock

runner = CliRunner()
CLI = ["extract", "--model", TINY_VIT, "--random-init", "--img-size", "32", "--layers", "-1:", "--split", "val=val",
       "--batch-size", "4", "--chunk-samples", "4", "--workers", "0", "--no-progress"]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _plant_lock(store: Path, **fields: object) -> Path:
    doc = {"host": socket.gethostname(), "pid": os.getpid(), "started": "2026-01-01T00:00:00+00:00",
           "purpose": "epcache extract", **fields}
    store.mkdir(parents=True, exist_ok=True)
    path = store / LOCK_NAME
    path.write_text(json.dumps(doc))
    return path


def test_lock_names_its_writer_and_refuses_a_second_one(tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    with acquire_store_lock(store) as lock:
        doc = json.loads((store / LOCK_NAME).read_text())
        assert doc["host"] == socket.gethostname() and doc["pid"] == os.getpid()
        assert doc["started"].endswith("+00:00") and doc["purpose"] == "epcache extract"
        assert read_store_lock(store) == lock.info and lock.info.stale is False
        with pytest.raises(StoreLockedError, match=rf"being written by another process: pid {os.getpid()} on host"):
            acquire_store_lock(store)
    assert not store.exists()  # the directory only existed for the lock
    assert read_store_lock(store) is None


def test_stale_lock_is_detected_and_can_be_broken(tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    _plant_lock(store, pid=_dead_pid())
    stale = read_store_lock(store)
    assert stale is not None and stale.stale is True
    with pytest.raises(StoreLockedError, match=r"stale writer lock.*no longer runs.*--break-lock"):
        acquire_store_lock(store)
    with acquire_store_lock(store, break_lock=True) as lock:
        assert read_store_lock(store) == lock.info and lock.info.pid == os.getpid()
    assert store.is_dir()  # existed before: never removed by the lock


def test_lock_of_another_host_and_unreadable_locks(tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    _plant_lock(store, host="gpu-node-17", pid=4242)
    info = read_store_lock(store)
    assert info == LockInfo("gpu-node-17", 4242, "2026-01-01T00:00:00+00:00", "epcache extract")
    assert info.stale is None  # cannot be checked from here
    with pytest.raises(StoreLockedError, match=r"pid 4242 on host gpu-node-17.*cannot check.*--break-lock"):
        acquire_store_lock(store)
    (store / LOCK_NAME).write_text("{trunc")
    with pytest.raises(StoreLockedError, match=r"unreadable writer lock.*--break-lock"):
        acquire_store_lock(store)
    acquire_store_lock(store, break_lock=True).release()


def test_hdf5_lock_sits_beside_the_file(tmp_path: Path) -> None:
    store = tmp_path / "sub" / "s.h5"
    with acquire_store_lock(store):
        assert (tmp_path / "sub" / "s.h5.lock").is_file() and not store.exists()
    assert not (tmp_path / "sub").exists()


def test_extraction_is_refused_while_locked_and_resumes_after_break_lock(tmp_path: Path) -> None:
    data = make_imagefolder(tmp_path / "data", splits={"val": 6})
    out = tmp_path / "s.zarr"
    args = [*CLI, "--data", str(data), "--out", str(out)]
    with acquire_store_lock(out):  # a live writer: this very process
        r = runner.invoke(app, args)
        assert r.exit_code == 2
        assert f"being written by another process: pid {os.getpid()}" in r.output and "Traceback" not in r.output
        assert not (out / "zarr.json").exists()  # refused before anything was created

    _plant_lock(out, pid=_dead_pid())  # a crashed writer
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and "stale writer lock" in r.output and "--break-lock" in r.output
    r = runner.invoke(app, [*args, "--break-lock"])
    assert r.exit_code == 0, r.output
    assert not (out / LOCK_NAME).exists()
    with open_store(out) as store:
        assert store.is_complete()
    assert describe_store(out).writer is None
    with acquire_store_lock(out, purpose="epcache verify --repair"):  # `info` shows who is writing
        shown = runner.invoke(app, ["info", str(out)])
        assert shown.exit_code == 0 and f"epcache verify --repair: pid {os.getpid()}" in shown.output
