"""Run one unit of a launched job: the function every backend calls, in whatever process it owns.

A unit is idempotent: it first takes the unit's lock (or leaves the unit to the live task that
holds it), skips it when its marker exists, does only what is not yet durable (blocks not yet
recorded; configs without a results row, from their last epoch checkpoint), and writes its
marker last. So a preempted, requeued, killed or duplicated task never leaves two copies or a
unit that looks finished when it is not.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from epcache._fs.oserror import os_errors
from epcache.extract.stages import (
    RESUME_HINT,
    PooledTokenExtractor,
    TokenExtractor,
    exit_on_sigterm,
    extract_split,
    load_backbone,
    prepare,
    torchrun_world_size,
)
from epcache.launch._configs import extract_config_from_json, probe_config_from_json
from epcache.launch._rundir import LaunchPlan, done_units, read_plan, try_unit_lock, unit_dir, write_marker
from epcache.probe import probe_store
from epcache.store import open_store

__all__ = ["UnitOutcome", "forget_backbone", "run_unit"]

UnitOutcome = Literal["done", "already-done", "busy"]


def run_unit(run_dir: str | Path, unit_id: str, *, batch_source: Callable[..., Any] | None = None) -> UnitOutcome:
    """Run one unit of the plan in ``run_dir``; returns what happened to it.

    ``batch_source``: how an extract unit gets its decoded batches (``extract_split``'s; None: its
    own DataLoader workers).

    "busy": another live task holds the unit's lock (a requeue racing its original); it is left
    to that task, and ``gather`` reports it if that task dies before finishing it.

    Raises:
        ConfigError: ``run_dir`` holds no plan, or the plan has no such unit; every error the
            unit's own ``extract`` / ``probe`` work raises (the unit stays unfinished).
    """
    run_dir = Path(run_dir)
    plan = read_plan(run_dir)
    unit = plan.unit(unit_id)
    if unit_id in done_units(run_dir):
        return "already-done"
    lock = try_unit_lock(run_dir, unit_id)
    if lock is None:
        return "busy"
    try:
        if unit_id in done_units(run_dir):  # finished by the task that held the lock before us
            return "already-done"
        t0 = time.perf_counter()
        if plan.kind == "extract":
            info = _run_extract_unit(plan, unit, batch_source)
        else:
            info = _run_probe_unit(plan, unit, run_dir)
        write_marker(run_dir, unit_id, {**info, "seconds": time.perf_counter() - t0})
        return "done"
    finally:
        lock.release()


def forget_backbone() -> None:
    """Drop this process's cached plan and backbone (the local launcher calls it when its units are done)."""
    _CACHE.clear()


def _run_extract_unit(
    plan: LaunchPlan, unit: dict[str, Any], batch_source: Callable[..., Any] | None
) -> dict[str, Any]:
    """The missing blocks of the unit's range, written as ``epcache extract`` writes them.

    The store was created by the planner; this opens it for appending like a non-zero torchrun
    rank does and reuses the extraction loop itself (``extract_split``), so the bytes are the ones
    a single process writes.
    """
    config = extract_config_from_json(plan.config)
    split, start, stop = unit["split"], int(unit["start"]), int(unit["stop"])
    with os_errors(action=f"epcache unit {unit['id']} into {config.out}", resume_hint=RESUME_HINT), exit_on_sigterm():
        prep, extractor = _prepared(plan, config, need_model=False)
        with open_store(str(config.out), "a") as store:
            todo = [b for b in store.missing_blocks(split) if start <= b < stop]
            written = 0
            if todo:
                prep, extractor = _prepared(plan, config, need_model=True)
                _, written, _ = extract_split(store, prep, prep.sources_in_store[split], split, todo, extractor,
                                              progress=False, batch_source=batch_source)
    decode = "workers" if batch_source is None else "tasks"  # tasks: the launcher's (Ray decode tasks)
    return {"kind": "extract", "split": split, "blocks": [start, stop], "written": written, "decode": decode}


# One entry: the last extract plan's Prepared and extractor in this process. A Ray actor or a local
# run does several units of one plan; planning (listing the dataset) and loading the weights once
# serves them all. Neither is changed by extracting, so a cached one gives the same bytes.
_CACHE: dict[str, tuple[Any, Any]] = {}


def _prepared(plan: LaunchPlan, config: Any, *, need_model: bool) -> tuple[Any, Any]:
    key = json.dumps([plan.config, plan.extra], sort_keys=True)
    prep, extractor = _CACHE.get(key, (None, None))
    if prep is None:
        _CACHE.clear()
        prep = prepare(config)
        for name, drop in plan.extra.get("skipped", {}).items():  # rows the planner left out of the store
            if drop:
                prep.sources_in_store[name] = prep.sources[name].without(set(drop))
    if need_model and extractor is None:
        model, _ = load_backbone(prep.source, model_kwargs=config.model_kwargs, img_size=config.effective_img_size,
                                 final_norm=config.final_norm, seed=config.seed)
        device = _rank_device(config.device)
        prep.config = dataclasses.replace(prep.config, device=device)
        model.to(device)
        extractor = (PooledTokenExtractor if prep.pooled_dim else TokenExtractor)(
            model, prep.geometry, final_norm=config.final_norm
        )
    _CACHE[key] = (prep, extractor)
    return prep, extractor


def _run_probe_unit(plan: LaunchPlan, unit: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """The sweep restricted to the unit's layer, in the unit's own run directory."""
    config = probe_config_from_json(plan.config)
    changes: dict[str, Any] = {"out": str(unit_dir(run_dir, unit["id"])), "shard": None,
                               "device": _rank_device(config.run.device)}
    if unit.get("layers"):
        changes["layers"] = tuple(unit["layers"])
    result = probe_store(dataclasses.replace(config, **changes), progress=False)
    return {"kind": "probe", "rows": len(result.rows), "skipped": len(result.skipped)}


def _rank_device(device: str) -> str:
    """``cuda`` under torchrun is this rank's own GPU (``LOCAL_RANK``); SLURM and Ray already hide the others."""
    import os

    if torchrun_world_size() == 1 or device not in ("cuda", "auto"):
        return device
    import torch

    if device == "auto" and not torch.cuda.is_available():
        return device
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
