"""``probe_store(config)``: the library entry point behind ``epcache probe``.

Order of work: open the stores and check everything a user can get wrong (splits, layers,
labels, completeness, compatibility of a separate eval store, the whole sweep grid, the holdout)
before a single step is trained; then train each input group (one layer) in one fused pass per
epoch, checkpointing after every epoch; then write one results row and one head file per config.
Re-running into the same run directory skips finished configs and resumes a killed group at its
last completed epoch with the same numbers it would have produced uninterrupted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from epcache.errors import ConfigError, UnknownLayerError
from epcache.probe.data.rows import RunData, check_compatible, resolve_rows
from epcache.probe.results.ranking import group_by_seed, rank
from epcache.probe.results.rows import (
    RESULTS_FILE,
    format_summary,
    read_results,
    repair_results,
    write_json,
    write_text,
)
from epcache.probe.solvers import check_solver_inputs, plan_block_solvers, run_solver_configs
from epcache.probe.sweep.checks import check_two_classes, resolve_layers
from epcache.probe.sweep.config import ProbeConfig
from epcache.probe.sweep.grid import RunSpec, SweepRequest, expand_sweep, raise_errors, resolve_request, sweep_layers
from epcache.probe.train.geometry import HeadGeometry
from epcache.probe.train.group import GroupRunner, checkpoint_path
from epcache.probe.train.progress import SweepProgress
from epcache.probe.train.protocol import Protocol, resolve_holdout
from epcache.probe.train.recipes import get_recipe
from epcache.store import ChunkCache, FeatureStore, check_for_probe, open_store
from epcache.store.files import os_errors, remove_stale_checkpoints, run_dir_lock

__all__ = ["ProbeResult", "probe_store", "resolve_device", "resolve_shard"]

_TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}
RESUME_HINT = "Finished configs are kept: run the same command again to train the rest"


@dataclass(frozen=True)
class ProbeResult:
    """What a sweep produced."""

    rows: tuple[dict[str, Any], ...]  # one results row per config of the sweep, sweep order
    best: dict[str, Any] | None  # best row of the best seed group (the summary's ranking); None without a holdout
    summary: str  # the summary table (also RUNDIR/summary.txt)
    out: Path | None  # the run directory, if one was written
    skipped: tuple[str, ...]  # ids already finished in the run directory (not retrained)
    notes: tuple[str, ...]  # the plan, what the recipe adapted, and data notes (the CLI prints them)


def probe_store(config: ProbeConfig, *, progress: bool = True) -> ProbeResult:
    """Train and evaluate every config of a sweep from a feature store.

    Args:
        config: the sweep (see :class:`ProbeConfig`); its grid file is applied once here.
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
        StoreLockedError: another sweep (of the same shard) is running into ``config.out``.
    """
    action = f"epcache probe into {config.out}" if config.out else "epcache probe"
    shard = resolve_shard(config.shard)
    with os_errors(action=action, resume_hint=RESUME_HINT), run_dir_lock(config.out, shard=shard):  # one sweep per dir
        return _probe_locked(config, progress)


def _probe_locked(config: ProbeConfig, progress: bool) -> ProbeResult:
    say = _printer(progress)
    checked = not config.trust_store  # never train on bytes, labels, ids or metadata that changed since extraction
    cache = None  # copies of remote chunks; never changes a byte read (store/_chunkcache.py)
    if config.cache_dir is not None:
        max_bytes = None if config.cache_max_gb is None else int(config.cache_max_gb * 1e9)
        cache = ChunkCache(config.cache_dir, max_bytes=max_bytes, say=say)  # one note if an entry is rejected
    store = open_store(config.store, verify_reads=checked)
    eval_store = open_store(config.eval_store, verify_reads=checked) if config.eval_store else store
    store.chunk_cache = eval_store.chunk_cache = cache
    try:
        for warning in check_for_probe(store, eval_store, config.train_split, config.eval_split, config.trust_store):
            print(f"warning: {warning}", file=sys.stderr)
        with cpu_threads(resolve_device(config.device)) as rule:
            return _probe(config, store, eval_store, say, progress, rule)
    finally:
        if eval_store is not store:
            eval_store.close()
        store.close()


@contextlib.contextmanager
def cpu_threads(device: torch.device) -> Iterator[str]:
    """A torch thread count for small-head CPU work, unless the user chose one; yields the rule used.

    Probe heads are small ops on batches of a few MB: with as many OpenMP threads as cores, the
    reader thread and OpenMP spin-waiting compete for the cores (measured on a 2-core VM: small ops
    ~100x slower with 2 threads than with 1). So when neither ``OMP_NUM_THREADS`` nor
    ``torch.set_num_threads`` chose a count (torch still at one thread per available core), the
    sweep uses one core fewer than available, leaving one for the reader, and restores the count
    afterwards. The rule is recorded in every row's ``timing``.
    """
    n = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if device.type != "cpu" or "OMP_NUM_THREADS" in os.environ or n != cores or cores < 2:
        yield f"{n} (as set: OMP_NUM_THREADS or torch.set_num_threads, or a GPU run)"
        return
    torch.set_num_threads(cores - 1)
    try:
        yield f"{cores - 1} (epcache: one core fewer than the {cores} available, for the reader thread)"
    finally:
        torch.set_num_threads(n)


def resolve_shard(spec: str | None) -> tuple[int, int] | None:
    """``"I/N"`` -> ``(I, N)``; without a spec, torchrun's ``RANK``/``WORLD_SIZE`` when ``WORLD_SIZE > 1``.

    Each shard trains every N-th config (by id), streams the store itself and appends to its own
    ``results.shard-I-of-N.jsonl``, so shards never write the same file; `epcache report` reads
    the union. A config gives the same numbers alone or in any sweep, so the union of the shards
    equals the unsharded sweep.

    Raises:
        ConfigError: a malformed spec or I outside 0..N-1.
    """
    import os

    if spec is None:
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        return (int(os.environ.get("RANK", "0")), world) if world > 1 else None
    try:
        index, count = (int(x) for x in spec.split("/"))
    except ValueError:
        raise ConfigError(f"--shard takes I/N with integers, e.g. 0/4, got {spec!r}") from None
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"--shard {spec}: I must be in 0..N-1 (e.g. 0/{max(count, 1)})")
    return index, count


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU.

    Raises:
        ConfigError: unknown device, or CUDA requested without one.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    return device


# ---------------------------------------------------------------------------------------------- the run


def _probe(
    config: ProbeConfig,
    store: FeatureStore,
    eval_store: FeatureStore,
    say: Callable[[str], None],
    progress: bool,
    threads_rule: str,
) -> ProbeResult:
    request = resolve_request(config)  # the grid file is applied here, once; everything below reads `c`
    c = request.config
    train_meta = store.split(c.train_split)
    eval_meta = eval_store.split(c.eval_split)
    if eval_store is not store:
        check_compatible(store, eval_store)
    if tuple(train_meta.classes) != tuple(eval_meta.classes):
        raise ConfigError(
            f"split {c.train_split!r} has {len(train_meta.classes)} classes and {c.eval_split!r} has "
            f"{len(eval_meta.classes)}, or they are in another order; labels would mean different classes. "
            "Extract both splits with the same class list"
        )
    num_classes = len(train_meta.classes)
    errors: list[str] = []
    recipe = get_recipe(c.recipe)
    holdout = resolve_holdout(c.holdout, recipe, errors)
    raise_errors(errors)
    layers = sweep_layers(request, store.meta)
    # solver heads (knn, ridge, logreg, ncm), of the config or of any [[grid]] table, become solver specs;
    # the trained heads of every block stay in the sweep
    c, knn_note = _cap_default_k(c, store, eval_store, layers, num_classes, holdout)
    capped = [_cap_default_k(b, store, eval_store, layers, num_classes, holdout) for b in request.blocks]
    knn_note = knn_note or next((note for _, note in capped if note), None)
    trained, specs = plan_block_solvers(
        [b for b, _ in capped], store.meta, layers_of=lambda b: resolve_layers(b.layers, store.meta), holdout=holdout,
        store_provenance=store.provenance, eval_provenance=eval_store.provenance,
    )
    if specs:
        if not trained:
            request, c = None, dataclasses.replace(c, shots=None)  # type: ignore[assignment]
        elif request.config.grid is None:
            request, c = SweepRequest(trained[0], (trained[0],)), trained[0]
        else:  # the base settles the shared protocol; the tables' trained heads run as given
            c = dataclasses.replace(c, head=trained[0].head, shots=trained[0].shots)
            request = SweepRequest(c, tuple(trained))
    for layer in layers:
        if layer not in eval_store.meta.layers:
            raise UnknownLayerError(f"eval store {eval_store.location} has no layer {layer}")
    data = resolve_rows(c, store, eval_store, layers, num_classes, holdout=holdout)
    solver_data = data  # solver heads draw their own few-shot subsets from the rows outside the holdout
    if specs and c.shots is not None:
        solver_data = resolve_rows(dataclasses.replace(c, shots=None), store, eval_store, layers, num_classes,
                                   holdout=holdout)
    check_solver_inputs(specs, solver_data, num_classes)  # k vs bank, classes: before any training
    runs: list[RunSpec] = []
    if request is not None:
        runs = expand_sweep(request, store.meta, num_classes=num_classes, store_provenance=store.provenance,
                            eval_provenance=eval_store.provenance, n_train=len(data.train_rows), errors=errors)
    raise_errors(errors)
    if runs:  # a one-class training set would train and report 100%: refused as solver heads refuse it
        check_two_classes(data.train_labels, data.train_rows, num_classes)
    if not runs and not specs:
        raise ConfigError("the sweep is empty: no head/layer/lr combination was requested")
    protocol = runs[0].settings.protocol if runs else None
    notes = [_plan_line(runs, specs, layers, data, protocol), *data.notes,
             f"store {store.location}: format {store.format_version}, provenance {store.provenance} (as stored)"]
    if knn_note:
        notes.insert(1, knn_note)
    if runs and (runs[0].settings.amp != "none" or c.compile):
        notes.insert(1, f"precision: amp {runs[0].settings.amp} ({runs[0].settings.amp_rule}; master weights, losses, "
                     f"BatchNorm and MP covariance in float32){', torch.compile on' if c.compile else ''}")
    if protocol is not None and protocol.adapted:
        notes.insert(1, f"recipe {protocol.recipe} adapted to this dataset: " + "; ".join(protocol.adapted))
    for note in notes:
        say(note)
    shard = resolve_shard(c.shard)
    if shard is not None:
        index, count = shard
        ordered = sorted([r.id for r in runs] + [s.id for s in specs])  # independent of how the sweep was spelled
        mine = {i for k, i in enumerate(ordered) if k % count == index}
        runs = [r for r in runs if r.id in mine]
        specs = [s for s in specs if s.id in mine]
        say(f"shard {index}/{count}: {len(runs) + len(specs)} of {len(ordered)} configs")
        if not runs and not specs:
            return ProbeResult(rows=(), best=None, summary="no configs in this shard", out=None, skipped=(),
                               notes=tuple(notes))
    suffix = "" if shard is None else f".shard-{shard[0]}-of-{shard[1]}"
    results_file = RESULTS_FILE if shard is None else f"results{suffix}.jsonl"
    out = Path(c.out) if c.out else None
    finished = _prepare_rundir(out, results_file, suffix, c, [*runs, *specs], notes)
    skipped = tuple(r.id for r in [*runs, *specs] if r.id in finished)
    if skipped:
        say(f"{len(skipped)} of {len(runs) + len(specs)} configs already finished in {out}; skipping them")
    pooled_dim = store.pooled_dim  # issue 15: the optional pooled output
    if any(r.tokens == "pooled" for r in runs):  # the eval split needs the pooled array as well
        for st, split in ((store, c.train_split), (eval_store, c.eval_split)):
            st.require_pooled(split)
    groups: dict[tuple[int, ...], list[RunSpec]] = defaultdict(list)
    for key, members in _by_group(runs).items():
        todo = [r for r in members if r.id not in finished]
        if todo and len(todo) < len(members) and out is not None and checkpoint_path(out, members).is_file():
            todo = members  # killed between its rows: resume the whole stack from its checkpoint
        if todo:
            groups[key] = todo
    new_rows: dict[str, dict[str, Any]] = {}
    bar = SweepProgress(len(groups) * (protocol.total_steps if protocol else 0), enabled=progress and bool(groups),
                        desc=f"probe: {sum(map(len, groups.values()))} configs, {len(groups)} groups")
    said: set[str] = set()  # notes the groups print once per sweep
    with bar:
        for key, group in groups.items():
            lm = store.meta.for_layer(key[0]) if key else store.meta  # a layer's own grid and width (convnets)
            geometry = HeadGeometry(dim=lm.dim, num_classes=num_classes, num_tokens=lm.num_tokens,
                                    num_patches=lm.layout.num_patches, num_prefix=lm.layout.num_prefix,
                                    cls_index=lm.layout.cls_index, num_registers=lm.layout.num_registers,
                                    pooled_dim=pooled_dim)
            runner = GroupRunner(c, store, eval_store, data, geometry, resolve_device(c.device),
                                 _TORCH_DTYPES[c.dtype], out, say, bar, data_batch=runs[0].settings.batch_size,
                                 threads_rule=threads_rule, results_file=results_file, said=said)
            for row in runner.run(group, finished):
                new_rows[row["id"]] = dict(row)
    pending = [s for s in specs if s.id not in finished]
    if pending:  # solver heads: one pooled pass per layer, then closed form / L-BFGS per spec
        for row in run_solver_configs(pending, store=store, eval_store=eval_store, data=solver_data,
                                      num_classes=num_classes, device=resolve_device(c.device), out=out,
                                      results_file=results_file, save_heads=c.save_heads, say=say):
            new_rows[row["id"]] = row
    rows = tuple(new_rows.get(r.id) or finished[r.id] for r in [*runs, *specs])
    best = rank(group_by_seed(rows))[0].rows[0] if len(data.holdout_rows) else None
    summary = format_summary(rows)
    if out is not None:
        write_text(out / f"summary{suffix}.txt", summary + "\n")  # atomic: a full disk leaves no cut summary
    return ProbeResult(rows=rows, best=best, summary=summary, out=out, skipped=skipped, notes=tuple(notes))


def _by_group(runs: list[RunSpec]) -> dict[tuple[int, ...], list[RunSpec]]:
    groups: dict[tuple[int, ...], list[RunSpec]] = defaultdict(list)
    for r in runs:
        groups[r.group_key].append(r)
    return groups


def _cap_default_k(c: ProbeConfig, store: FeatureStore, eval_store: FeatureStore, layers: list[int],
                   num_classes: int, holdout: float) -> tuple[ProbeConfig, str | None]:
    """The default k list (10, 20, 100, 200) capped at the k-NN bank of a small training set, said once.

    An explicit ``--k`` larger than the bank stays an error (``check_solver_inputs``); the default
    must not make a valid command fail, so it keeps the values that fit and adds the bank size.
    """
    default = next(f.default for f in dataclasses.fields(ProbeConfig) if f.name == "k")
    if c.k != default or not any(h.split("(")[0].strip() == "knn" for h in c.head):
        return c, None
    rows = resolve_rows(dataclasses.replace(c, shots=None), store, eval_store, layers, num_classes, holdout=holdout)
    bank = len(rows.train_rows)
    shots = c.shots if isinstance(c.shots, tuple) else (c.shots,) if c.shots else ()
    if shots:
        present = len(np.unique(rows.train_labels[rows.train_rows]))
        bank = min(bank, min(shots) * present)
    if max(default) <= bank:
        return c, None
    ks = tuple(sorted({k for k in default if k <= bank} | {bank}))
    return dataclasses.replace(c, k=ks), f"k-NN: the default k list capped at the bank of {bank} samples: k = {ks}"


def _prepare_rundir(out: Path | None, results_file: str, suffix: str, config: ProbeConfig, runs: list[Any],
                    notes: list[str]) -> dict[str, dict[str, Any]]:
    """Create the run directory and return the rows of configs already finished in it (any shard)."""
    finished: dict[str, dict[str, Any]] = {}
    if out is None:
        return finished
    (out / "heads").mkdir(parents=True, exist_ok=True)
    (out / "ckpt").mkdir(parents=True, exist_ok=True)
    repair_results(out / results_file)
    for f in sorted(out.glob("results*.jsonl")):  # rows of other shards count as finished too
        for row in read_results(f):
            finished.setdefault(row["id"], row)
    remove_stale_checkpoints(out, set(finished))  # a sweep killed after its rows, before their deletion
    write_json(
        out / f"config{suffix}.json",
        {
            "config": config.to_json(),
            "settings": runs[0].settings.to_json(),  # trained runs first, else the first solver spec
            "runs": [{"id": r.id, "name": r.name, **r.hyperparameters()} for r in runs],
            "notes": notes,
        },
    )
    return finished


def _plan_line(runs: list[RunSpec], specs: list[Any], layers: list[int], data: RunData, p: Protocol | None) -> str:
    hold = f"holdout {len(data.holdout_rows)}" if len(data.holdout_rows) else "no holdout"
    solvers = f"{_n(len(specs), 'solver config')} ({', '.join(sorted({s.kind for s in specs}))})" if specs else ""
    if p is None:
        return (f"plan: {solvers} on {_n(len(layers), 'layer')}; train {len(data.train_rows)} / {hold} / "
                f"eval {len(data.eval_rows)}")
    heads = len({(r.head.name, r.tokens) for r in runs})
    return (("plan: " + solvers + " and " if solvers else "plan: ") +
        f"{_n(len(runs), 'config')} ({_n(heads, 'head')} x {_n(len({r.lr for r in runs}), 'lr')}"
        f"{f' x {len(set(r.wd for r in runs))} wd' if len({r.wd for r in runs}) > 1 else ''}) on "
        f"{_n(len(layers), 'layer')}; train {len(data.train_rows)} / {hold} / eval {len(data.eval_rows)}; "
        f"recipe {p.recipe}: batch {p.batch_size}, {p.epochs} epochs x {p.steps_per_epoch} steps = {p.total_steps} "
        f"steps (warm-up {p.warmup_steps})"
    )


def _n(k: int, word: str) -> str:
    return f"{k} {word}{'' if k == 1 else 's'}"


def _printer(progress: bool) -> Callable[[str], None]:
    def say(msg: str) -> None:
        if progress:
            from tqdm import tqdm

            tqdm.write(msg, file=sys.stderr)

    return say
