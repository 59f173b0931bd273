"""Dispatcher: the solver part of ``epcache probe``, from pooled views to results rows.

:func:`plan_solvers` splits a :class:`ProbeConfig` into its trained part (handed to the fused
trainer unchanged) and the solver specs; :func:`run_solver_configs` pools each needed layer
once (one streamed pass, cached in ``RUNDIR/pooled``), fits every solver spec of that layer on
the pooled rows, and writes one results row per spec in the trained heads' row format (so the
summary, the selection rule and the report read both), plus the fitted state as safetensors
(k-NN saves nothing but the config in its row).
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from epcache.errors import ConfigError
from epcache.probe.results.intervals import INTERVAL_METHOD
from epcache.probe.results.rows import HEAD_META_KEY, RESULT_SCHEMA, RESULTS_FILE, append_result, save_head
from epcache.probe.solvers._cv import DrawSelection, draw_selection, fit_cv, selection_record
from epcache.probe.solvers._fewshot import fewshot_rows, shots_record
from epcache.probe.solvers._fit import SolverInputs, fit_solver
from epcache.probe.solvers._lstsq import linear_family
from epcache.probe.solvers._ncm import NcmModel
from epcache.probe.solvers._spec import SolverSettings, SolverSpec, expand_solver_specs, split_heads
from epcache.probe.solvers.vectors import PooledCache
from epcache.probe.sweep.checks import check_two_classes
from epcache.store import FeatureStore, StoreMeta, class_map_fingerprint
from epcache.store.layout.taps import tap_name

__all__ = [
    "RowData", "check_solver_inputs", "load_solver_head", "plan_block_solvers", "plan_solvers", "run_solver_configs",
]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class RowData(Protocol):
    """Which stored rows play which role (``run._Data`` has these fields)."""

    train_labels: np.ndarray
    eval_labels: np.ndarray
    train_rows: np.ndarray  # train split rows outside the holdout (no few-shot subset applied)
    holdout_rows: np.ndarray
    eval_rows: np.ndarray
    excluded_train: int
    excluded_eval: int
    folds: tuple[np.ndarray, ...]  # cross-validation: stratified parts of train_rows (empty under a holdout)


def plan_solvers(
    config: Any, meta: StoreMeta, *, layers: Sequence[int], store_provenance: str, eval_provenance: str,
    selection: str = "holdout",
) -> tuple[Any | None, list[SolverSpec]]:
    """``(config of the trained heads or None, solver specs)`` of a ``ProbeConfig``.

    The trained part keeps every option as given, with a single ``shots`` value; several shot
    counts or tries apply to solver heads only (the trained heads' few-shot loop is not wired yet).
    ``layers`` are the config's layers resolved against the store by the caller (absolute indices);
    ``selection`` is the plan's rule (holdout, cvK, none), which the solver heads apply as trained heads do.

    Raises:
        ConfigError: problems of the solver part, or a few-shot request trained heads cannot take.
    """
    trained, solvers = split_heads(config.heads.head)
    selects = float(config.data.holdout) > 0 or selection not in ("holdout", "none")  # a lambda can be chosen
    family = linear_family(config, trained, selects=selects)
    trained = family.trained
    shots = _shots(config.data.shots)
    tries = int(config.solvers.tries)
    trained_config = None
    if trained:
        if len(shots) > 1 or tries > 1:
            raise ConfigError(
                f"--shots {','.join(map(str, shots))} --tries {tries}: several shot counts or tries run for solver "
                f"heads (knn, ridge, logreg, ncm) only; trained heads ({', '.join(trained)}) take one --shots value. "
                "Run the trained heads in a separate sweep per shot count"
            )
        trained_config = dataclasses.replace(config, head=trained, shots=shots[0] if shots else None)
    if not solvers and not family.lstsq:
        return trained_config, []
    settings = SolverSettings(
        data_seed=config.data.data_seed, holdout=float(config.data.holdout), fraction=config.data.fraction,
        selection=selection,
        dtype=config.run.dtype, train_split=config.inputs.train_split, eval_split=config.inputs.eval_split,
        store_provenance=store_provenance, eval_provenance=eval_provenance,
    )
    common = dict(layers=layers, has_cls=meta.layout.cls_index is not None, shots=shots, tries=tries,
                  k=config.solvers.k, temperature=config.solvers.temperature, c_preset=config.solvers.c_preset,
                  settings=settings, standardize=config.solvers.standardize)
    specs = expand_solver_specs(solvers, tokens=config.inputs.tokens, **common) if solvers else []
    if family.lstsq:  # the linear heads' least-squares candidates, on the tokens those heads read
        extra = expand_solver_specs(family.lstsq, tokens=family.tokens, **common)
        specs += [s for s in extra if s.id not in {t.id for t in specs}]
    return trained_config, specs


def plan_block_solvers(
    blocks: Sequence[Any], meta: StoreMeta, *, layers_of: Callable[[Any], Sequence[int]], holdout: float,
    store_provenance: str, eval_provenance: str, selection: str = "holdout",
) -> tuple[list[Any], list[SolverSpec]]:
    """``plan_solvers`` over every block of a sweep (the config, or each ``[[grid]]`` table applied to it).

    Returns the blocks' trained parts (blocks without trained heads left out) and their solver specs,
    each spec once: tables that inherit a solver head from the file's top level ask for the same spec,
    and a row describes one run. Each block's solver heads read that block's own layers and options.
    """
    trained: list[Any] = []
    specs: dict[str, SolverSpec] = {}
    for block in blocks:
        part, block_specs = plan_solvers(dataclasses.replace(block, holdout=holdout), meta, layers=layers_of(block),
                                         store_provenance=store_provenance, eval_provenance=eval_provenance,
                                         selection=selection)
        if part is not None:
            trained.append(dataclasses.replace(part, holdout=block.data.holdout))
        for spec in block_specs:
            specs.setdefault(spec.id, spec)
    return trained, list(specs.values())


def check_solver_inputs(specs: Sequence[SolverSpec], data: RowData, num_classes: int) -> None:
    """Problems that only the resolved rows reveal, raised before anything is pooled or trained.

    Raises:
        ConfigError: fewer than 2 classes, or a k-NN k larger than its smallest bank (the fit
            rows that score the holdout, or a few-shot draw), all problems in one message.
    """
    if not specs:
        return
    check_two_classes(data.train_labels, data.train_rows, num_classes)  # trained heads get the same refusal
    problems = []
    for spec in specs:
        if spec.kind != "knn":
            continue
        fit = data.train_rows
        if spec.shots is not None:
            fit = fewshot_rows(data.train_labels, data.train_rows, shots=spec.shots, try_index=spec.try_index,
                               seed=spec.settings.data_seed)
        bank = len(fit) - max((len(f) for f in _selection(spec, data, fit).folds), default=0)  # a fold's fit rows
        k = max(spec.option("k"))
        if k > bank:
            problems.append(f"{spec.name}: k={k} is larger than the bank ({bank} training samples); "
                            f"use --k values <= {bank}")
    if problems:
        unique = list(dict.fromkeys(problems))
        raise ConfigError(f"{len(unique)} problem(s) in the sweep, nothing was trained:\n  - " + "\n  - ".join(unique))


def run_solver_configs(
    specs: Sequence[SolverSpec],
    *,
    store: FeatureStore,
    eval_store: FeatureStore,
    data: RowData,
    num_classes: int,
    device: torch.device,
    out: Path | None,
    results_file: str = RESULTS_FILE,
    save_heads: bool = True,
    say: Callable[[str], None] = lambda msg: None,
    held: list[Callable[[], None]] | None = None,
    protocol: Mapping[str, Any] | None = None,
    trust_store: bool = False,
) -> list[dict[str, Any]]:
    """Fit and score every spec; one results row each (appended to ``out/results_file`` as it finishes).

    ``held``: not None, the row and head writes are appended to it instead of run (the anchor check's hold).
    ``protocol`` holds keys every row's ``protocol`` section records besides its selection (the repeats);
    ``trust_store``: the store checks were skipped, recorded in every row's config as trained rows record it.

    Each row's ``input.features_from`` says where its pooled vectors came from: ``store`` (pooled
    from the store in this run), ``cache`` (read back from ``out/pooled`` after their sha256 check)
    or ``store+cache`` (the train and eval views differ).

    Raises:
        NonFiniteFeaturesError: a pooled row is inf/nan (names layer and rows).
        ConfigError: a class-less fit set, k larger than the bank.
    """
    if num_classes < 2:
        raise ConfigError(f"the store lists {num_classes} class; solver heads need at least 2 classes")
    cache = PooledCache(out / "pooled" if out is not None else None, say=say)  # entries checked by sha256
    by_layer: dict[int, list[SolverSpec]] = defaultdict(list)
    for s in specs:
        by_layer[s.layer].append(s)
    rows: list[dict[str, Any]] = []
    train_all = np.union1d(data.train_rows, data.holdout_rows)
    class_map = class_map_fingerprint(store.split(specs[0].settings.train_split).classes) if specs else ""
    for layer, group in by_layer.items():
        st = group[0].settings
        t0 = time.perf_counter()
        train_view = cache.get(store, st.train_split, layer, train_all)
        eval_view = cache.get(eval_store, st.eval_split, layer, data.eval_rows)
        pool_seconds = time.perf_counter() - t0
        cached = {train_view.from_cache, eval_view.from_cache}  # RUNDIR/pooled entries passed their sha256 check
        features_from = "store+cache" if len(cached) == 2 else "cache" if True in cached else "store"
        say(f"layer {layer}: pooled {len(train_all)} train + {len(data.eval_rows)} eval rows in {pool_seconds:.1f} s; "
            f"{len(group)} solver config(s)")
        dtype = _DTYPES[st.dtype]

        def tensor(view: Any, rows: np.ndarray, tokens: str, labels: np.ndarray) -> tuple[Tensor, Tensor]:
            x = torch.from_numpy(view.subset(rows).features(tokens)).to(device=device, dtype=dtype)  # noqa: B023
            return x, torch.from_numpy(labels[rows]).to(device)

        for spec in group:
            t1 = time.perf_counter()
            fit = data.train_rows
            if spec.shots is not None:
                fit = fewshot_rows(data.train_labels, data.train_rows, shots=spec.shots, try_index=spec.try_index,
                                   seed=st.data_seed)
            sel = _selection(spec, data, fit)
            fit_x, fit_y = tensor(train_view, fit, spec.tokens, data.train_labels)
            eval_x, eval_y = tensor(eval_view, data.eval_rows, spec.tokens, data.eval_labels)
            if sel.rule == "holdout":
                hold_x = hold_y = None
                if len(data.holdout_rows):
                    hold_x, hold_y = tensor(train_view, data.holdout_rows, spec.tokens, data.train_labels)
                inputs = SolverInputs(fit_x, fit_y, hold_x, hold_y, eval_x, eval_y, num_classes,
                                      refit_with_holdout=spec.shots is None)
                outcome = fit_solver(spec, inputs, say=say)
                num_holdout, num_refit = len(data.holdout_rows), int(inputs.refit_y.shape[0])
            else:  # cvK (or none): the folds of the fit rows select, the refit sees every fit row
                outcome = fit_cv(spec, sel, fit, fit_x, fit_y, eval_x, eval_y, num_classes, say=say)
                num_holdout, num_refit = 0, len(fit)
            if "warning" in outcome.details:
                say(f"warning: {spec.name}: {outcome.details['warning']}")
            head_file = None
            writes: list[Callable[[], None]] = []
            if out is not None and save_heads and outcome.state is not None:
                head_file = f"heads/{spec.id}.safetensors"
                (out / "heads").mkdir(parents=True, exist_ok=True)
                state = {k: v.to(torch.float32) for k, v in outcome.state.items()}  # heads are saved in float32
                writes.append(partial(save_head, out / head_file, state,
                                      _head_meta(spec, store, num_classes, fit_x.shape[1])))
            row = {
                "schema": RESULT_SCHEMA,
                "id": spec.id,
                "name": spec.name,
                "config": {**spec.hyperparameters(), "trust_store": trust_store,
                           **{k: v for k, v in st.to_json().items() if "provenance" not in k}},
                "store": _store_info(store),
                "eval_store": _store_info(eval_store),
                "input": {"tokens": spec.tokens, "layer_mix": "none", "layers": [spec.layer],  # as trained rows
                          "features_from": features_from},
                "data": {"num_classes": num_classes, "num_train": len(fit), "num_holdout": num_holdout,
                         "num_eval": len(data.eval_rows), "num_refit": num_refit, "class_map": class_map,
                         "tap": tap_name(store.meta.tap),  # the activations read: block outputs or one tap
                         **({"folds": [len(f) for f in sel.folds]} if sel.folds else {}),
                         "excluded_train": data.excluded_train, "excluded_eval": data.excluded_eval,
                         **shots_record(data.train_labels, fit, spec.shots)},
                "params": int(outcome.params),
                "flops": int(outcome.flops),
                "selected_epoch": 0,
                "metrics": {"holdout": None if outcome.holdout is None else outcome.holdout.to_json(),
                            "eval": outcome.eval.to_json(), "interval": INTERVAL_METHOD},
                "oracle": {"epoch": 0, "eval_top1": outcome.oracle_eval_top1},
                "final": {"epoch": 0, "eval_top1": outcome.eval.top1},
                "curves": {"train_loss": [], "holdout_top1": outcome.holdout_curve, "eval_top1": [outcome.eval.top1]},
                "stop": {"epochs_run": 0, "reason": "solver"},  # closed form or L-BFGS to convergence: no epochs
                "diverged": False,
                "head_file": head_file,
                "timing": {"seconds": time.perf_counter() - t1, "pool_seconds": pool_seconds, "device": str(device)},
                "solver": outcome.details,
                "features": {"layer": spec.layer, "pooling": spec.tokens, "final_norm": store.meta.final_norm,
                             "dtype": st.dtype},  # the representation: what k-NN and probes depend on most
            }
            if sel.rule == "holdout" and not num_holdout:  # as row_rule read such rows before they recorded one
                sel = DrawSelection("none", "no holdout rows to select on")
            row["protocol"] = selection_record(sel)  # every row kind names the rule that selected it
            if protocol:
                row["protocol"] = {**row.get("protocol", {}), **protocol}
            if out is not None:
                writes.append(partial(append_result, out / results_file, row))
            if held is not None:
                held.extend(writes)
            else:
                for write in writes:
                    write()
            rows.append(row)
        cache.release()  # the next layer's views replace these (IN-1k: ~4 GB per pooled view)
    return rows


def load_solver_head(path: str | Path, *, device: str = "cpu") -> tuple[Callable[[Tensor], Tensor], dict[str, Any]]:
    """A saved ridge / logreg / ncm head as ``logits(pooled features (n, D)) -> (n, C)`` and its metadata."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {})[HEAD_META_KEY])
    state = load_file(str(path), device=device)
    if meta["kind"] == "ncm":
        C = state["centroids"].shape[0]
        model = NcmModel(state["centre"], state["centroids"], torch.ones(C, dtype=torch.bool, device=device))
        if "input_mean" in state:  # standardize=True: the fit rows' scaler comes first
            mean, scale = state["input_mean"], state["input_scale"]
            return (lambda x: model.scores((x.to(mean.dtype) - mean) / scale)), meta
        return model.scores, meta
    weight, bias = state["weight"], state["bias"]
    return (lambda x: torch.addmm(bias, x.to(weight.dtype), weight.T)), meta


def _selection(spec: SolverSpec, data: RowData, fit: np.ndarray) -> DrawSelection:
    return draw_selection(spec.settings.selection, data.train_labels, fit, shots=spec.shots,
                          plan_folds=getattr(data, "folds", ()), seed=spec.settings.data_seed)


def _head_meta(spec: SolverSpec, store: FeatureStore, num_classes: int, in_dim: int) -> dict[str, Any]:
    return {
        "kind": spec.kind,
        "solver": True,
        "id": spec.id,
        "name": spec.name,
        "layer": spec.layer,
        "tokens": spec.tokens,
        "in_dim": in_dim,
        "num_classes": num_classes,
        "store_provenance": store.provenance,
        "backbone": store.meta.backbone.name,
        "classes": list(store.split(spec.settings.train_split).classes),
        "input": "pooled features in raw store coordinates (CLS / GAP of the patch tokens, float32)",
    }


def _shots(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def _store_info(store: FeatureStore) -> dict[str, Any]:
    return {"path": store.location, "provenance": store.provenance, "backbone": store.meta.backbone.name}
