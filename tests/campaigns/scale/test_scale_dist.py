"""Distributed extraction: real torchrun jobs of 2 CPU processes (gloo) against one process.

The claims: two ranks write the same bytes as one process (every chunk, shard, record and
metadata file); a job that loses a rank resumes to those same bytes; HDF5 is refused under
torchrun with the zarr alternative named; blocks are dealt round-robin over the missing ones.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scale_helpers import (
    CLI_TINY,
    LOCK_NAME,
    child_env,
    make_imagefolder,
    run,
    store_files,
    tiny_config,
    torchrun_cmd,
    written_blocks,
)
from typer.testing import CliRunner

from epcache.cli import app
from epcache.errors import ConfigError
from epcache.extract import extract_store
from epcache.extract._dist import assign_blocks
from epcache.store import open_store
from epcache.store.ops.lock import read_store_lock

pytestmark = pytest.mark.slow
HERE = Path(__file__).resolve().parents[2] / "helpers"  # slow_extract.py; the children run there


@pytest.fixture(scope="module")
def reference(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The single-process store every distributed run must reproduce byte for byte."""
    out = tmp_path_factory.mktemp("single") / "ref.zarr"
    r = run([sys.executable, "-m", "epcache", "extract", *CLI_TINY, "--data", str(data), "--out", str(out)], cwd=HERE)
    assert r.returncode == 0, r.stderr
    with open_store(out) as store:
        assert store.is_complete() and store.split("train").block_samples == 8  # sharded: shards are the blocks
        assert store.split("train").num_blocks == 5
    return out


def _assert_same_store(got: Path, want: Path) -> None:
    a, b = store_files(got), store_files(want)
    assert sorted(a) == sorted(b)
    different = [name for name in b if a[name] != b[name]]
    assert not different, f"files differ: {different[:5]}"


def test_two_ranks_write_the_bytes_of_one_process(data: Path, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "two.zarr"
    r = run(torchrun_cmd(2, "-m", "epcache", "extract", *CLI_TINY, "--data", str(data), "--out", str(out)), cwd=HERE)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("on 2 ranks: 48 samples") == 2  # every rank reports the job's totals
    _assert_same_store(out, reference)
    assert not (out / LOCK_NAME).exists()  # rank 0 released the job's lock


def test_overwrite_under_torchrun_swaps_in_after_the_barrier(data: Path, reference: Path, tmp_path: Path) -> None:
    """Ranks write the replacement beside the old store; rank 0 swaps it in once every rank's blocks are in."""
    out = tmp_path / "two.zarr"
    shutil.copytree(reference, out)
    (out / "old-store-marker").write_text("only in the old store")
    cmd = torchrun_cmd(2, "-m", "epcache", "extract", *CLI_TINY, "--data", str(data), "--out", str(out), "--overwrite")
    r = run(cmd, cwd=HERE)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not (out / "old-store-marker").exists()  # the whole directory was swapped for the new one
    _assert_same_store(out, reference)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two.zarr"]  # no staging store left


@pytest.mark.parametrize("victim", [1, 0])
def test_killed_rank_resumes_to_identical_bytes(data: Path, reference: Path, tmp_path: Path, victim: int) -> None:
    """Kill one rank mid-run: rank 1 (torchrun stops rank 0, which releases the lock; resume on 2 ranks)
    or rank 0, the lock holder (its lock is stale; one process resumes with --break-lock)."""
    out = tmp_path / "killed.zarr"
    pids = tmp_path / "pids"
    pids.mkdir()
    cmd = torchrun_cmd(2, str(HERE / "slow_extract.py"), "extract", *CLI_TINY, "--data", str(data), "--out", str(out))
    job = subprocess.Popen(cmd, cwd=HERE, env=child_env(PID_DIR=str(pids), SLOW_S="0.4"),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while written_blocks(out) < 2 or not (pids / f"rank{victim}").exists():
            assert job.poll() is None, f"job ended early: {job.stderr.read() if job.stderr else ''}"
            assert time.monotonic() < deadline, "the job never wrote two blocks"
            time.sleep(0.02)
        os.kill(int((pids / f"rank{victim}").read_text()), signal.SIGKILL)
        job.wait(timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
        if job.stderr is not None:
            job.stderr.close()
    assert job.returncode != 0  # torchrun reports the lost rank and stops the other one

    with open_store(out) as store:
        assert not store.is_complete()  # the kill landed mid-run
        done = sum(store.split(s).num_blocks - len(store.missing_blocks(s)) for s in store.splits)
    assert 2 <= done < 6

    args = ["extract", *CLI_TINY, "--data", str(data), "--out", str(out)]
    if victim == 1:
        # torchrun stopped rank 0 with SIGTERM, which extraction turns into a clean exit: no lock left
        assert read_store_lock(out) is None
        r = run(torchrun_cmd(2, "-m", "epcache", *args), cwd=HERE)
    else:
        lock = read_store_lock(out)
        assert lock is not None and lock.stale is True  # its holder died without a word
        refused = CliRunner().invoke(app, args)
        assert refused.exit_code == 2 and "stale writer lock" in refused.output and "--break-lock" in refused.output
        r = run([sys.executable, "-m", "epcache", *args, "--break-lock"], cwd=HERE)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed and completed" in r.stdout
    _assert_same_store(out, reference)
    assert read_store_lock(out) is None


def test_a_user_error_on_one_rank_stops_every_rank_with_its_message(tmp_path: Path) -> None:
    data = make_imagefolder(tmp_path / "data", splits={"train": 16})
    bad = data / "train" / "dog" / "img_0001.png"
    bad.write_bytes(b"not a png")
    out = tmp_path / "s.zarr"
    args = ["extract", *CLI_TINY, "--split", "train=train", "--data", str(data), "--out", str(out)]
    r = run(torchrun_cmd(2, "-m", "epcache", *args), cwd=HERE)
    assert r.returncode != 0
    # the rank that decoded it says so; the other rank exits with the same message, naming that rank
    assert r.stderr.count(f"error: cannot decode {bad}") == 1
    assert re.search(rf"error: rank [01] of 2: cannot decode {re.escape(str(bad))}", r.stderr)
    assert "epcache/extract/" not in r.stderr  # user errors: one line per rank, no traceback from epcache
    assert read_store_lock(out) is None
    with open_store(out) as store:
        assert not store.is_complete()  # the other blocks are written; a fixed image and a re-run finish it


def test_hdf5_is_refused_under_torchrun(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun sets; refused before joining any process group
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ConfigError, match=r"HDF5 store takes one writer.*--out NAME\.zarr"):
        extract_store(tiny_config(data, tmp_path / "s.h5", splits={"val": "val"}), progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_blocks_are_dealt_round_robin_over_the_missing_ones(world_size: int) -> None:
    missing = [0, 3, 4, 5, 9, 10, 11]
    shares = [assign_blocks(missing, rank=r, world_size=world_size) for r in range(world_size)]
    assert sorted(b for share in shares for b in share) == missing  # every block exactly once
    assert max(map(len, shares)) - min(map(len, shares)) <= 1  # balanced even after a crash
    assert shares[0] == missing[::world_size]
    assert shares == [assign_blocks(missing, rank=r, world_size=world_size) for r in range(world_size)]
    with pytest.raises(ValueError, match="outside"):
        assign_blocks(missing, rank=world_size, world_size=world_size)
