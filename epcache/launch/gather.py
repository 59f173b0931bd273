"""``gather(RUNDIR)``: check that every unit of a launched run finished, then commit its outcome.

Nothing is merged until every unit has its marker: a missing unit is named, with the command that
re-submits exactly the missing ones. Then

- extract: the store itself is checked for every block of every split (a marker proves its task
  ran, the block records prove the bytes are in); only then is ``RUNDIR/COMPLETE`` written;
- probe: the units' rows (each unit a sweep over one layer in ``units/<id>/``) become one
  ``RUNDIR/results.jsonl``, ranked best seed group first, with ``summary.txt`` beside it and the
  trained heads linked into ``RUNDIR/heads``, so ``epcache report RUNDIR`` reads it as it reads a
  single-process run. A config gives the same numbers in any sweep, so the rows are the rows one
  process writes; a config found in two units (a hand-edited plan) is refused, not deduplicated.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from epcache.errors import ConfigError
from epcache.launch._rundir import (
    COMPLETE_FILE,
    IncompleteRunError,
    LaunchPlan,
    done_units,
    read_plan,
    unit_dir,
    write_json_atomic,
)
from epcache.probe.results.ranking import group_by_seed, rank
from epcache.probe.results.rows import RESULTS_FILE, format_summary, read_results, write_text
from epcache.store import open_store

__all__ = ["GatherResult", "gather", "resubmit_command"]


@dataclass(frozen=True)
class GatherResult:
    """What a finished run produced."""

    kind: str
    units: int
    rows: tuple[dict[str, Any], ...]  # probe: every config's row, ranked; extract: empty
    summary: str  # probe: the summary table; extract: the store and its blocks
    run_dir: Path


def resubmit_command(run_dir: Path, missing: list[str]) -> str:
    """The command that submits exactly ``missing`` again (with the launcher the user picks)."""
    return f"epcache submit {run_dir} --only {','.join(missing)}"


def gather(run_dir: str | Path) -> GatherResult:
    """Check every unit finished and merge the run's outcome (see the module docstring).

    Raises:
        ConfigError: ``run_dir`` is not a launched run.
        IncompleteRunError: units without a marker, or (extract) blocks not recorded in the
            store; names them and the re-submit command. Nothing is written then.
    """
    run_dir = Path(run_dir)
    plan = read_plan(run_dir)
    done = done_units(run_dir)
    missing = [u["id"] for u in plan.units if u["id"] not in done]
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise IncompleteRunError(
            f"{run_dir}: {len(missing)} of {len(plan.units)} units did not finish: {shown}. Re-submit exactly "
            f"those with: {resubmit_command(run_dir, missing)} [--launcher ...]"
        )
    if plan.kind == "extract":
        return _commit_extract(run_dir, plan)
    return _merge_probe(run_dir, plan)


def _commit_extract(run_dir: Path, plan: LaunchPlan) -> GatherResult:

    out = str(plan.config["out"])
    holes: list[str] = []
    blocks = 0
    with open_store(out) as store:
        for name in store.splits:
            missing = set(store.missing_blocks(name))
            blocks += store.split(name).num_blocks
            for u in plan.units:
                if u["split"] == name and any(u["start"] <= b < u["stop"] for b in missing):
                    holes.append(u["id"])
            if missing and not any(u["split"] == name for u in plan.units):
                raise IncompleteRunError(f"{out}: split {name!r} has {len(missing)} blocks no unit of {run_dir} "
                                         f"covers; extract them with `epcache extract ... --out {out}`")
        provenance = store.provenance
    if holes:
        for u in holes:  # their markers lied (a store replaced under the run): run them again
            (run_dir / "units" / f"{u}.done").unlink(missing_ok=True)
        raise IncompleteRunError(
            f"{out}: blocks of {len(holes)} units are not recorded in the store ({', '.join(holes[:10])}); "
            f"re-submit them with: {resubmit_command(run_dir, holes)} [--launcher ...]"
        )
    write_json_atomic(run_dir / COMPLETE_FILE, {"kind": "extract", "store": out, "provenance": provenance,
                                                 "blocks": blocks, "units": len(plan.units)})
    summary = f"store {out}: all {blocks} blocks of {len(plan.units)} units recorded; provenance {provenance}"
    return GatherResult("extract", len(plan.units), (), summary, run_dir)


def _merge_probe(run_dir: Path, plan: LaunchPlan) -> GatherResult:
    rows: dict[str, dict[str, Any]] = {}
    for u in plan.units:
        for row in read_results(unit_dir(run_dir, u["id"]) / RESULTS_FILE):
            if row["id"] in rows and rows[row["id"]] != row:
                raise ConfigError(f"config {row['id']} has two different rows in {run_dir}/units; the plan was "
                                  "edited by hand: launch the sweep again into a new run directory")
            rows[row["id"]] = row
    ranked = tuple(r for g in rank(group_by_seed(rows.values())) for r in g.rows)
    body = "".join(_json_line(r) for r in ranked)
    write_text(run_dir / RESULTS_FILE, body)  # atomic: a reader never sees half the rows
    _link_heads(run_dir, plan)
    summary = format_summary(ranked)
    write_text(run_dir / "summary.txt", summary + "\n")
    write_json_atomic(run_dir / COMPLETE_FILE, {"kind": "probe", "rows": len(ranked), "units": len(plan.units)})
    return GatherResult("probe", len(plan.units), ranked, summary, run_dir)


def _json_line(row: dict[str, Any]) -> str:
    import json

    return json.dumps(row, allow_nan=False) + "\n"  # rows are already finite: read back from the units' files


def _link_heads(run_dir: Path, plan: LaunchPlan) -> None:
    """Each unit's trained heads under ``RUNDIR/heads`` (hard links where the file system allows)."""
    dest = run_dir / "heads"
    for u in plan.units:
        src = unit_dir(run_dir, u["id"]) / "heads"
        if not src.is_dir():
            continue
        dest.mkdir(exist_ok=True)
        for f in sorted(src.iterdir()):
            target = dest / f.name
            if f.name.startswith(".") or target.exists():
                continue
            try:
                os.link(f, target)
            except OSError:
                shutil.copy2(f, target)
