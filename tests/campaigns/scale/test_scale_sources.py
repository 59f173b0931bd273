"""WebDataset and HF sources under torchrun and after a kill: the bytes of one uninterrupted process.

The same claims as test_scale_dist.py makes for ImageFolder, for shards read at recorded
offsets and parquet rows read by index: 2 ranks write the single-process store file for file,
and a run killed mid-way resumes to it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scale_helpers import CLI_TINY, child_env, make_imagefolder, run, store_files, torchrun_cmd, written_blocks
from source_helpers import write_parquet, write_shards

pytestmark = pytest.mark.slow
HERE = Path(__file__).resolve().parents[2] / "helpers"  # slow_extract.py; the children run there


@pytest.fixture(scope="module", params=["webdataset", "hf"])
def source(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """``--data``/``--split`` arguments of the same 40 + 8 images as shards or parquet files."""
    folder = make_imagefolder(tmp_path_factory.mktemp("imgs"), splits={"train": 40, "val": 8})
    root = tmp_path_factory.mktemp(request.param)
    if request.param == "webdataset":
        splits = {s: write_shards(folder, s, root, per_shard=7) for s in ("train", "val")}
        data = str(root)
    else:
        pytest.importorskip("pyarrow")
        splits = {s: write_parquet(folder, s, root / s, files=3, row_group=5).name for s in ("train", "val")}
        data = f"hf:{root}"
    return ["--data", data, *(a for name, src in splits.items() for a in ("--split", f"{name}={src}"))]


@pytest.fixture(scope="module")
def reference(source: list[str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("single") / "ref.zarr"
    r = run([sys.executable, "-m", "epcache", "extract", *CLI_TINY, *source, "--out", str(out)], cwd=HERE)
    assert r.returncode == 0, r.stderr[-3000:]
    return store_files(out)


def _assert_same(out: Path, want: dict[str, bytes]) -> None:
    got = store_files(out)
    assert sorted(got) == sorted(want)
    assert not [name for name in want if got[name] != want[name]]


def test_two_ranks_write_the_single_process_store(source: list[str], reference: dict[str, bytes],
                                                  tmp_path: Path) -> None:
    out = tmp_path / "two.zarr"
    r = run(torchrun_cmd(2, "-m", "epcache", "extract", *CLI_TINY, *source, "--out", str(out)), cwd=HERE)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "on 2 ranks" in r.stdout
    _assert_same(out, reference)


def test_a_killed_run_resumes_to_the_same_bytes(source: list[str], reference: dict[str, bytes],
                                                tmp_path: Path) -> None:
    out = tmp_path / "killed.zarr"
    pids = tmp_path / "pids"
    pids.mkdir()
    cmd = [sys.executable, str(HERE / "slow_extract.py"), "extract", *CLI_TINY, *source, "--out", str(out)]
    job = subprocess.Popen(cmd, cwd=HERE, env=child_env(PID_DIR=str(pids), SLOW_S="0.3"),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while written_blocks(out) < 2:
            assert job.poll() is None, f"job ended early: {job.stderr.read() if job.stderr else ''}"
            assert time.monotonic() < deadline, "the job never wrote two blocks"
            time.sleep(0.02)
        os.kill(job.pid, signal.SIGKILL)
        job.wait(timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
        if job.stderr is not None:
            job.stderr.close()
    assert job.returncode == -signal.SIGKILL
    assert 2 <= written_blocks(out) < 6  # the kill landed mid-run
    r = run([sys.executable, "-m", "epcache", "extract", *CLI_TINY, *source, "--out", str(out), "--break-lock"],
            cwd=HERE)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed and completed" in r.stdout
    _assert_same(out, reference)
