"""SLURM job arrays through submitit, run by its LocalExecutor (real processes on this machine).

The claims: a store extracted as 4 array tasks is byte-identical to one process's; a sweep run as
4 array tasks (its layers) gathers to the rows of one process; a task preempted mid-unit is
requeued by submitit and resumes to the same bytes.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest
from launch_helpers import assert_same_store, probe_config, rows_by_id, write_probe_store
from scale_helpers import tiny_config, written_blocks

from epcache.extract import extract_store
from epcache.launch import LaunchOptions, gather, read_plan, submit
from epcache.launch._rundir import write_plan
from epcache.launch.units import plan_extract_units
from epcache.probe import probe_store
from epcache.store import open_store

submitit = pytest.importorskip("submitit", reason="submitit is not installed (pip install 'epcache[slurm]')")
from epcache.launch.submitit_backend import SlurmOptions, UnitTask  # noqa: E402

pytestmark = pytest.mark.slow
HERE = Path(__file__).resolve().parents[1] / "helpers"  # slow_submitit.py
LOCAL = SlurmOptions(cluster="local", gpus_per_task=0, cpus_per_task=1, time_min=10)


@pytest.fixture(scope="module")
def reference(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("single") / "ref.zarr"
    extract_store(tiny_config(data, out, shard_samples=8), progress=False)
    return out


def test_four_array_tasks_write_the_bytes_of_one_process(data: Path, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "array.zarr"
    result = submit(tmp_path / "run", tiny_config(data, out, shard_samples=8, allow_duplicate=True),
                    LaunchOptions(launcher="slurm", units=4, slurm=LOCAL, progress=False))
    assert len(result.job_ids) == 4 and set(result.outcomes.values()) == {"done"}
    assert result.gathered is not None and (tmp_path / "run" / "COMPLETE").exists()
    assert_same_store(out, reference)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # DebugExecutor leaves its log open
def test_sweep_as_four_array_tasks_gathers_to_the_rows_of_one_process(tmp_path: Path) -> None:
    store = write_probe_store(tmp_path / "s.zarr")
    single = rows_by_id(probe_store(probe_config(store, tmp_path / "single"), progress=False).rows)
    debug = SlurmOptions(cluster="debug", gpus_per_task=0)  # submitit's DebugExecutor: the array in this process
    result = submit(tmp_path / "run", probe_config(store, None),
                    LaunchOptions(launcher="slurm", slurm=debug, progress=False))
    assert len(result.job_ids) == 4
    assert result.gathered is not None and rows_by_id(result.gathered.rows) == single


@pytest.mark.reliability_kill
def test_preempted_task_is_requeued_and_resumes_to_the_same_bytes(data: Path, reference: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """SLURM signals a preempted task (USR2); submitit checkpoints ``UnitTask`` and starts it again."""
    run_dir, out, pids = tmp_path / "run", tmp_path / "preempted.zarr", tmp_path / "pids"
    pids.mkdir()
    write_plan(run_dir, plan_extract_units(tiny_config(data, out, shard_samples=8, allow_duplicate=True), 1, run_dir,
                                         progress=False))
    units = [u["id"] for u in read_plan(run_dir).units]
    assert units[0] == "train-b000000-000005"
    monkeypatch.setenv("PID_DIR", str(pids))
    monkeypatch.setenv("SLOW_S", "0.4")
    executor = submitit.LocalExecutor(folder=str(run_dir / "submitit" / "%j"),
                                      python=f"{sys.executable} {HERE / 'slow_submitit.py'}")
    executor.update_parameters(timeout_min=10)
    job = executor.submit(UnitTask(), str(run_dir), units[0])  # train: 5 blocks, two slow batches each
    deadline = time.monotonic() + 120
    while written_blocks(out) < 1 or not (pids / "start0").exists():
        assert not job.done(), job.stdout()
        assert time.monotonic() < deadline, "the task never wrote a block"
        time.sleep(0.02)
    os.kill(int((pids / "start0").read_text()), signal.SIGUSR2)  # SLURM's preemption signal to the task
    assert job.result() == "done"
    assert (pids / "start1").exists()  # requeued: the task started a second time, and resumed
    with open_store(out) as store:
        assert not store.missing_blocks("train")
    for u in units[1:]:
        assert UnitTask()(str(run_dir), u) == "done"
    gather(run_dir)
    assert_same_store(out, reference)


def test_slurm_array_asks_for_what_the_options_say(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sbatch file of the array (a stand-in ``srun`` on PATH makes submitit believe SLURM is here)."""
    from epcache.launch.submitit_backend import make_executor

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 0\n")
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    options = SlurmOptions(partition="gpu", time_min=90, gpus_per_task=1, cpus_per_task=6, mem_gb=32, parallel=3)
    executor = make_executor(tmp_path / "run", options, 8)
    sbatch = executor._executor._make_submission_file_text("python task", "uid")
    for line in ("--partition=gpu", "--time=90", "--gpus-per-task=1", "--cpus-per-task=6", "--mem=32G",
                 "--signal=USR2@"):
        assert line in sbatch, line
    assert executor._executor.parameters.get("array_parallelism") == 3


@pytest.mark.reliability_bad_input
def test_slurm_without_slurm_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from epcache.errors import ConfigError
    from epcache.launch.submitit_backend import make_executor

    monkeypatch.setenv("PATH", str(tmp_path))  # no srun anywhere
    with pytest.raises(ConfigError, match="no SLURM here .* --executor local"):
        make_executor(tmp_path / "run", SlurmOptions(), 4)
