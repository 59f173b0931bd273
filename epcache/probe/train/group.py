"""One input group of a sweep (every config reading one layer), trained in one fused pass per epoch.

Each epoch: the protocol's passes over the training rows (every batch read once and fed to every
stacked head), then one scoring pass over the holdout and one over the eval split; a checkpoint
after every epoch makes a killed group resume with the numbers it would have produced. Small sets
select by cross-validation instead (cv.py); the final heads are the refit on every row (refit.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from epcache.probe.config.probe_config import ProbeConfig
from epcache.probe.data.layers import PooledRead, ReadSpec, group_label, load_memory, make_read_spec, make_source
from epcache.probe.data.memory import decide_in_memory
from epcache.probe.data.samples import RunData
from epcache.probe.data.sources import input_cost
from epcache.probe.data.stream import BatchStream
from epcache.probe.plan import PlannedGroup, SweepPlan
from epcache.probe.results.intervals import INTERVAL_METHOD
from epcache.probe.results.metrics import Metrics
from epcache.probe.results.ranking import best_row, rank_rows
from epcache.probe.results.rows import (
    RESULT_SCHEMA,
    ResultRowJSON,
    append_result,
    load_checkpoint,
    save_checkpoint,
    save_head,
)
from epcache.probe.solvers import shots_record
from epcache.probe.sweep.geometry import HeadGeometry
from epcache.probe.sweep.grid import RunSpec
from epcache.probe.train.cv import CrossValidation, adopt, cross_validate
from epcache.probe.train.fingerprint import protocol_fingerprint
from epcache.probe.train.refit import refit_off, refit_rows, run_refit
from epcache.probe.train.trainer import ConfigOutcome, GroupTrainer
from epcache.store import FeatureStore, class_map_fingerprint
from epcache.store.layout.taps import tap_name

__all__ = ["GroupRunner", "checkpoint_path", "protocol_fingerprint"]

_ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4}


@dataclass
class GroupRunner:
    """Trains one input group of a planned sweep and writes its rows, heads and checkpoints."""

    plan: SweepPlan  # everything the sweep resolved: config, rows, device, dtype, run directory
    group: PlannedGroup  # the configs reading this input and its geometry
    store: FeatureStore
    eval_store: FeatureStore
    say: Callable[[str], None] = lambda msg: None
    bar: Any = None  # the sweep-level progress bar (tqdm, possibly disabled)
    threads_rule: str = "user"  # how the torch thread count was chosen (recorded in timing)
    said: set[str] = field(default_factory=set)  # notes already printed in this sweep (shared by its groups)
    held_bytes: int = field(default=0, init=False)  # tokens held in RAM (in-memory training rows, eval caches)
    memory_rule: str = field(default="", init=False)  # how the training rows were read (recorded in timing)
    held: list[Callable[[], None]] | None = None  # not None: row and head writes wait here (the anchor check)

    @property
    def config(self) -> ProbeConfig:
        return self.plan.config

    @property
    def data(self) -> RunData:
        return self.plan.data

    @property
    def geometry(self) -> HeadGeometry:
        return self.group.geometry

    @property
    def device(self) -> torch.device:
        return self.plan.device

    @property
    def dtype(self) -> torch.dtype:
        return self.plan.dtype

    @property
    def out(self) -> Path | None:
        return self.plan.out

    def run(self, runs: Sequence[RunSpec], finished: Mapping[str, Any] | None = None) -> list[ResultRowJSON]:
        """Train one input group (configs reading the same layers) and write its rows and heads.

        ``finished``: rows already in the run directory; their configs are trained along (a killed
        group resumes with the stack it was checkpointed with, so float32 numbers stay the same)
        but their rows and heads are not written again.
        """
        finished = finished or {}
        t0 = time.perf_counter()
        c, s = self.config, runs[0].settings
        p = s.protocol
        layer = group_label(runs)  # "layer11", "layers8-9-10-11" or "pooled"
        layout = self.store.meta.for_layer(runs[0].group_key[0]).layout if runs[0].group_key else None
        plan = make_read_spec(runs, layout if layout is not None else self.store.meta.layout, self.dtype)
        train = self._stream(self.store, s.train_split, runs, plan, self.data.train_rows, self.data.train_labels,
                             training=True)
        holdout = None
        if len(self.data.holdout_rows):
            holdout = self._stream(self.store, s.train_split, runs, plan, self.data.holdout_rows,
                                   self.data.train_labels, training=False)
        evaluation = self._stream(self.eval_store, s.eval_split, runs, plan, self.data.eval_rows,
                                  self.data.eval_labels, training=False)
        def new_trainer() -> GroupTrainer:  # the stacks from their seed init: selection, each cv fold, the refit
            return GroupTrainer(runs, self.geometry, plan, device=self.device, dtype=self.dtype, fused=c.run.fused,
                                amp=s.amp, compile=c.run.compile)

        trainer = new_trainer()
        cv = None
        if self.data.folds:  # cross-validated selection (train/cv.py): no holdout, no checkpoints; then the refit
            cv = self._cross_validate(runs, new_trainer, plan, layer)
            adopt(trainer, cv)
        ckpt = None
        resumed_from = None
        if self.out is not None and cv is None:
            ckpt = checkpoint_path(self.out, runs)
            loaded = load_checkpoint(ckpt, say=self.say)  # None (with a note) if it fails its sha256
            if loaded is not None and loaded[1].get("config_ids") == [r.id for r in runs]:
                trainer.restore(*loaded)
                resumed_from = trainer.epoch
                self.say(f"{layer}: resuming {len(runs)} configs after epoch {trainer.epoch + 1}/{p.epochs}")
        epochs_run = 0
        self.bar.skip(max(trainer.epoch + 1, 0) * p.steps_per_epoch)  # resumed epochs: done, not throughput
        finite = [b for b in trainer.best_score if math.isfinite(b)]  # a resumed stack's best so far
        best: float | None = max(finite) if finite else None
        t_train = t_eval = 0.0
        for epoch in range(trainer.epoch + 1, p.epochs):
            self.bar.set_postfix_str(f"{layer}, epoch {epoch + 1}/{p.epochs}, {len(runs)} configs"
                                     + (f", best holdout {100 * best:.1f}%" if best is not None else ""))
            t = time.perf_counter()
            trainer.train_epoch(train, epoch, warmup_steps=p.warmup_steps, total_steps=p.total_steps,
                                passes=p.passes_per_epoch, on_batch=lambda _n: self.bar.update(1))
            t_train += time.perf_counter() - t
            t = time.perf_counter()
            hold_accs = trainer.evaluate(holdout) if holdout is not None else None
            hold_top1 = trainer.top1(hold_accs) if hold_accs is not None else None
            hold_loss = trainer.loss(hold_accs) if hold_accs is not None else None
            if c.run.eval_curve or epoch == p.epochs - 1:
                eval_top1 = trainer.top1(trainer.evaluate(evaluation))
            else:  # the eval split is scored once, at the selected epoch (below); the curve comes from the holdout
                eval_top1 = [math.nan] * len(runs)
            t_eval += time.perf_counter() - t
            trainer.end_epoch(epoch, hold_top1, eval_top1, hold_loss)
            if hold_top1 is not None:
                best = max(hold_top1) if best is None else max(best, *hold_top1)
            epochs_run += 1
            if ckpt is not None:
                save_checkpoint(ckpt, *trainer.checkpoint())
        trainer.load_selected()
        hold_metrics = cv.metrics if cv is not None else (
            trainer.metrics(trainer.evaluate(holdout)) if holdout is not None else None)
        selection_eval = None if cv is not None else trainer.metrics(trainer.evaluate(evaluation, confusion=True))
        refits: dict[str, dict[str, Any]] = {r.id: refit_off(c.data.refit) for r in runs}
        t_refit = time.perf_counter()
        done = None
        if s.refit and (holdout is not None or cv is not None):  # the final heads, retrained (train/refit.py)
            self.bar.set_postfix_str(f"{layer}, refit on all {len(refit_rows(self.data))} training rows")
            both = train if cv is not None else self._stream(self.store, s.train_split, runs, plan,
                                                             refit_rows(self.data), self.data.train_labels,
                                                             training=True)
            done = run_refit(runs, new_trainer, list(trainer.best_epoch), selection_eval, both, evaluation,
                             steps_per_epoch=p.steps_per_epoch if cv is not None else
                             p.passes_per_epoch * train.steps_per_epoch(),
                             eval_curve=cv is not None and c.run.eval_curve)  # cv: the curve is the refit's
            refits = {r.id: d.record for r, d in zip(runs, done, strict=True)}
        outcomes = trainer.outcomes(hold_metrics, [d.eval for d in done] if done else selection_eval)
        if done:
            outcomes = [dataclasses.replace(o, state=d.state, eval_top1=d.eval_curve or o.eval_top1)
                        for o, d in zip(outcomes, done, strict=True)]
        t_refit = time.perf_counter() - t_refit
        seconds = time.perf_counter() - t0
        timing = {
            "group_seconds": seconds,
            "group_configs": len(runs),
            "epochs_run": epochs_run,
            "steps_run": trainer.steps,  # optimiser steps of the whole schedule (resumed ones included)
            "seconds_per_epoch": seconds / max(epochs_run, 1),
            "resumed_after_epoch": None if resumed_from is None else resumed_from + 1,
            "device": str(self.device),
            "torch_threads": torch.get_num_threads(),
            "threads_rule": self.threads_rule,
            # where the time went: training (incl. waiting for the reader) and scoring, per group
            "train_seconds": t_train,
            "data_wait_seconds": train.wait_seconds,  # the reader's queue was empty this long
            "eval_seconds": t_eval,
            "refit_seconds": t_refit,  # retraining on train + holdout and scoring the eval split (0: no refit)
            # fixed = shared by every config of the group (waiting for data, scoring passes' reads);
            # marginal = the rest of training divided by the configs (an estimate: bench/vs_hand_loop.py
            # measures it as the slope over 1, 8 and 32 configs)
            "fixed_seconds": train.wait_seconds,
            "marginal_seconds_per_config": (t_train - train.wait_seconds + t_eval) / len(runs),
            "held_bytes": self.held_bytes,
            "in_memory": self.memory_rule,
        }
        rows = []
        costs: dict[tuple[str, str, int], Any] = {}
        # how training ended: the probe has no wall-clock limit or manual stop (a killed group resumes, writes no row)
        stop = {"epochs_run": trainer.epoch + 1, "reason": "schedule"}
        for o in outcomes:
            if o.run.id in finished:  # trained along for the stack's sake; its row is already written
                rows.append(finished[o.run.id])
                continue
            row = self._row(o, costs, timing, refits[o.run.id], stop)
            if self.out is not None:
                writes = [partial(append_result, self.out / self.plan.results_file, row)]
                if c.run.save_heads:
                    writes.insert(0, partial(save_head, self.out / "heads" / f"{o.run.id}.safetensors", o.state,
                                             self._head_meta(o)))
                if self.held is not None:
                    self.held.extend(writes)
                else:
                    for write in writes:
                        write()
            rows.append(row)
        if ckpt is not None:
            ckpt.unlink(missing_ok=True)
        best = best_row(rank_rows(rows)[0])  # the summary's ranking, over this layer's rows
        self.say(f"{layer}: {len(runs)} configs in {seconds:.1f} s; best {best['name']} "
                 f"(holdout {_pct(best['metrics']['holdout'])}, eval {_pct(best['metrics']['eval'])})")
        return rows

    def _cross_validate(self, runs: Sequence[RunSpec], new_trainer: Callable[[], GroupTrainer], plan: ReadSpec,
                        layer: str) -> CrossValidation:
        s = runs[0].settings

        def stream(rows: np.ndarray, training: bool) -> BatchStream:
            return self._stream(self.store, s.train_split, runs, plan, rows, self.data.train_labels, training=training)

        def on_fold(f: int) -> None:
            self.bar.set_postfix_str(f"{layer}, fold {f + 1}/{len(self.data.folds)}, {len(runs)} configs")

        return cross_validate(runs, new_trainer, self.data.train_rows, self.data.folds, stream,
                              steps_per_epoch=s.protocol.steps_per_epoch, on_fold=on_fold)

    def _stream(
        self,
        store: FeatureStore,
        split: str,
        runs: Sequence[RunSpec],
        plan: ReadSpec,
        rows: np.ndarray,
        labels: np.ndarray,
        *,
        training: bool,
    ) -> BatchStream:
        c = self.config
        data_batch = runs[0].settings.batch_size  # the protocol's training batch
        batch = data_batch if training else max(data_batch, 1024)  # eval: any batch gives the same counts
        views = store.split(split).views if training else 1
        read = runs[0].group_key  # the layers this group reads (none: the pooled output)
        meta = store.meta.for_layer(read[0]) if read else store.meta
        # on the CPU, rows held in RAM are converted to the compute dtype once, not every epoch
        convert = self.device.type == "cpu"
        itemsize = torch.finfo(self.dtype).bits // 8 if convert else _ITEMSIZE[meta.dtype]
        width = (self.geometry.pooled_dim or meta.dim) if isinstance(plan, PooledRead) else meta.dim
        size = len(rows) * views * plan.packed_bytes_per_view(meta.num_tokens, width, itemsize)
        decode = np.float32 if convert and self.dtype == torch.float32 else None  # quantised: the batches' dtype
        source: Any = make_source(store, split, runs, plan, decode_to=decode)  # one layer, k layers together, or pooled
        hold = not training and (c.data.in_memory is True or size <= c.data.eval_cache_mb * 2**20)
        if training:
            decision = decide_in_memory(c.data.in_memory, size)
            hold = decision.hold
            self.memory_rule = decision.rule
            said = f"in-memory:{decision.hold}"  # auto: said once per sweep and outcome, not per fold or layer size
            if c.data.in_memory is None and said not in self.said:
                self.said.add(said)
                self.say(f"training tokens {decision.rule}; --in-memory / --no-in-memory to choose")
        if hold:
            source = load_memory(source, rows, store.split(split).views, all_views=training,
                                 dtype=self.dtype if convert else None)
            self.held_bytes += size
        return BatchStream(
            source,
            rows,
            labels,
            batch_size=batch,
            device=self.device,
            dtype=self.dtype,
            data_seed=c.data.data_seed,
            views=views,
            shuffle_chunks=c.data.shuffle_chunks,
            prefetch=c.data.prefetch,
        )

    def _row(self, o: ConfigOutcome, costs: dict[tuple[str, str, int], Any], timing: dict[str, Any],
             refit: dict[str, Any], stop: dict[str, Any]) -> ResultRowJSON:
        run, g, s = o.run, self.geometry, o.run.settings
        key = (run.head.name, run.input_key, len(run.mix_layers))
        if key not in costs:
            costs[key] = input_cost(run.head, g.shapes(run), g.num_classes)  # (params, flops) of the real input
        params, flops = costs[key]
        oracle = o.oracle_epoch
        curve = "refit" if refit.get("eval_curve") else "selection"  # whose per-epoch eval curve the oracle reads
        return {
            "schema": RESULT_SCHEMA,
            "id": run.id,
            "name": run.name,
            "seed_group": run.seed_group,
            "config": {**run.hyperparameters(), **{k: v for k, v in s.to_json().items()
                                                   if "provenance" not in k and k != "protocol"},
                       "trust_store": self.config.inputs.trust_store},
            "protocol": protocol_fingerprint(run, self.data, self.config, repeat=self.plan.repeat),
            "store": _store_info(self.store),
            "eval_store": _store_info(self.eval_store),
            "data": {**self.data.to_json(g.num_classes),
                     "class_map": class_map_fingerprint(self.store.split(s.train_split).classes),  # = the eval split's
                     "tap": tap_name(self.store.meta.tap),  # the activations read: block outputs or one tap
                     **shots_record(self.data.train_labels, self.data.train_rows, s.shots)},
            "params": params,
            "flops": flops,
            "input": {"tokens": run.tokens, "layer_mix": run.layer_mix, "layers": list(run.group_key)},
            "selected_epoch": o.selected_epoch + 1,
            "metrics": {"holdout": _mjson(o.holdout), "eval": _mjson(o.eval),  # eval: the refit model's, if refit
                        "interval": INTERVAL_METHOD},
            "refit": refit,
            "stop": dict(stop),
            "oracle": ({"epoch": oracle + 1, "eval_top1": o.eval_top1[oracle], "curve": curve}
                       if self.config.run.eval_curve and (not self.data.folds or curve == "refit")
                       else {"epoch": None, "eval_top1": None}),  # no eval curve: no oracle
            "final": {"epoch": len(o.eval_top1),
                      "eval_top1": o.eval_top1[-1] if math.isfinite(o.eval_top1[-1]) else None},
            "curves": {"train_loss": o.train_loss, "holdout_top1": o.holdout_top1, "holdout_loss": o.holdout_loss,
                       "eval_top1": [v if math.isfinite(v) else None for v in o.eval_top1]},
            "diverged": o.diverged,
            "head_file": f"heads/{run.id}.safetensors" if self.out is not None and self.config.run.save_heads else None,
            "timing": dict(timing),
        }

    def _head_meta(self, o: ConfigOutcome) -> dict[str, Any]:
        run = o.run
        return {
            **self.geometry.head_config(run),
            "id": run.id,
            "name": run.name,
            "layer": run.layer,
            "tokens": run.tokens,
            "selected_epoch": o.selected_epoch + 1,
            "refit": run.settings.refit,  # trained on train + holdout for the selected steps
            "store_provenance": self.store.provenance,
            "backbone": self.store.meta.backbone.name,
            "classes": list(self.store.split(run.settings.train_split).classes),
        }


def _store_info(store: FeatureStore) -> dict[str, Any]:
    return {"path": store.location, "provenance": store.provenance, "backbone": store.meta.backbone.name}


def _mjson(m: Metrics | None) -> Any:
    return None if m is None else m.to_json()


def _pct(m: dict[str, Any] | None) -> str:
    return "-" if m is None else f"{100 * m['top1']:.2f}%"


def checkpoint_path(out: Path, runs: Sequence[RunSpec]) -> Path:
    """Where a group's per-epoch checkpoint lives: named by its input and the exact set of its configs."""
    key = hashlib.sha256(json.dumps([runs[0].group_key, sorted(r.id for r in runs)]).encode()).hexdigest()[:16]
    return out / "ckpt" / f"{group_label(runs)}-{key}.safetensors"
