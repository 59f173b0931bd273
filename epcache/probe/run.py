"""``probe_store(config)``: the library entry point behind ``epcache probe``.

Order of work: lock the run directory, open the stores, plan the sweep ONCE (:func:`plan_sweep`
checks everything a user can get wrong: splits, layers, labels, completeness, compatibility of a
separate eval store, the whole sweep grid, the holdout), prepare the run directory (the plan is
written to ``plan.json``), train each input group (one layer) in one fused pass per epoch,
checkpointing after every epoch, fit the solver heads, rank and summarise. Every step reads the plan.
Re-running into the same run directory skips finished configs and resumes a killed group at its
last completed epoch with the same numbers it would have produced uninterrupted.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from epcache._fs.oserror import os_errors
from epcache.errors import ConfigError
from epcache.probe.config.probe_config import ProbeConfig
from epcache.probe.config.suite import suite_record
from epcache.probe.dense.execute import run_dense_specs
from epcache.probe.dense.route import DensePlan, plan_dense
from epcache.probe.device import cpu_threads, resolve_shard
from epcache.probe.plan import PlannedGroup, SweepPlan, plan_sweep
from epcache.probe.results.anchor import Anchor, anchor_name, check_rows, read_anchors
from epcache.probe.results.ranking import best_row, rank_rows
from epcache.probe.results.repeats import RepeatSummary, summarize_repeats
from epcache.probe.results.rows import (
    RESULTS_FILE,
    format_summary,
    read_results,
    repair_results,
    write_json,
    write_text,
)
from epcache.probe.rundir import remove_stale_checkpoints, run_dir_lock
from epcache.probe.solvers import SolverSpec, run_solver_configs
from epcache.probe.sweep.grid import resolve_request
from epcache.probe.train.group import GroupRunner, checkpoint_path
from epcache.probe.train.progress import SweepProgress
from epcache.store import ChunkCache, FeatureStore, open_store
from epcache.store.layout.taps import BLOCK
from epcache.store.verify.integrity import check_for_probe

__all__ = ["ProbeResult", "check_sweep", "probe_store"]

RESUME_HINT = "Finished configs are kept: run the same command again to train the rest"


@dataclass(frozen=True)
class ProbeResult:
    """What a sweep produced."""

    rows: tuple[dict[str, Any], ...]  # one results row per config of the sweep, sweep order (repeat by repeat)
    best: dict[str, Any] | None  # best row of the best seed group (the summary's ranking); None without a holdout;
    # with repeats: the first repeat's (each repeat's is in ``repeats.selected``)
    summary: str  # the summary table (also RUNDIR/summary.txt)
    out: Path | None  # the run directory, if one was written
    skipped: tuple[str, ...]  # ids already finished in the run directory (not retrained)
    notes: tuple[str, ...]  # the plan, what the recipe adapted, and data notes (the CLI prints them)
    repeats: RepeatSummary | None = None  # --repeats N > 1: each repeat's selected config and their mean ± std


def probe_store(config: ProbeConfig, *, progress: bool = True) -> ProbeResult:
    """Train and evaluate every config of a sweep from a feature store.

    Args:
        config: the sweep (see :class:`ProbeConfig`); its grid file is applied once, by the plan.
        progress: show the plan, notes and a sweep-level progress bar with ETA on stderr (without
            it nothing is printed; ``ProbeResult.notes`` holds the plan and notes).

    Returns:
        The rows (also in ``RUNDIR/results.jsonl``), the best config and a summary table.

    Raises:
        StoreNotFoundError: the store (or eval store) does not exist.
        UnknownSplitError: train or eval split missing.
        UnknownLayerError: a requested layer is not stored.
        ConfigError: invalid sweep (all problems in one message: unknown heads, an explicit batch
            larger than the training set, non-finite lrs, ...), empty split, unusable device.
        CorruptStoreError: labels outside the class list.
        IncompleteStoreError: blocks never written (unless ``allow_incomplete``).
        ProvenanceMismatchError: ``eval_store`` comes from another backbone or preprocessing.
        StoreLockedError: another sweep (of the same shard) is running into ``config.run.out``.
    """
    action = f"epcache probe into {config.run.out}" if config.run.out else "epcache probe"
    shard = resolve_shard(config.run.shard)
    # one sweep per run directory (and shard) at a time
    with os_errors(action=action, resume_hint=RESUME_HINT), run_dir_lock(config.run.out, shard=shard):
        return _probe_locked(config, progress)


def check_sweep(config: ProbeConfig) -> None:
    """Plan the sweep (every repeat) and train nothing: a series checks every member's plan before the first trains.

    Raises:
        EpcacheError: whatever :func:`probe_store` would refuse before its first step.
    """
    tap, checked = _tap(config), not config.inputs.trust_store
    store = _open(config.store, tap, checked)
    eval_store = _open(config.inputs.eval_store, tap, checked) if config.inputs.eval_store else store
    try:
        for i in range(resolve_request(config).config.data.repeats):
            plan_sweep(config, store, eval_store, repeat=i)
    finally:
        if eval_store is not store:
            eval_store.close()
        store.close()


def _probe_locked(config: ProbeConfig, progress: bool) -> ProbeResult:
    say = _printer(progress)
    checked = not config.inputs.trust_store  # never train on bytes, labels, ids or metadata changed since extraction
    cache = None  # copies of remote chunks; never changes a byte read (store/read/chunkcache.py)
    if config.inputs.cache_dir is not None:
        max_bytes = None if config.inputs.cache_max_gb is None else int(config.inputs.cache_max_gb * 1e9)
        cache = ChunkCache(config.inputs.cache_dir, max_bytes=max_bytes, say=say)  # one note if an entry is rejected
    anchors = read_anchors(config.run.check_anchor) if config.run.check_anchor is not None else ()  # before any read
    tap = _tap(config)
    store = _open(config.store, tap, checked)
    eval_store = _open(config.inputs.eval_store, tap, checked) if config.inputs.eval_store else store
    store.chunk_cache = eval_store.chunk_cache = cache
    try:
        inputs = config.inputs
        for warning in check_for_probe(store, eval_store, inputs.train_split, inputs.eval_split, inputs.trust_store):
            print(f"warning: {warning}", file=sys.stderr)
        dense = plan_dense(config, store, eval_store)  # dense heads split off, masks and grid checked: no work yet
        if dense is not None and dense.rest is None:
            return _with_dense(None, dense, config, store, eval_store, say)
        sweep = config if dense is None else dense.rest
        assert sweep is not None
        repeats = resolve_request(sweep).config.data.repeats  # a grid file's top level may set it
        plans = [plan_sweep(sweep, store, eval_store, repeat=i) for i in range(repeats)]  # all checked before training
        _check_repeats(plans[0])
        with cpu_threads(plans[0].device) as rule:
            results = [_run(plan, store, eval_store, say, progress, rule, anchors) for plan in plans]
        result = results[0] if len(plans) == 1 else _combine(plans, results)
        return result if dense is None else _with_dense(result, dense, config, store, eval_store, say)
    finally:
        if eval_store is not store:
            eval_store.close()
        store.close()


# ---------------------------------------------------------------------------------------------- the run


def _run(
    plan: SweepPlan,
    store: FeatureStore,
    eval_store: FeatureStore,
    say: Callable[[str], None],
    progress: bool,
    threads_rule: str,
    anchors: Sequence[Anchor] = (),
) -> ProbeResult:
    for note in plan.notes:
        say(note)
    if plan.shard_note is not None:
        say(plan.shard_note)
        if not plan.runs and not plan.specs:
            return ProbeResult(rows=(), best=None, summary="no configs in this shard", out=None, skipped=(),
                               notes=plan.notes)
    configs = [*plan.runs, *plan.specs]
    out = plan.out
    finished = _prepare_rundir(plan)
    skipped = tuple(r.id for r in configs if r.id in finished)
    if skipped:
        say(f"{len(skipped)} of {len(configs)} configs already finished in {out}; skipping them")
    if any(r.tokens == "pooled" for r in plan.runs):  # the eval split needs the pooled array as well
        for st, split in ((store, plan.config.inputs.train_split), (eval_store, plan.config.inputs.eval_split)):
            st.require_pooled(split)
    todo = _todo(plan, finished)
    pending = [s for s in plan.specs if s.id not in finished]
    new_rows: dict[str, dict[str, Any]] = {}
    total_steps = plan.protocol.total_steps if plan.protocol else 0
    bar = SweepProgress(len(todo) * total_steps, enabled=progress and bool(todo),
                        desc=f"probe: {sum(len(t) for _, t in todo)} configs, {len(todo)} groups")
    said: set[str] = set()  # notes the groups print once per sweep

    def train(work: Sequence[tuple[PlannedGroup, list[Any]]], held: list[Callable[[], None]] | None) -> None:
        for group, runs in work:
            runner = GroupRunner(plan, group, store, eval_store, say=say, bar=bar, threads_rule=threads_rule,
                                 said=said, held=held)
            for row in runner.run(runs, finished):
                new_rows[row["id"]] = dict(row)

    def fit(specs: Sequence[SolverSpec], held: list[Callable[[], None]] | None) -> None:
        if specs:  # solver heads: one pooled pass per layer, then closed form / L-BFGS per spec
            for row in run_solver_configs(specs, store=store, eval_store=eval_store, data=plan.solver_data,
                                          num_classes=plan.num_classes, device=plan.device, out=out,
                                          results_file=plan.results_file, save_heads=plan.config.run.save_heads,
                                          say=say, held=held,
                                          protocol=suite_record(plan.config, plan.repeat),
                                          trust_store=plan.config.inputs.trust_store):
                new_rows[row["id"]] = row

    with bar:
        # --check-anchor: the anchored configs first, their writes held until their numbers pass (results/anchor.py)
        names = {a.config for a in anchors if a.store_provenance == store.provenance}
        first = [(g, r) for g, r in todo if any(anchor_name(x.name) in names for x in g.runs)]
        first_specs = [s for s in pending if anchor_name(s.name) in names]
        if anchors:
            held: list[Callable[[], None]] = []
            train(first, held)
            fit(first_specs, held)
            path = str(plan.config.run.check_anchor)
            warnings = check_rows(anchors, [*finished.values(), *new_rows.values()], path=path)
            for warning in warnings:
                print(f"warning: {warning}", file=sys.stderr)
            say(f"--check-anchor: {len(anchors) - len(warnings)} of {len(anchors)} anchor(s) matched, all within "
                f"tolerance ({path})")
            for write in held:
                write()
        train([t for t in todo if t not in first], None)
    fit([s for s in pending if s not in first_specs], None)
    rows = tuple(new_rows.get(r.id) or finished[r.id] for r in configs)
    selects = len(plan.data.holdout_rows) or plan.data.folds or plan.selection.folds  # a holdout or cv ranks them
    best = best_row(rank_rows(rows)[0]) if selects else None  # the summary's best
    summary = format_summary(rows)
    if out is not None:
        write_text(out / f"summary{plan.suffix}.txt", summary + "\n")  # atomic: a full disk leaves no cut summary
    return ProbeResult(rows=rows, best=best, summary=summary, out=out, skipped=skipped, notes=plan.notes)


def _tap(config: ProbeConfig) -> str:
    """The tap the sweep reads, a grid file applied: its tables share it (``check_shared``), so the first says it."""
    return resolve_request(config).blocks[0].inputs.tap


def _open(location: str, tap: str, checked: bool) -> FeatureStore:
    """The store the heads read: ``location`` itself for ``block``, else its tap, a complete store of its own."""
    return open_store(location, verify_reads=checked, tap=None if tap == BLOCK else tap)


def _with_dense(result: ProbeResult | None, dense: DensePlan, config: ProbeConfig, store: FeatureStore,
                eval_store: FeatureStore, say: Callable[[str], None]) -> ProbeResult:
    """Fit the dense rows not finished in the run directory, after the classification sweep, into one result."""
    say(dense.note)
    out = Path(config.run.out) if config.run.out else None
    finished: dict[str, dict[str, Any]] = {}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        repair_results(out / RESULTS_FILE)
        for f in sorted(out.glob("results*.jsonl")):
            for row in read_results(f):
                finished.setdefault(row["id"], row)
    skipped = tuple(s.id for s in dense.specs if s.id in finished)
    if skipped:
        say(f"{len(skipped)} of {len(dense.specs)} dense configs already finished in {out}; skipping them")
    new = run_dense_specs(dense, [s for s in dense.specs if s.id not in finished], store=store, eval_store=eval_store,
                          train_split=config.inputs.train_split, eval_split=config.inputs.eval_split, out=out,
                          results_file=RESULTS_FILE, say=say)
    fresh = {r["id"]: r for r in new}
    dense_rows = tuple(fresh.get(s.id) or finished[s.id] for s in dense.specs)
    rows = (result.rows if result else ()) + dense_rows
    summary = format_summary(rows)
    if out is not None:
        write_text(out / "summary.txt", summary + "\n")
    best = result.best if result and result.best else best_row(rank_rows(dense_rows)[0])
    notes = (*(result.notes if result else ()), dense.note)
    return ProbeResult(rows=rows, best=best, summary=summary, out=out, skipped=(*(result.skipped if result else ()),
                       *skipped), notes=notes, repeats=result.repeats if result else None)


def _check_repeats(plan: SweepPlan) -> None:
    """Refuse repeats that would give the same numbers N times: nothing of the sweep depends on the data seed."""
    d = plan.solver_data
    if plan.config.data.repeats == 1 or plan.runs or len(d.holdout_rows) or d.folds or plan.selection.folds:
        return  # trained heads: batch order; a holdout or folds: the rows that select
    if plan.config.data.fraction is not None or any(s.shots is not None for s in plan.specs):
        return  # few-shot draws
    raise ConfigError(
        f"--repeats {plan.config.data.repeats} would repeat identical numbers: these solver heads fit every train "
        "row with no holdout, cross-validation folds or few-shot draw, so the data seed changes nothing. Add "
        "--holdout FRAC, --select cvK or --shots K, or drop --repeats"
    )


def _combine(plans: list[SweepPlan], results: list[ProbeResult]) -> ProbeResult:
    """One result of every repeat: all rows, and the mean ± std of each repeat's own selected config."""
    first = plans[0]
    rows, skipped = tuple(r for res in results for r in res.rows), tuple(i for res in results for i in res.skipped)
    notes = tuple(n for res in results for n in res.notes)
    if not all(res.rows for res in results):  # a shard with no configs of this sweep: nothing was selected
        return ProbeResult(rows=rows, best=None, summary=results[0].summary, out=None, skipped=skipped, notes=notes)
    repeats = summarize_repeats([r.rows for r in results], [p.config.data.data_seed for p in plans])
    shard = "" if first.shard is None else f".shard-{first.shard[0]}-of-{first.shard[1]}"
    summary = repeats.text()
    if first.out is not None:
        summary += f"\neach repeat's own table: {first.out / f'summary{shard}.repeat-R.txt'}"
        write_text(first.out / f"summary{shard}.txt", summary + "\n")
    return ProbeResult(rows=rows, best=results[0].best, summary=summary, out=first.out, skipped=skipped, notes=notes,
                       repeats=repeats)


def _todo(plan: SweepPlan, finished: dict[str, dict[str, Any]]) -> list[tuple[PlannedGroup, list[Any]]]:
    """The groups with configs left to train, each with the configs it trains."""
    todo = []
    for group in plan.groups:
        members = list(group.runs)
        left = [r for r in members if r.id not in finished]
        if left and len(left) < len(members) and plan.out is not None and checkpoint_path(plan.out, members).is_file():
            left = members  # killed between its rows: resume the whole stack from its checkpoint
        if left:
            todo.append((group, left))
    return todo


def _prepare_rundir(plan: SweepPlan) -> dict[str, dict[str, Any]]:
    """Create the run directory, write the plan, and return the rows of configs already finished in it (any shard)."""
    finished: dict[str, dict[str, Any]] = {}
    out = plan.out
    if out is None:
        return finished
    (out / "heads").mkdir(parents=True, exist_ok=True)
    (out / "ckpt").mkdir(parents=True, exist_ok=True)
    repair_results(out / plan.results_file)
    for f in sorted(out.glob("results*.jsonl")):  # rows of other shards count as finished too
        for row in read_results(f):
            finished.setdefault(row["id"], row)
    remove_stale_checkpoints(out, set(finished))  # a sweep killed after its rows, before their deletion
    configs = [*plan.runs, *plan.specs]
    write_json(
        out / f"config{plan.suffix}.json",
        {
            "config": plan.config.to_json(),
            "settings": configs[0].settings.to_json(),  # trained runs first, else the first solver spec
            "runs": [{"id": r.id, "name": r.name, **r.hyperparameters()} for r in configs],
            "notes": list(plan.notes),
        },
    )
    write_json(out / f"plan{plan.suffix}.json", plan.to_json())
    return finished


def _printer(progress: bool) -> Callable[[str], None]:
    def say(msg: str) -> None:
        if progress:
            from tqdm import tqdm

            tqdm.write(msg, file=sys.stderr)

    return say
