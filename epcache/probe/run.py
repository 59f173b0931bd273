"""``probe(config)``: the library entry point behind ``epcache probe``.

Order of work: open the stores and check everything a user can get wrong (splits, layers,
labels, completeness, compatibility of a separate eval store, the whole sweep grid, the holdout)
before a single step is trained; then train each input group (one layer) in one fused pass per
epoch, checkpointing after every epoch; then write one results row and one head file per config.
Re-running into the same run directory skips finished configs and resumes a killed group at its
last completed epoch with the same numbers it would have produced uninterrupted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from epcache.errors import ConfigError, IncompleteStoreError, ProvenanceMismatchError, UnknownLayerError
from epcache.probe.data.layers import Plan, PooledPlan, group_label, load_memory, make_plan, make_source
from epcache.probe.data.sources import pooled_dim
from epcache.probe.grid import ProbeConfig, RunSpec, expand_sweep
from epcache.probe.metrics import Metrics
from epcache.probe.results import (
    RESULT_SCHEMA,
    RESULTS_FILE,
    ResultRowJSON,
    append_result,
    format_summary,
    load_checkpoint,
    read_results,
    repair_results,
    save_checkpoint,
    save_head,
    write_json,
)
from epcache.probe.select import check_labels, split_train
from epcache.probe.stream import BatchStream
from epcache.probe.train import ConfigOutcome, GroupTrainer, HeadGeometry
from epcache.store import FeatureStore, open_store

__all__ = ["ProbeResult", "probe", "resolve_device", "resolve_shard"]

_ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4}
_TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class ProbeResult:
    """What a sweep produced."""

    rows: tuple[dict[str, Any], ...]  # one results row per config of the sweep, sweep order
    best: dict[str, Any] | None  # best row by holdout top-1; None without a holdout (no honest choice)
    summary: str  # the summary table (also RUNDIR/summary.txt)
    out: Path | None  # the run directory, if one was written
    skipped: tuple[str, ...]  # ids already finished in the run directory (not retrained)
    notes: tuple[str, ...]  # data notes: excluded samples, classes short of shots ...


def probe(config: ProbeConfig, *, progress: bool = True) -> ProbeResult:
    """Train and evaluate every config of a sweep from a feature store.

    Args:
        config: the sweep (see :class:`ProbeConfig`).
        progress: show progress bars and per-epoch lines on stderr.

    Returns:
        The rows (also in ``RUNDIR/results.jsonl``), the best config and a summary table.

    Raises:
        StoreNotFoundError: the store (or eval store) does not exist.
        UnknownSplitError: train or eval split missing.
        UnknownLayerError: a requested layer is not stored.
        ConfigError: invalid sweep (all problems in one message), empty split, a holdout that
            empties a class, batch larger than the training set, unusable device.
        CorruptStoreError: labels outside the class list.
        IncompleteStoreError: blocks never written (unless ``allow_incomplete``).
        ProvenanceMismatchError: ``eval_store`` comes from another backbone or preprocessing.
    """
    say = _printer(progress)
    store = open_store(config.store, verify_reads=True)  # never train on bytes that changed since extraction
    eval_store = open_store(config.eval_store, verify_reads=True) if config.eval_store else store
    try:
        return _probe(config, store, eval_store, say, progress)
    finally:
        if eval_store is not store:
            eval_store.close()
        store.close()


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


@dataclass(frozen=True)
class _Data:
    """Everything about the rows of the run, resolved once before training."""

    train_labels: np.ndarray
    eval_labels: np.ndarray
    train_rows: np.ndarray
    holdout_rows: np.ndarray
    eval_rows: np.ndarray
    excluded_train: int
    excluded_eval: int
    notes: tuple[str, ...]


def _probe(
    config: ProbeConfig,
    store: FeatureStore,
    eval_store: FeatureStore,
    say: Callable[[str], None],
    progress: bool,
) -> ProbeResult:
    train_meta = store.split(config.train_split)
    eval_meta = eval_store.split(config.eval_split)
    if eval_store is not store:
        _check_compatible(store, eval_store)
    if tuple(train_meta.classes) != tuple(eval_meta.classes):
        raise ConfigError(
            f"split {config.train_split!r} has {len(train_meta.classes)} classes and {config.eval_split!r} has "
            f"{len(eval_meta.classes)}, or they are in another order; labels would mean different classes. "
            "Extract both splits with the same class list"
        )
    num_classes = len(train_meta.classes)
    runs = expand_sweep(
        config,
        store.meta,
        num_classes=num_classes,
        store_provenance=store.provenance,
        eval_provenance=eval_store.provenance,
    )
    shard = resolve_shard(config.shard)
    if shard is not None:
        index, count = shard
        ordered = sorted(runs, key=lambda r: r.id)  # independent of how the sweep was spelled
        mine = {r.id for k, r in enumerate(ordered) if k % count == index}
        runs = [r for r in runs if r.id in mine]
        say(f"shard {index}/{count}: {len(runs)} of {len(ordered)} configs")
        if not runs:
            return ProbeResult(rows=(), best=None, summary="no configs in this shard", out=None, skipped=(), notes=())
    suffix = "" if shard is None else f".shard-{shard[0]}-of-{shard[1]}"
    results_file = RESULTS_FILE if shard is None else f"results{suffix}.jsonl"
    settings = runs[0].settings
    device = resolve_device(config.device)
    dtype = _TORCH_DTYPES[settings.dtype]
    layers = sorted({layer for r in runs for layer in r.group_key})  # every layer any config reads
    for layer in layers:
        if layer not in eval_store.meta.layers:
            raise UnknownLayerError(f"eval store {eval_store.location} has no layer {layer}")
    data = _resolve_rows(config, store, eval_store, layers, num_classes)
    for note in data.notes:
        say(note)
    B = settings.batch_size
    if B < 2:
        raise ConfigError("batch_size must be >= 2: BatchNorm needs batch statistics")
    if len(data.train_rows) < B:
        raise ConfigError(
            f"batch_size {B} is larger than the {len(data.train_rows)} training samples (drop_last leaves no step); "
            "lower --batch-size"
        )
    out = Path(config.out) if config.out else None
    finished: dict[str, dict[str, Any]] = {}
    if out is not None:
        (out / "heads").mkdir(parents=True, exist_ok=True)
        (out / "ckpt").mkdir(parents=True, exist_ok=True)
        repair_results(out / results_file)
        for f in sorted(out.glob("results*.jsonl")):  # rows of other shards count as finished too
            for row in read_results(f):
                finished.setdefault(row["id"], row)
        write_json(
            out / f"config{suffix}.json",
            {
                "config": config.to_json(),
                "settings": settings.to_json(),
                "runs": [{"id": r.id, "name": r.name, **r.hyperparameters()} for r in runs],
                "notes": list(data.notes),
            },
        )
    skipped = tuple(r.id for r in runs if r.id in finished)
    if skipped:
        say(f"{len(skipped)} of {len(runs)} configs already finished in {out}; skipping them")
    geometry = HeadGeometry(
        dim=store.meta.dim,
        num_classes=num_classes,
        num_tokens=store.meta.num_tokens,
        num_patches=store.meta.layout.num_patches,
        num_prefix=store.meta.layout.num_prefix,
        cls_index=store.meta.layout.cls_index,
        num_registers=store.meta.layout.num_registers,
        pooled_dim=pooled_dim(store.meta),
    )
    if any(r.tokens == "pooled" for r in runs):  # the eval split needs the pooled array as well
        for st, split in ((store, config.train_split), (eval_store, config.eval_split)):
            st.require_pooled(split)
    groups: dict[tuple[int, ...], list[RunSpec]] = defaultdict(list)
    for r in runs:
        if r.id not in finished:
            groups[r.group_key].append(r)
    new_rows: dict[str, dict[str, Any]] = {}
    for group in groups.values():
        context = _GroupContext(config, store, eval_store, data, geometry, device, dtype, out, say, progress,
                                results_file)
        for row in context.run(group):
            new_rows[row["id"]] = dict(row)
    rows = tuple(new_rows.get(r.id) or finished[r.id] for r in runs)
    honest = settings.holdout > 0
    best = max(rows, key=_holdout_score) if honest else None
    summary = format_summary(rows)
    if out is not None:
        (out / f"summary{suffix}.txt").write_text(summary + "\n", encoding="utf-8")
    return ProbeResult(rows=rows, best=best, summary=summary, out=out, skipped=skipped, notes=data.notes)


@dataclass
class _GroupContext:
    config: ProbeConfig
    store: FeatureStore
    eval_store: FeatureStore
    data: _Data
    geometry: HeadGeometry
    device: torch.device
    dtype: torch.dtype
    out: Path | None
    say: Callable[[str], None]
    progress: bool
    results_file: str = RESULTS_FILE  # results.jsonl, or results.shard-I-of-N.jsonl for one shard

    def run(self, runs: Sequence[RunSpec]) -> list[ResultRowJSON]:
        """Train one input group (configs reading the same layers) and write its rows and heads."""
        from tqdm import tqdm

        t0 = time.perf_counter()
        c, s = self.config, runs[0].settings
        layer = group_label(runs)  # "layer11", "layers8-9-10-11" or "pooled"
        plan = make_plan(runs, self.store.meta.layout, self.dtype)
        train = self._stream(self.store, s.train_split, runs, plan, self.data.train_rows, self.data.train_labels,
                             training=True)
        holdout = None
        if len(self.data.holdout_rows):
            holdout = self._stream(self.store, s.train_split, runs, plan, self.data.holdout_rows,
                                   self.data.train_labels, training=False)
        evaluation = self._stream(self.eval_store, s.eval_split, runs, plan, self.data.eval_rows,
                                  self.data.eval_labels, training=False)
        trainer = GroupTrainer(runs, self.geometry, plan, device=self.device, dtype=self.dtype, fused=c.fused)
        spe = train.steps_per_epoch()
        ckpt = None
        resumed_from = None
        if self.out is not None:
            key = hashlib.sha256(json.dumps([runs[0].group_key, sorted(r.id for r in runs)]).encode()).hexdigest()[:16]
            ckpt = self.out / "ckpt" / f"{layer}-{key}.safetensors"
            loaded = load_checkpoint(ckpt)
            if loaded is not None and loaded[1].get("config_ids") == [r.id for r in runs]:
                trainer.restore(*loaded)
                resumed_from = trainer.epoch
                self.say(f"{layer}: resuming {len(runs)} configs after epoch {trainer.epoch + 1}/{s.epochs}")
        epochs_run = 0
        for epoch in range(trainer.epoch + 1, s.epochs):
            t_epoch = time.perf_counter()
            bar = tqdm(total=spe * s.batch_size, unit="img", unit_scale=True, leave=False, disable=not self.progress,
                       desc=f"{layer} epoch {epoch + 1}/{s.epochs} ({len(runs)} configs)", file=sys.stderr)
            with bar:
                trainer.train_epoch(train, epoch, warmup_steps=s.warmup * spe, total_steps=s.epochs * spe,
                                    on_batch=bar.update)
            hold_top1 = trainer.top1(trainer.evaluate(holdout)) if holdout is not None else None
            eval_top1 = trainer.top1(trainer.evaluate(evaluation))
            trainer.end_epoch(epoch, hold_top1, eval_top1)
            epochs_run += 1
            if ckpt is not None:
                save_checkpoint(ckpt, *trainer.checkpoint())
            if self.progress:
                losses = [v for k in range(len(runs)) if math.isfinite(v := trainer.train_loss[k][-1])]
                sel = hold_top1 if hold_top1 is not None else eval_top1
                what = "holdout" if hold_top1 is not None else "eval"
                self.say(
                    f"{layer} epoch {epoch + 1}/{s.epochs}: {len(runs)} configs, mean loss "
                    f"{sum(losses) / max(len(losses), 1):.4f} ({len(runs) - len(losses)} diverged), "
                    f"best {what} top-1 {100 * max(sel):.2f}%, "
                    f"{spe * s.batch_size / (time.perf_counter() - t_epoch):.0f} img/s"
                )
        trainer.load_selected()
        hold_metrics = trainer.metrics(trainer.evaluate(holdout)) if holdout is not None else None
        eval_metrics = trainer.metrics(trainer.evaluate(evaluation))
        outcomes = trainer.outcomes(hold_metrics, eval_metrics)
        seconds = time.perf_counter() - t0
        timing = {
            "group_seconds": seconds,
            "group_configs": len(runs),
            "epochs_run": epochs_run,
            "seconds_per_epoch": seconds / max(epochs_run, 1),
            "resumed_after_epoch": resumed_from,
            "device": str(self.device),
        }
        rows = []
        costs: dict[tuple[str, str], Any] = {}
        for o in outcomes:
            row = self._row(o, costs, timing)
            if self.out is not None:
                if c.save_heads:
                    save_head(self.out / "heads" / f"{o.run.id}.safetensors", o.state, self._head_meta(o))
                append_result(self.out / self.results_file, row)
            rows.append(row)
        if ckpt is not None:
            ckpt.unlink(missing_ok=True)
        return rows

    def _stream(
        self,
        store: FeatureStore,
        split: str,
        runs: Sequence[RunSpec],
        plan: Plan,
        rows: np.ndarray,
        labels: np.ndarray,
        *,
        training: bool,
    ) -> BatchStream:
        c = self.config
        views = store.split(split).views if training else 1
        meta = store.meta
        width = self.geometry.pooled_dim or meta.dim if isinstance(plan, PooledPlan) else meta.dim
        size = len(rows) * plan.packed_bytes_per_view(meta.num_tokens, width, _ITEMSIZE[meta.dtype])
        source: Any = make_source(store, split, runs, plan)
        if c.in_memory or (not training and size <= c.eval_cache_mb * 2**20):
            source = load_memory(source, rows, store.split(split).views, all_views=training)
        return BatchStream(
            source,
            rows,
            labels,
            batch_size=c.batch_size,
            device=self.device,
            dtype=self.dtype,
            data_seed=c.data_seed,
            views=views,
            shuffle_chunks=c.shuffle_chunks,
            prefetch=c.prefetch,
        )

    def _row(self, o: ConfigOutcome, costs: dict[tuple[str, str], Any], timing: dict[str, Any]) -> ResultRowJSON:
        from epcache.probe.data.sources import input_cost

        run, g, s = o.run, self.geometry, o.run.settings
        key = (run.head.name, run.input_key, len(run.mix_layers))
        if key not in costs:
            costs[key] = input_cost(run.head, g.shapes(run), g.num_classes)  # (params, flops) of the real input
        params, flops = costs[key]
        oracle = o.oracle_epoch
        return {
            "schema": RESULT_SCHEMA,
            "id": run.id,
            "name": run.name,
            "config": {**run.hyperparameters(), **{k: v for k, v in s.to_json().items() if "provenance" not in k}},
            "store": _store_info(self.store),
            "eval_store": _store_info(self.eval_store),
            "data": {
                "num_classes": g.num_classes,
                "num_train": len(self.data.train_rows),
                "num_holdout": len(self.data.holdout_rows),
                "num_eval": len(self.data.eval_rows),
                "excluded_train": self.data.excluded_train,
                "excluded_eval": self.data.excluded_eval,
            },
            "params": params,
            "flops": flops,
            "input": {"tokens": run.tokens, "layer_mix": run.layer_mix, "layers": list(run.group_key)},
            "selected_epoch": o.selected_epoch,
            "metrics": {"holdout": _mjson(o.holdout), "eval": _mjson(o.eval)},
            "oracle": {"epoch": oracle, "eval_top1": o.eval_top1[oracle]},
            "final": {"epoch": len(o.eval_top1) - 1, "eval_top1": o.eval_top1[-1]},
            "curves": {"train_loss": o.train_loss, "holdout_top1": o.holdout_top1, "eval_top1": o.eval_top1},
            "diverged": o.diverged,
            "head_file": f"heads/{run.id}.safetensors" if self.out is not None and self.config.save_heads else None,
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
            "selected_epoch": o.selected_epoch,
            "store_provenance": self.store.provenance,
            "backbone": self.store.meta.backbone.name,
            "classes": list(self.store.split(run.settings.train_split).classes),
        }


# ---------------------------------------------------------------------------------------------- checks


def _resolve_rows(
    config: ProbeConfig, store: FeatureStore, eval_store: FeatureStore, layers: Sequence[int], num_classes: int
) -> _Data:
    notes: list[str] = []
    missing_rows: dict[str, np.ndarray] = {}
    problems = []
    for role, st, split in (("train", store, config.train_split), ("eval", eval_store, config.eval_split)):
        n = st.split(split).num_samples
        if n == 0:
            raise ConfigError(f"{st.location}: split {split!r} is empty")
        bad = np.zeros(n, bool)
        for layer in layers:
            blocks = st.missing_blocks(split, layer)
            if blocks:
                problems.append(f"{st.location} split {split!r} layer {layer}: blocks {_short(blocks)} not written")
                for b in blocks:
                    lo, hi = st.block_range(split, b)
                    bad[lo:hi] = True
        missing_rows[role] = bad
    if problems and not config.allow_incomplete:
        raise IncompleteStoreError(
            "the store is incomplete: " + "; ".join(problems) + ". Finish the extraction (run `epcache extract` "
            "again to resume it) or pass --allow-incomplete to train and evaluate on the written blocks only"
        )
    if problems:
        notes.append("allow_incomplete: skipping rows of unwritten blocks: " + "; ".join(problems))
    train_labels = store.read_labels(config.train_split)
    eval_labels = eval_store.read_labels(config.eval_split)
    train_ok = check_labels(train_labels, num_classes, split=config.train_split, where=store.location)
    eval_ok = check_labels(eval_labels, num_classes, split=config.eval_split, where=eval_store.location)
    excluded_train, excluded_eval = int((~train_ok).sum()), int((~eval_ok).sum())
    for n_ex, split in ((excluded_train, config.train_split), (excluded_eval, config.eval_split)):
        if n_ex:
            notes.append(f"split {split!r}: {n_ex} sample(s) labelled -1 (skipped at extraction) are excluded")
    train_ok &= ~missing_rows["train"]
    eval_ok &= ~missing_rows["eval"]
    if not eval_ok.any():
        raise ConfigError(f"split {config.eval_split!r} has no usable samples in the written blocks")
    subsets = split_train(
        train_labels,
        train_ok,
        classes=store.split(config.train_split).classes,
        holdout=config.holdout,
        seed=config.data_seed,
        shots=config.shots,
        fraction=config.fraction,
    )
    if len(subsets.train) == 0:
        raise ConfigError(f"split {config.train_split!r} has no usable training samples")
    notes.extend(subsets.notes)
    return _Data(
        train_labels=train_labels,
        eval_labels=eval_labels,
        train_rows=subsets.train,
        holdout_rows=subsets.holdout,
        eval_rows=np.flatnonzero(eval_ok).astype(np.int64),
        excluded_train=excluded_train,
        excluded_eval=excluded_eval,
        notes=tuple(notes),
    )


def _check_compatible(store: FeatureStore, other: FeatureStore) -> None:
    """The eval store must hold tokens of the same backbone, weights, layout and preprocessing."""
    a, b = store.meta, other.meta
    fields = {
        "backbone": (a.backbone.name, b.backbone.name),
        "weights_sha256": (a.backbone.weights_sha256, b.backbone.weights_sha256),
        "dim": (a.dim, b.dim),
        "token layout": (dataclasses.asdict(a.layout), dataclasses.asdict(b.layout)),
        "final_norm": (a.final_norm, b.final_norm),
        "preprocessing": (a.preprocessing, b.preprocessing),
    }
    diffs = [f"{name}: {x!r} vs {y!r}" for name, (x, y) in fields.items() if x != y]
    if diffs:
        raise ProvenanceMismatchError(
            f"eval store {other.location} was not produced like {store.location} ({'; '.join(diffs)}); "
            "probing one and scoring on the other compares different features. Extract both with the same "
            "backbone, weights and preprocessing"
        )


def _holdout_score(row: dict[str, Any]) -> tuple[float, float]:
    m = row["metrics"]["holdout"]
    return (m["top1"], m["balanced_acc"])


def _store_info(store: FeatureStore) -> dict[str, Any]:
    return {"path": store.location, "provenance": store.provenance, "backbone": store.meta.backbone.name}


def _mjson(m: Metrics | None) -> Any:
    return None if m is None else m.to_json()


def _short(items: Sequence[int], limit: int = 8) -> str:
    head = ", ".join(map(str, items[:limit]))
    return f"[{head}{', ...' if len(items) > limit else ''}] ({len(items)} block(s))"


def _printer(progress: bool) -> Callable[[str], None]:
    def say(msg: str) -> None:
        if progress:
            from tqdm import tqdm

            tqdm.write(msg, file=sys.stderr)

    return say
