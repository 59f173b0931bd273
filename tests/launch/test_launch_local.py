"""Launched runs on the local launcher: units, resume after a kill, duplicate tasks, gather, bad input.

The claims: an extraction cut into 4 block-range units writes the bytes of one process and only
then gets its completion marker; a unit killed mid-way is named by ``gather`` with the command
that re-submits exactly the missing units, and re-submitting completes the same bytes; a second
task on a unit another live task holds leaves it alone; a finished unit is not run again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from launch_helpers import assert_same_store, extract_args
from scale_helpers import child_env, run, torchrun_cmd, written_blocks
from typer.testing import CliRunner

from epcache.cli import app
from epcache.errors import ConfigError
from epcache.launch import IncompleteRunError, gather, read_plan, run_unit
from epcache.launch._rundir import try_unit_lock
from epcache.launch.units import block_ranges
from epcache.store import open_store

pytestmark = pytest.mark.slow
HERE = Path(__file__).resolve().parents[1] / "helpers"  # slow_extract.py; the children run there


@pytest.fixture(scope="module")
def reference(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("single") / "ref.zarr"
    r = CliRunner().invoke(app, ["extract", *extract_args(data, out)])
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def launched(data: Path, reference: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same extraction through `epcache submit --units 4` (run dir, store)."""
    root = tmp_path_factory.mktemp("launched")
    run_dir, out = root / "run", root / "units.zarr"
    r = CliRunner().invoke(app, ["submit", str(run_dir), "--units", "4", "--no-progress", "--",
                                 "extract", *extract_args(data, out)])
    assert r.exit_code == 0, r.output
    assert "all 6 blocks of 4 units recorded" in r.output
    return run_dir, out


def test_four_units_write_the_bytes_of_one_process(launched: tuple[Path, Path], reference: Path) -> None:
    run_dir, out = launched
    plan = read_plan(run_dir)
    assert plan.kind == "extract" and len(plan.units) == 4
    assert_same_store(out, reference)
    marker = json.loads((run_dir / "COMPLETE").read_text())
    assert marker["blocks"] == 6 and marker["units"] == 4


def test_block_ranges_cover_every_block_once() -> None:
    units = block_ranges({"train": 5, "val": 1, "empty": 0}, 4)
    covered = [(u["split"], b) for u in units for b in range(u["start"], u["stop"])]
    assert sorted(covered) == sorted([("train", b) for b in range(5)] + [("val", 0)])
    assert len(covered) == len(set(covered)) and {u["split"] for u in units} == {"train", "val"}


def test_duplicate_task_leaves_the_unit_to_the_live_one(launched: tuple[Path, Path], reference: Path) -> None:
    """A requeue racing its original: the one without the unit's lock does nothing; a redo changes no byte."""
    run_dir, out = launched
    unit = read_plan(run_dir).units[0]["id"]
    (run_dir / "units" / f"{unit}.done").unlink()  # as if the original were still running it
    held = try_unit_lock(run_dir, unit)
    assert held is not None
    try:
        assert run_unit(run_dir, unit) == "busy"
        with pytest.raises(IncompleteRunError, match=unit):
            gather(run_dir)
    finally:
        held.release()
    assert run_unit(run_dir, unit) == "done"  # its blocks are recorded: nothing is written again
    assert run_unit(run_dir, unit) == "already-done"
    assert_same_store(out, reference)
    assert gather(run_dir).kind == "extract"


@pytest.mark.reliability_kill
def test_killed_unit_is_named_and_resubmitted_to_the_same_bytes(data: Path, reference: Path, tmp_path: Path) -> None:
    run_dir, out, pids = tmp_path / "run", tmp_path / "killed.zarr", tmp_path / "pids"
    pids.mkdir()
    cmd = [sys.executable, str(HERE / "slow_extract.py"), "submit", str(run_dir), "--units", "4", "--no-progress",
           "--", "extract", *extract_args(data, out)]
    job = subprocess.Popen(cmd, cwd=HERE, env=child_env(PID_DIR=str(pids), SLOW_S="0.4"),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while written_blocks(out) < 1:
            assert job.poll() is None, f"the run ended early: {job.stderr.read() if job.stderr else ''}"
            assert time.monotonic() < deadline, "the run never wrote a block"
            time.sleep(0.02)
        os.kill(int((pids / "rank0").read_text()), signal.SIGKILL)
        job.wait(timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
        if job.stderr is not None:
            job.stderr.close()
    assert not (run_dir / "COMPLETE").exists()
    r = CliRunner().invoke(app, ["gather", str(run_dir)])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "did not finish" in r.output and f"epcache submit {run_dir} --only train-b" in r.output
    assert not (run_dir / "COMPLETE").exists()  # nothing is committed while a unit is missing
    with open_store(out) as store:
        assert not store.is_complete()

    r = CliRunner().invoke(app, ["submit", str(run_dir), "--no-progress"])  # the plan in RUNDIR, unfinished units
    assert r.exit_code == 0, r.output
    assert_same_store(out, reference)
    assert (run_dir / "COMPLETE").exists()


def test_torchrun_launcher_deals_the_units_over_the_ranks(data: Path, reference: Path, tmp_path: Path) -> None:
    run_dir, out = tmp_path / "run", tmp_path / "ranks.zarr"
    cmd = torchrun_cmd(2, "-m", "epcache", "submit", str(run_dir), "--launcher", "torchrun", "--units", "4",
                       "--no-progress", "--", "extract", *extract_args(data, out))
    r = run(cmd, cwd=HERE, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("all 6 blocks of 4 units recorded") == 1  # rank 0 gathers and reports
    done = [json.loads(f.read_text()) for f in sorted((run_dir / "units").glob("*.done"))]
    assert len(done) == 4 and sum(d["written"] for d in done) == 6  # every block written once
    assert_same_store(out, reference)


@pytest.mark.reliability_bad_input
def test_bad_submissions_are_one_line_errors(data: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    cases = [
        (["submit", str(tmp_path / "r1"), "--", "convert", "x"], "runs `extract` or `probe`"),
        (["submit", str(tmp_path / "r2"), "--launcher", "mpi", "--", "extract",
          *extract_args(data, tmp_path / "a.zarr")], "--launcher 'mpi'"),
        (["submit", str(tmp_path / "r3"), "--", "extract", *extract_args(data, tmp_path / "a.h5")], "zarr store"),
        (["submit", str(tmp_path / "r4")], "not a launched run directory"),
        (["gather", str(tmp_path)], "not a launched run directory"),
    ]
    for args, message in cases:
        r = runner.invoke(app, args)
        assert r.exit_code == 2, (args, r.output)
        assert message in r.output and "Traceback" not in r.output, (args, r.output)
    assert not (tmp_path / "a.h5").exists() and not (tmp_path / "a.zarr").exists()
    r = runner.invoke(app, ["submit", str(tmp_path / "r5"), "--", "extract", "--help"])  # the command's own help
    assert r.exit_code == 0 and "Usage: epcache extract" in r.output and not (tmp_path / "r5").exists()


def test_units_the_store_already_records_are_not_run_again(data: Path, reference: Path, tmp_path: Path) -> None:
    """A store finished by a plain `epcache extract`, then launched: every unit is settled at submission."""
    import shutil

    from epcache.launch import LaunchOptions, submit

    out = tmp_path / "copy.zarr"
    shutil.copytree(reference, out)
    r = CliRunner().invoke(app, ["submit", str(tmp_path / "run"), "--units", "4", "--no-progress", "--",
                                 "extract", *extract_args(data, out)])
    assert r.exit_code == 0, r.output
    markers = [json.loads(f.read_text()) for f in sorted((tmp_path / "run" / "units").glob("*.done"))]
    assert len(markers) == 4 and all(m["written"] == 0 and m["decode"] == "none" for m in markers)
    assert_same_store(out, reference)
    assert submit(tmp_path / "run", None, LaunchOptions(progress=False)).submitted == ()


@pytest.mark.reliability_bad_input
def test_a_missing_extra_is_named(launched: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from epcache.launch import LaunchOptions, submit

    for module, extra in (("ray", "ray"), ("submitit", "slurm")):
        monkeypatch.setitem(sys.modules, module, None)  # as if the package were not installed
        monkeypatch.delitem(sys.modules, f"epcache.launch.{module}_backend", raising=False)
        with pytest.raises(ConfigError, match=rf"needs {module}: pip install 'epcache\[{extra}\]'"):
            submit(launched[0], None, LaunchOptions(launcher="ray" if module == "ray" else "slurm", progress=False))


@pytest.mark.reliability_bad_input
def test_only_names_unknown_units(launched: tuple[Path, Path]) -> None:
    from epcache.launch import LaunchOptions, submit

    with pytest.raises(ConfigError, match="does not have: nope"):
        submit(launched[0], None, LaunchOptions(only=("nope",), progress=False))


def test_torchrun_ranks_take_their_own_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from epcache.launch.execute import _rank_device

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert _rank_device("cuda") == "cuda"  # SLURM and Ray hide the other GPUs already
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert _rank_device("cuda") == "cuda:1" and _rank_device("cpu") == "cpu" and _rank_device("cuda:0") == "cuda:0"
