"""``submit``: plan a run into RUNDIR (once), hand its unfinished units to a launcher, gather at the end.

Launchers:

- ``local``: the units one after the other in this process (a laptop, a one-GPU box, a test);
- ``torchrun``: every rank of a torchrun job runs ``epcache submit`` with the same arguments;
  rank 0 plans, the ranks take the units round-robin (``extract/_dist.assign_blocks``) and meet
  at a barrier, and rank 0 gathers. Unlike ``extract`` under torchrun, a unit is the unit of
  failure: what a dead rank left is re-submitted alone;
- ``slurm``: one submitit job array (``submitit_backend``), requeued on preemption;
- ``ray``: one actor per GPU on a Ray cluster (``ray_backend``).

Re-submitting a run directory (no config) runs only its unfinished units, or the ``only`` ones.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from epcache.errors import ConfigError
from epcache.extract.stages import distributed_context
from epcache.launch._rundir import PLAN_FILE, LaunchPlan, done_units, read_plan, write_marker, write_plan
from epcache.launch.execute import forget_backbone, run_unit
from epcache.launch.gather import GatherResult, gather
from epcache.launch.units import plan_extract_units, plan_probe_units
from epcache.store import open_store

__all__ = ["LAUNCHERS", "LaunchOptions", "SubmitResult", "submit"]

LAUNCHERS = ("local", "torchrun", "slurm", "ray")


@dataclass(frozen=True)
class LaunchOptions:
    """How to run the units; the slurm/ray objects are ``submitit_backend.SlurmOptions`` / ``RayOptions``."""

    launcher: str = "local"
    units: int = 8  # extract: block-range units (probe: one per layer, whatever this says)
    only: tuple[str, ...] = ()  # re-submit just these units
    wait: bool = True  # wait for the units and gather (slurm: False returns after submission)
    slurm: Any = None
    ray: Any = None
    progress: bool = True


@dataclass(frozen=True)
class SubmitResult:
    run_dir: Path
    plan: LaunchPlan
    submitted: tuple[str, ...]  # the units handed to the launcher
    outcomes: dict[str, str] = field(default_factory=dict)  # unit -> done / already-done / busy / failed: ...
    job_ids: tuple[str, ...] = ()  # slurm
    gathered: GatherResult | None = None  # when waited for and every unit finished
    rank: int = 0  # torchrun: this process's rank (rank 0 gathers)


def submit(run_dir: str | Path, config: Any = None, options: LaunchOptions | None = None) -> SubmitResult:
    """Plan ``config`` (an ``ExtractConfig`` or ``ProbeConfig``) into ``run_dir``, run its units, gather.

    With ``config=None`` the plan already in ``run_dir`` is re-submitted.

    Raises:
        ConfigError: an unknown launcher, a launcher's extra not installed, a probe ``--out`` that
            is not the run directory, unknown ``only`` units; every planning error of the command.
        IncompleteRunError: (waiting) units that did not finish, named with the re-submit command.
    """
    options = options or LaunchOptions()
    if options.launcher not in LAUNCHERS:
        raise ConfigError(f"--launcher {options.launcher!r} is not one of {', '.join(LAUNCHERS)}")
    run_dir = Path(run_dir)
    if options.launcher == "torchrun":
        return _submit_torchrun(run_dir, config, options)
    plan = _plan(run_dir, config, options)
    todo = _settle_recorded(run_dir, plan, _todo(run_dir, plan, options.only))
    outcomes: dict[str, str] = {}
    job_ids: tuple[str, ...] = ()
    if options.launcher == "local":
        try:
            for u in todo:
                outcomes[u] = run_unit(run_dir, u)
        finally:
            forget_backbone()  # the weights stay loaded across this run's units, not after it
    elif options.launcher == "slurm":
        backend = _optional("epcache.launch.submitit_backend", "submitit", "slurm")
        jobs = backend.submit_array(run_dir, todo, options.slurm or backend.SlurmOptions()) if todo else []
        job_ids = tuple(str(j.job_id) for j in jobs)
        if not options.wait:
            return SubmitResult(run_dir, plan, tuple(todo), outcomes, job_ids)
        for u, job in zip(todo, jobs, strict=True):
            try:
                outcomes[u] = job.result()
            except Exception as e:
                outcomes[u] = f"failed: {_last_line(e)}"
    else:
        backend = _optional("epcache.launch.ray_backend", "ray", "ray")
        outcomes = backend.run_on_ray(run_dir, todo, options.ray or backend.RayOptions()) if todo else {}
    for u, what in outcomes.items():
        if what.startswith("failed") and options.progress:
            print(f"epcache: unit {u} {what}", file=sys.stderr)
    return SubmitResult(run_dir, plan, tuple(todo), outcomes, job_ids, gather(run_dir) if options.wait else None)


def _plan(run_dir: Path, config: Any, options: LaunchOptions) -> LaunchPlan:
    """Plan a new run (or check that ``config`` is the one already planned there), or read the plan."""
    if config is None:
        return read_plan(run_dir)
    if hasattr(config, "store"):  # a ProbeConfig: the run directory is its --out
        import dataclasses

        if config.run.out is not None and Path(config.run.out).resolve() != run_dir.resolve():
            raise ConfigError(f"probe --out {config.run.out} is not the run directory {run_dir}; drop --out "
                              "(a launched sweep writes into the run directory)")
        if not (run_dir / PLAN_FILE).exists() and any(run_dir.glob("results*.jsonl")):  # gather would replace them
            raise ConfigError(f"{run_dir} already holds the results of a sweep run without a launcher; launch "
                              "into a new run directory (or continue that one with `epcache probe --out`)")
        plan = plan_probe_units(dataclasses.replace(config, out=str(run_dir)))
    else:
        plan = plan_extract_units(config, options.units, run_dir, progress=options.progress)
    write_plan(run_dir, plan)
    return read_plan(run_dir)  # an earlier plan of the same job keeps its unit ids


def _todo(run_dir: Path, plan: LaunchPlan, only: tuple[str, ...]) -> list[str]:
    ids = [u["id"] for u in plan.units]
    unknown = [u for u in only if u not in ids]
    if unknown:
        raise ConfigError(f"--only names units the run in {run_dir} does not have: {', '.join(unknown)}")
    done = done_units(run_dir)
    return [u for u in ids if u not in done and (not only or u in only)]


def _settle_recorded(run_dir: Path, plan: LaunchPlan, todo: list[str]) -> list[str]:
    """Extract units whose blocks the store already records get their marker here, not a task each.

    A store continued from a plain ``epcache extract`` (or an earlier run directory) has such
    units; on SLURM each would cost a job start only to find nothing to do.
    """
    if plan.kind != "extract" or not todo:
        return todo
    with open_store(str(plan.config["out"])) as store:
        missing = {name: set(store.missing_blocks(name)) for name in store.splits}
    left: list[str] = []
    for unit in (plan.unit(u) for u in todo):
        holes = missing.get(unit["split"], set())
        if any(unit["start"] <= b < unit["stop"] for b in holes):
            left.append(unit["id"])
        else:
            write_marker(run_dir, unit["id"], {"kind": "extract", "split": unit["split"],
                                               "blocks": [unit["start"], unit["stop"]], "written": 0,
                                               "decode": "none", "seconds": 0.0})
    return left


def _submit_torchrun(run_dir: Path, config: Any, options: LaunchOptions) -> SubmitResult:
    with distributed_context() as ctx:
        error: BaseException | None = None
        if ctx.is_main:
            try:
                _plan(run_dir, config, options)
            except BaseException as e:
                error = e
        shared = ctx.share(repr(error) if error is not None else None)  # no rank waits for a plan that failed
        if error is not None:
            raise error
        if shared is not None:
            raise ConfigError(f"rank 0 could not plan the run: {shared}")
        plan = read_plan(run_dir)
        todo = _todo(run_dir, plan, options.only)
        outcomes: dict[str, str] = {}
        for u in ctx.assign(todo):
            try:
                outcomes[u] = run_unit(run_dir, u)
            except Exception as e:
                outcomes[u] = f"failed: {type(e).__name__}: {e}"
        forget_backbone()
        merged: dict[str, str] = {}
        for part in ctx.gather(outcomes):  # the barrier: every rank's units are done or failed
            merged.update(part)
    gathered = gather(run_dir) if options.wait and ctx.is_main else None
    return SubmitResult(run_dir, plan, tuple(todo), merged, (), gathered, ctx.rank)


def _optional(module: str, package: str, extra: str) -> Any:
    import importlib

    try:
        importlib.import_module(package)  # the extra itself, whether or not the backend imports it at once
        return importlib.import_module(module)
    except ImportError as e:
        if e.name not in (package, module):
            raise
        raise ConfigError(f"--launcher {extra} needs {package}: pip install 'epcache[{extra}]'") from None


def _last_line(e: BaseException) -> str:
    """A failed submitit job's error: the last line of the remote traceback it carries."""
    text = str(e).strip().splitlines()
    return text[-1] if text else type(e).__name__
