"""SLURM job arrays through submitit: one array task per unit, requeued on preemption or timeout.

``map_array`` submits the units as one array (``--array=0-N%parallel``); each task calls
``run_unit``. The task is ``Checkpointable``: when SLURM preempts it or its time runs out,
submitit requeues the same call, which resumes the unit from what is durable (recorded blocks,
the last epoch checkpoint). submitit's own job files in ``RUNDIR/submitit`` carry the call; the
run directory's state stays JSON. ``cluster="local"`` (submitit's LocalExecutor: real processes on
this machine) and ``"debug"`` (in this process) run the same array without SLURM.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit

from epcache.errors import ConfigError
from epcache.launch.execute import UnitOutcome, run_unit

__all__ = ["SlurmOptions", "UnitTask", "make_executor", "submit_array"]


@dataclass(frozen=True)
class SlurmOptions:
    """What the array asks the scheduler for; ``None`` leaves the cluster's default."""

    partition: str | None = None
    time_min: int = 240  # per task; a task past it is requeued and resumes
    gpus_per_task: int = 1
    cpus_per_task: int = 8  # decode workers of an extract unit, data loading of a probe unit
    mem_gb: int | None = None
    parallel: int | None = None  # tasks running at once (%N of --array)
    cluster: str | None = None  # None: SLURM when available; "local" or "debug": submitit's local executors
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # more slurm_* parameters, as submitit names them


class UnitTask(submitit.helpers.Checkpointable):
    """The array task: one unit; requeued with the same arguments when preempted or timed out."""

    def __call__(self, run_dir: str, unit_id: str) -> UnitOutcome:
        return run_unit(run_dir, unit_id)


def submit_array(run_dir: Path, unit_ids: list[str], options: SlurmOptions) -> list[Any]:
    """Submit ``unit_ids`` as one job array; returns submitit's jobs (``.job_id``, ``.result()``).

    Raises:
        ConfigError: SLURM asked for (``cluster=None``) where there is none.
    """
    executor = make_executor(run_dir, options, len(unit_ids))
    return list(executor.map_array(UnitTask(), [str(run_dir)] * len(unit_ids), unit_ids))


def make_executor(run_dir: Path, options: SlurmOptions, tasks: int) -> Any:
    """The submitit executor of the array, its parameters set (what the sbatch file will ask for)."""

    executor = submitit.AutoExecutor(folder=str(Path(run_dir) / "submitit" / "%j"), cluster=options.cluster)
    if options.cluster is None and executor.cluster != "slurm":  # submitit would quietly run it here instead
        raise ConfigError("--launcher slurm: no SLURM here (srun not found); submit from a SLURM login node, or "
                          "pass --executor local to run the array as processes on this machine")
    params: dict[str, Any] = {
        "name": f"epcache-{Path(run_dir).name}",
        "timeout_min": options.time_min,
        "cpus_per_task": options.cpus_per_task,
        "tasks_per_node": 1,
        "nodes": 1,
    }
    if executor.cluster == "slurm":
        params.update(
            slurm_gpus_per_task=options.gpus_per_task or None,
            slurm_partition=options.partition,
            slurm_mem=f"{options.mem_gb}G" if options.mem_gb else None,
            slurm_array_parallelism=options.parallel or tasks,
            **options.extra,
        )
        params = {k: v for k, v in params.items() if v is not None}
    elif options.gpus_per_task:
        params["gpus_per_node"] = options.gpus_per_task
    executor.update_parameters(**params)
    return executor
