"""The run directory of a launched job: its plan, one marker per finished unit, one lock per unit.

Every scheduler this package drives (a SLURM array, a Ray cluster, torchrun, one local process)
only has to agree on one shared folder::

    RUNDIR/launch.json            the plan: kind, the command's config, the units (written once)
    RUNDIR/units/<unit>.done      one JSON marker per finished unit (atomic: temp file + rename)
    RUNDIR/units/.epcache-run.<unit>.lock   held while a task runs the unit
    RUNDIR/units/<unit>/          a probe unit's own run directory (rows, heads, epoch checkpoints)
    RUNDIR/COMPLETE               written by ``gather`` once every unit (and every block) is in

A task never trusts its scheduler to run each unit once: a requeued task can race its original.
The unit lock (the same ``flock``-arbitrated lock file as a probe run directory's) lets one of them
run the unit; the other sees it busy and leaves it, or sees its marker and skips it. Everything is
JSON: nothing a task reads from the run directory can execute code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from epcache._fs.atomic import atomic_write
from epcache._fs.lockfile import StoreLockedError
from epcache.errors import ConfigError, EpcacheError
from epcache.probe.rundir import acquire_run_lock
from epcache.store.ops.lock import StoreLock

__all__ = [
    "COMPLETE_FILE",
    "PLAN_FILE",
    "IncompleteRunError",
    "LaunchPlan",
    "done_units",
    "read_plan",
    "try_unit_lock",
    "unit_dir",
    "write_json_atomic",
    "write_marker",
    "write_plan",
]

PLAN_FILE = "launch.json"
COMPLETE_FILE = "COMPLETE"
UNITS_DIR = "units"
PLAN_SCHEMA = "epcache-launch/1"


class IncompleteRunError(EpcacheError):
    """A launched run whose units did not all finish (the message names them and the re-submit command)."""


@dataclass(frozen=True)
class LaunchPlan:
    """What a launched run does: ``kind`` is "extract" or "probe"; units are JSON objects with an "id"."""

    kind: str
    config: dict[str, Any]  # the command's config as JSON (ExtractConfig / ProbeConfig)
    units: tuple[dict[str, Any], ...]
    extra: dict[str, Any]  # kind-specific facts the planner settled (extract: images skipped)

    def unit(self, unit_id: str) -> dict[str, Any]:
        for u in self.units:
            if u["id"] == unit_id:
                return u
        known = ", ".join(u["id"] for u in self.units[:5]) + (", ..." if len(self.units) > 5 else "")
        raise ConfigError(f"the run has no unit {unit_id!r} (its units: {known})")

    def to_json(self) -> dict[str, Any]:
        return {"schema": PLAN_SCHEMA, "kind": self.kind, "config": self.config, "units": list(self.units),
                "extra": self.extra}


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON through a temp file and a rename: readers on shared storage see all of it or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8")))


def write_plan(run_dir: Path, plan: LaunchPlan) -> None:
    """Write the plan; an existing plan of another job in ``run_dir`` is refused, never replaced.

    Raises:
        ConfigError: ``run_dir`` already holds the plan of a different command or kind.
    """
    path = Path(run_dir) / PLAN_FILE
    if path.exists():
        old = read_plan(run_dir)
        if (old.kind, old.config) != (plan.kind, plan.config):
            raise ConfigError(
                f"{run_dir} already holds a launched {old.kind} run with another configuration; re-submit it "
                f"with `epcache submit {run_dir}` (no command), or choose a new run directory"
            )
        return  # the same job launched again: keep the plan (its unit ids stay valid)
    write_json_atomic(path, plan.to_json())


def read_plan(run_dir: Path) -> LaunchPlan:
    """The plan of a launched run.

    Raises:
        ConfigError: no plan there (not a launched run directory), or not one this version reads.
    """
    path = Path(run_dir) / PLAN_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"{run_dir} is not a launched run directory (no {PLAN_FILE}); start one with "
            f"`epcache submit {run_dir} -- extract ...` or `-- probe ...`"
        ) from None
    except ValueError as e:
        raise ConfigError(f"{path} is not valid JSON ({e}); it was edited or cut: launch the run again") from None
    if not isinstance(doc, dict) or doc.get("schema") != PLAN_SCHEMA:
        raise ConfigError(f"{path} is not an epcache launch plan ({PLAN_SCHEMA}); launch the run again")
    return LaunchPlan(doc["kind"], doc["config"], tuple(doc["units"]), doc.get("extra") or {})


def unit_dir(run_dir: Path, unit_id: str) -> Path:
    """A unit's own folder (a probe unit's run directory)."""
    return Path(run_dir) / UNITS_DIR / unit_id


def write_marker(run_dir: Path, unit_id: str, info: dict[str, Any]) -> None:
    """Record a unit finished; written last, after everything the unit produced is durable."""
    write_json_atomic(Path(run_dir) / UNITS_DIR / f"{unit_id}.done", {"unit": unit_id, **info})


def done_units(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Markers of the finished units by unit id (a marker that does not parse counts as not finished)."""
    out: dict[str, dict[str, Any]] = {}
    folder = Path(run_dir) / UNITS_DIR
    if not folder.is_dir():
        return out
    for f in sorted(folder.glob("*.done")):
        try:
            doc = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and doc.get("unit") == f.stem:
            out[f.stem] = doc
    return out


def try_unit_lock(run_dir: Path, unit_id: str) -> StoreLock | None:
    """The unit's lock, or None while another live task holds it (a requeue racing its original).

    A lock left by a dead task (killed, preempted) is taken over, as a probe run directory's is.
    """
    try:
        return acquire_run_lock(Path(run_dir) / UNITS_DIR, suffix=f".{unit_id}", purpose=f"epcache unit {unit_id}")
    except StoreLockedError:
        return None
