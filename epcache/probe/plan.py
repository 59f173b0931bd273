"""The plan of one sweep, resolved ONCE before anything is trained: :func:`plan_sweep` -> :class:`SweepPlan`.

Everything a sweep decides from its request and its stores is decided here, in one pass: the grid
file applied, the recipe and holdout resolved, the layers found, the sample rows drawn (one
resolution; the solver heads' shot-free rows are the same draw before its low-shot subset), the
heads split into trained runs and solver specs by their kind in the head registry, the runs
expanded and checked (every problem in one message), this shard's subset taken, the notes written
and each input group's geometry read. The run then only executes the plan, and writes it to the
run directory (``plan.json``) exactly as it ran.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from epcache._text import plural
from epcache.errors import ConfigError, UnknownLayerError
from epcache.probe.config.probe_config import ProbeConfig, SolverConfig
from epcache.probe.config.protocol import Protocol, lr_text, regime_verdict, resolve_holdout
from epcache.probe.config.recipes import get_recipe
from epcache.probe.config.runspec import RunSpec
from epcache.probe.config.suite import suite_config, suite_text
from epcache.probe.data.folds import CV_BELOW, Selection, parse_select, stratified_folds
from epcache.probe.data.layers import group_label
from epcache.probe.data.samples import RunData, check_class_maps, check_compatible, resolve_rows
from epcache.probe.device import TORCH_DTYPES, resolve_device, resolve_shard
from epcache.probe.heads import head_kind
from epcache.probe.results.rows import RESULTS_FILE
from epcache.probe.solvers import SolverSpec, check_solver_inputs, linear_family_note, plan_block_solvers
from epcache.probe.sweep.checks import check_two_classes, resolve_layers, split_head
from epcache.probe.sweep.geometry import HeadGeometry
from epcache.probe.sweep.grid import SweepRequest, expand_sweep, raise_errors, resolve_request, sweep_layers
from epcache.store import FeatureStore
from epcache.store.layout.taps import BLOCK, tap_name

__all__ = ["PlannedGroup", "SweepPlan", "plan_sweep", "rows_record"]

HOLDOUT = Selection("holdout", 0, "the holdout selects")


@dataclass(frozen=True)
class PlannedGroup:
    """One input group of this shard: configs reading the same layers, trained in one fused pass."""

    key: tuple[int, ...]  # the layers read (``()``: the store's pooled output)
    runs: tuple[RunSpec, ...]  # sweep order
    geometry: HeadGeometry  # width, classes and token layout of that input

    @property
    def label(self) -> str:
        return group_label(self.runs)


@dataclass(frozen=True)
class SweepPlan:
    """Everything one sweep runs, resolved once; every later step reads only this."""

    config: ProbeConfig  # resolved: grid file applied, the trained heads' head list and shots, default k capped
    protocol: Protocol | None  # the trained runs' protocol (None: solver heads only)
    layers: tuple[int, ...]  # every layer the sweep reads, first-requested order
    num_classes: int
    data: RunData  # the rows the trained heads train, select and score on
    solver_data: RunData  # the same draw before its low-shot subset: what solver heads fit and draw shots from
    runs: tuple[RunSpec, ...]  # this shard's trained configs, sweep order
    specs: tuple[SolverSpec, ...]  # this shard's solver configs, sweep order
    groups: tuple[PlannedGroup, ...]  # this shard's trained configs by input group
    total: int  # configs of the whole sweep, every shard
    shard: tuple[int, int] | None  # (I, N), or None: the whole sweep
    device: torch.device
    notes: tuple[str, ...]  # the plan line, recipe adaptations, k cap, precision, data notes, store
    selection: Selection = HOLDOUT  # how trained configs choose their epoch, and why
    repeat: int = 0  # which of the ``repeats`` runs of the sweep (its data seed is the config's data_seed)

    @property
    def dtype(self) -> torch.dtype:
        return TORCH_DTYPES[self.config.run.dtype]

    @property
    def out(self) -> Path | None:
        return Path(self.config.run.out) if self.config.run.out else None

    @property
    def suffix(self) -> str:
        """``""``, ``.shard-I-of-N`` and/or ``.repeat-R``: every file one shard (of one repeat) writes carries it."""
        shard = "" if self.shard is None else f".shard-{self.shard[0]}-of-{self.shard[1]}"
        return shard + (f".repeat-{self.repeat}" if self.config.data.repeats > 1 else "")

    @property
    def results_file(self) -> str:
        return RESULTS_FILE if self.shard is None else f"results.shard-{self.shard[0]}-of-{self.shard[1]}.jsonl"

    @property
    def shard_note(self) -> str | None:
        if self.shard is None:
            return None
        return f"shard {self.shard[0]}/{self.shard[1]}: {len(self.runs) + len(self.specs)} of {self.total} configs"

    def to_json(self) -> dict[str, Any]:
        """The plan as it runs: per trained config its schedule and rows, per solver spec its settings."""
        trained_rows = rows_record(self.data)
        p = self.protocol
        return {
            "config": self.config.to_json(),
            "layers": list(self.layers),
            "num_classes": self.num_classes,
            "device": str(self.device),
            "shard": None if self.shard is None else list(self.shard),
            "configs_in_sweep": self.total,
            "protocol": None if p is None else p.to_json(),
            "selection": dataclasses.asdict(self.selection),
            "trained": [
                {
                    "id": r.id,
                    "name": r.name,
                    **r.hyperparameters(),
                    "group": group_label([r]),
                    "steps": r.settings.protocol.total_steps,
                    "batch": r.settings.protocol.batch_size,
                    "epochs": r.settings.protocol.epochs,
                    "warmup": r.settings.protocol.warmup_steps,
                    "steps_per_epoch": r.settings.protocol.steps_per_epoch,
                    "passes_per_epoch": r.settings.protocol.passes_per_epoch,
                    "amp": r.settings.amp,
                    "dtype": r.settings.dtype,
                    "rows": trained_rows,
                }
                for r in self.runs
            ],
            "solvers": [
                {"id": s.id, "name": s.name, **s.hyperparameters(), "settings": s.settings.to_json(),
                 "rows": rows_record(self.solver_data)}
                for s in self.specs
            ],
            "groups": [
                {"label": g.label, "layers": list(g.key), "configs": [r.id for r in g.runs],
                 "geometry": dataclasses.asdict(g.geometry)}
                for g in self.groups
            ],
            "notes": list(self.notes),
        }


def rows_record(data: RunData) -> dict[str, Any]:
    """Counts and sha256 of the stored-row indices of each role: two runs drew the same rows iff these match."""
    roles = {"train": data.train_rows, "holdout": data.holdout_rows, "eval": data.eval_rows}
    roles |= {f"fold{i}": rows for i, rows in enumerate(data.folds)}  # cross-validation only
    return {
        **{role: len(rows) for role, rows in roles.items()},
        "sha256": {role: hashlib.sha256(np.ascontiguousarray(rows, "<i8").tobytes()).hexdigest()
                   for role, rows in roles.items()},
    }


def plan_sweep(config: ProbeConfig, store: FeatureStore, eval_store: FeatureStore, *, repeat: int = 0) -> SweepPlan:
    """Resolve a sweep (repeat ``repeat`` of its ``repeats``, with its preset applied) once; nothing is trained.

    Raises:
        UnknownSplitError, UnknownLayerError, ConfigError, CorruptStoreError, IncompleteStoreError,
        ProvenanceMismatchError: as :func:`epcache.probe.probe` documents them, all before any training.
    """
    request = resolve_request(config)  # the grid file is applied here, once; then the preset and repeat's data seed
    request = SweepRequest(suite_config(request.config, repeat), tuple(suite_config(b, repeat) for b in request.blocks))
    c = request.config
    num_classes = _check_splits(c, store, eval_store)
    errors: list[str] = []
    holdout = resolve_holdout(c.data.holdout, get_recipe(c.optim.recipe), errors)
    raise_errors(errors)
    kind, k = parse_select(c.data.select)
    if kind == "cv" and not c.data.refit:
        raise ConfigError(f"--select cv{k} needs the refit (the folds' models each miss a fold): drop --no-refit, "
                          "or use --select holdout to keep the selection model")
    layers = sweep_layers(request, store.meta)
    for layer in layers:
        if layer not in eval_store.meta.layers:
            raise UnknownLayerError(f"eval store {eval_store.location} has no layer {layer}")
    # one draw of the rows: trained heads take its low-shot subset, solver heads the rows before it
    trains = any(head_kind(h) != "solver" for b in request.blocks for h in b.heads.head)
    shots = c.data.shots if trains and not isinstance(c.data.shots, tuple) else None  # several: solver heads only
    drawn = c if c.data.shots == shots else dataclasses.replace(c, shots=shots)
    data = resolve_rows(drawn, store, eval_store, layers, num_classes, holdout=holdout)
    solver_data = data.shot_free() if shots is not None else data
    # one rule for trained and solver heads; cvK / none: every usable row fits, the folds (or nothing) select
    selection, every = _select_rows(c, drawn, kind, k, data, store, eval_store, layers, num_classes)
    if selection.rule != "holdout":
        data, solver_data = every, dataclasses.replace(every.shot_free(), folds=()) if shots is not None else every
    bank = _knn_bank(solver_data, c.data.shots, selection.folds)
    c, knn_note = _cap_default_k(c, bank)
    capped = [_cap_default_k(b, bank) for b in request.blocks]
    knn_note = knn_note or next((note for _, note in capped if note), None)
    trained, specs = plan_block_solvers(
        [b for b, _ in capped], store.meta, layers_of=lambda b: resolve_layers(b.inputs.layers, store.meta),
        holdout=holdout if selection.rule == "holdout" else 0.0, selection=selection.rule,
        store_provenance=store.provenance, eval_provenance=eval_store.provenance,
    )
    trained_request: SweepRequest | None = request
    if specs:
        if not trained:
            trained_request, c = None, dataclasses.replace(c, shots=None)
        elif request.config.grid is None:
            trained_request, c = SweepRequest(trained[0], (trained[0],)), trained[0]
        else:  # the base settles the shared protocol; the tables' trained heads run as given
            c = dataclasses.replace(c, head=trained[0].heads.head, shots=trained[0].data.shots)
            trained_request = SweepRequest(c, tuple(trained))
    check_solver_inputs(specs, solver_data, num_classes)  # k vs bank, classes: before any training
    runs: list[RunSpec] = []
    if trained_request is not None:
        n_train = len(data.train_rows) - max((len(f) for f in data.folds), default=0)  # a fold's training part
        runs = expand_sweep(trained_request, store.meta, num_classes=num_classes, store_provenance=store.provenance,
                            eval_provenance=eval_store.provenance, n_train=n_train, errors=errors,
                            selection=selection.rule)
    raise_errors(errors)
    if runs:  # a one-class training set would train and report 100%: refused as solver heads refuse it
        check_two_classes(data.train_labels, data.train_rows, num_classes)
    if not runs and not specs:
        raise ConfigError("the sweep is empty: no head/layer/lr combination was requested")
    protocol = runs[0].settings.protocol if runs else None
    verdict = None if protocol is None else regime_verdict(c, get_recipe(protocol.recipe), protocol)
    if verdict is not None and verdict.refuse:
        raise ConfigError(verdict.line)
    notes = _notes(c, runs, specs, layers, data, protocol, knn_note, store)
    family_note = linear_family_note(request.config, specs)
    if family_note:
        notes.insert(1, family_note)
    if verdict is not None:
        notes.insert(1, verdict.line)
    if runs or selection.rule != "holdout":
        notes.insert(1, selection.note())
    shard = resolve_shard(c.run.shard)
    total = len(runs) + len(specs)
    if shard is not None:
        index, count = shard
        ordered = sorted([r.id for r in runs] + [s.id for s in specs])  # independent of how the sweep was spelled
        mine = {i for k, i in enumerate(ordered) if k % count == index}
        runs = [r for r in runs if r.id in mine]
        specs = [s for s in specs if s.id in mine]
    return SweepPlan(
        config=c, protocol=protocol, layers=tuple(layers), num_classes=num_classes, data=data,
        solver_data=solver_data, runs=tuple(runs), specs=tuple(specs),
        groups=_groups(runs, store, num_classes), total=total, shard=shard, device=resolve_device(c.run.device),
        notes=tuple(notes), selection=selection, repeat=repeat,
    )


def _select_rows(c: ProbeConfig, drawn: ProbeConfig, kind: str, k: int, data: RunData, store: FeatureStore,
                 eval_store: FeatureStore, layers: Sequence[int], num_classes: int) -> tuple[Selection, RunData]:
    """The selection rule (``select``, resolved once) and the trained heads' rows it needs.

    auto: an explicit holdout (or --no-refit) keeps the holdout; few-shot sets are cross-validated with as
    many folds as their smallest class allows (at most 5; one sample: no selection); under
    :data:`CV_BELOW` usable rows, cv5.
    """
    if kind == "holdout" or (kind == "auto" and c.data.holdout is not None):
        why = "--select holdout" if kind == "holdout" else "--holdout given"
        return Selection("holdout", 0, f"--protocol {c.data.protocol}" if c.data.protocol != "none" else why), data
    if kind == "auto" and not c.data.refit:  # cross-validation ends in a refit; the selection model needs a holdout
        return Selection("holdout", 0, "auto: --no-refit keeps the selection model"), data
    every = resolve_rows(drawn, store, eval_store, layers, num_classes, holdout=0.0)  # every usable row trains
    n = len(every.train_rows)
    if drawn.data.shots is None and c.data.shots is not None:  # solver draws only: each has its own folds
        k = k if kind == "cv" else 5
        return Selection(f"cv{k}", k, f"{'--select' if kind == 'cv' else 'auto: few-shot,'} cv{k} within each "
                         "draw's shots (fewer folds where a class has fewer shots)"), every
    if kind == "cv":
        selection = Selection(f"cv{k}", k, f"--select cv{k}")
    elif drawn.data.shots is not None or drawn.data.fraction is not None:
        smallest = int(np.bincount(every.train_labels[every.train_rows])[np.unique(
            every.train_labels[every.train_rows])].min())
        if smallest < 2:
            return Selection("none", 0, "few-shot with a single sample in a class: no selection possible"), every
        k = min(5, smallest)
        selection = Selection(f"cv{k}", k, f"auto: few-shot, smallest class {smallest}")
    elif n < CV_BELOW:
        selection, k = Selection("cv5", 5, f"auto: {n} training rows < {CV_BELOW}"), 5
    else:
        return Selection("holdout", 0, f"auto: {n} training rows >= {CV_BELOW}"), data
    if k > n:
        raise ConfigError(f"--select cv{k}: only {n} training rows; use fewer folds or --select holdout")
    folds = stratified_folds(every.train_labels, every.train_rows, k, c.data.data_seed)
    return selection, dataclasses.replace(every, folds=folds)


def _check_splits(c: ProbeConfig, store: FeatureStore, eval_store: FeatureStore) -> int:
    """The number of classes, once both splits (and a separate eval store) are known to agree."""
    train_meta = store.split(c.inputs.train_split)
    eval_meta = eval_store.split(c.inputs.eval_split)
    if eval_store is not store:
        check_compatible(store, eval_store)
    check_class_maps(c.inputs.train_split, train_meta.classes, c.inputs.eval_split, eval_meta.classes)
    return len(train_meta.classes)


def _knn_bank(rows: RunData, shots: int | tuple[int, ...] | None, folds: int = 0) -> int:
    """The smallest k-NN bank of the sweep: its fit rows, or the smallest few-shot draw, less a fold under cvK."""
    bank = len(rows.train_rows) - max((len(f) for f in rows.folds), default=0)
    counts = shots if isinstance(shots, tuple) else (shots,) if shots else ()
    if counts:
        present = len(np.unique(rows.train_labels[rows.train_rows]))
        s = min(counts)
        k = min(folds, s)  # a draw's own folds: at most ceil(s / k) of each class held out
        bank = min(bank, s * present - (present * -(-s // k) if k >= 2 else 0))
    return bank


def _cap_default_k(c: ProbeConfig, bank: int) -> tuple[ProbeConfig, str | None]:
    """The default k list (10, 20, 100, 200) capped at the k-NN bank of a small training set, said once.

    An explicit ``--k`` larger than the bank stays an error (``check_solver_inputs``); the default
    must not make a valid command fail, so it keeps the values that fit and adds the bank size.
    """
    default = SolverConfig().k
    solvers = [h for h in c.heads.head if head_kind(h) == "solver"]
    if c.solvers.k != default or max(default) <= bank or not any(_kind(h) == "knn" for h in solvers):
        return c, None
    ks = tuple(sorted({k for k in default if k <= bank} | {bank}))
    return dataclasses.replace(c, k=ks), f"k-NN: the default k list capped at the bank of {bank} samples: k = {ks}"


def _kind(text: str) -> str | None:
    try:
        return split_head(text)[0]
    except ConfigError:  # reported by the solver specs' checks
        return None


def _notes(c: ProbeConfig, runs: Sequence[RunSpec], specs: Sequence[SolverSpec], layers: Sequence[int],
           data: RunData, protocol: Protocol | None, knn_note: str | None, store: FeatureStore) -> list[str]:
    notes = [_plan_line(runs, specs, layers, data, protocol, tap_name(store.meta.tap)) + suite_text(c), *data.notes,
             f"store {store.location}: format {store.format_version}, provenance {store.provenance} (as stored)"]
    if knn_note:
        notes.insert(1, knn_note)
    if store.meta.layout.cls_index is None and not c.inputs.tokens:
        notes.insert(1, _no_cls_note(runs, specs))
    if runs and runs[0].settings.refit and len(data.holdout_rows):
        notes.insert(1, f"final heads refit on train+holdout ({len(data.train_rows) + len(data.holdout_rows)} rows) "
                     "for each config's selected steps; --no-refit keeps the selection model")
    if runs and (runs[0].settings.amp != "none" or c.run.compile):
        notes.insert(1, f"precision: amp {runs[0].settings.amp} ({runs[0].settings.amp_rule}; master weights, losses, "
                     f"BatchNorm and MP covariance in float32){', torch.compile on' if c.run.compile else ''}")
    if protocol is not None and protocol.adapted:
        notes.insert(1, f"recipe {protocol.recipe} adapted to this dataset: " + "; ".join(protocol.adapted))
    return notes


def _no_cls_note(runs: Sequence[RunSpec], specs: Sequence[SolverSpec]) -> str:
    """The default tokens of a store without CLS (a convnet's feature map), said once for the whole sweep."""
    readers: dict[str, set[str]] = defaultdict(set)
    for kind, tokens in [*((r.head.kind, r.tokens) for r in runs), *((s.kind, s.tokens) for s in specs)]:
        readers[tokens].add(kind)
    read = "; ".join(f"{', '.join(sorted(k))} read {t}" for t, k in sorted(readers.items()))
    return f"this store has no CLS token, so by default {read} (gap: mean of the patch tokens); --tokens to choose"


def _plan_line(runs: Sequence[RunSpec], specs: Sequence[SolverSpec], layers: Sequence[int], data: RunData,
               p: Protocol | None, tap: str = BLOCK) -> str:
    where = plural(len(layers), "layer") + ("" if tap == BLOCK else f" of tap {tap}")
    hold = (f"holdout {len(data.holdout_rows)}" if len(data.holdout_rows) else
            f"cv{len(data.folds)} over them" if data.folds else "no holdout")
    solvers = f"{plural(len(specs), 'solver config')} ({', '.join(sorted({s.kind for s in specs}))})" if specs else ""
    if p is None:
        return (f"plan: {solvers} on {where}; train {len(data.train_rows)} / {hold} / "
                f"eval {len(data.eval_rows)}")
    heads = len({(r.head.name, r.tokens) for r in runs})
    return (("plan: " + solvers + " and " if solvers else "plan: ") +
        f"{plural(len(runs), 'config')} ({plural(heads, 'head')} x {plural(len({r.lr for r in runs}), 'lr')}"
        f"{f' x {len(set(r.wd for r in runs))} wd' if len({r.wd for r in runs}) > 1 else ''}) on "
        f"{where}; train {len(data.train_rows)} / {hold} / eval {len(data.eval_rows)}; "
        f"recipe {p.recipe}: batch {p.batch_size}, {lr_text(p)}, {p.epochs} epochs x {p.steps_per_epoch} steps = "
        f"{p.total_steps} steps (warm-up {p.warmup_steps})"
    )


def _groups(runs: Sequence[RunSpec], store: FeatureStore, num_classes: int) -> tuple[PlannedGroup, ...]:
    """This shard's runs by input group, each with the geometry of the input it reads."""
    by_key: dict[tuple[int, ...], list[RunSpec]] = defaultdict(list)
    for r in runs:
        by_key[r.group_key].append(r)
    groups = []
    for key, members in by_key.items():
        lm = store.meta.for_layer(key[0]) if key else store.meta  # a layer's own grid and width (convnets)
        geometry = HeadGeometry(dim=lm.dim, num_classes=num_classes, num_tokens=lm.num_tokens,
                                num_patches=lm.layout.num_patches, num_prefix=lm.layout.num_prefix,
                                cls_index=lm.layout.cls_index, num_registers=lm.layout.num_registers,
                                pooled_dim=store.pooled_dim)
        groups.append(PlannedGroup(key, tuple(members), geometry))
    return tuple(groups)
