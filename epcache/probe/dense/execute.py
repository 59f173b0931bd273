"""Run a sweep's :class:`DenseSpec` s: read patch tokens and masks once per layer, fit, write one row each.

A dense row is a results row like any other (``id``, ``name``, ``kind``, ``head``, ``metrics.holdout``
and ``metrics.eval``, appended to ``results.jsonl`` and skipped on a rerun), marked ``task: "dense"``
so that the ranking scores it by holdout mIoU among dense rows only. Its eval predictions for the
first few images go beside it, ``dense/<id>.npz`` (uint8/uint16, no pickle, written atomically
BEFORE the row, so a row never names a missing file). Heads without a grid (Hummingbird) are scored
on the same image holdout too, so every dense row ranks by a holdout, never by eval.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from epcache.probe.dense.inputs import DenseData, DenseResult, holdout_split
from epcache.probe.dense.listing import dense_head_params
from epcache.probe.dense.registry import DENSE_HEADS, run_dense_head
from epcache.probe.dense.route import DensePlan, DenseSpec
from epcache.probe.results.predictions import DENSE_DIR, write_predictions
from epcache.probe.results.rows import RESULT_SCHEMA, append_result
from epcache.store import FeatureStore
from epcache.store.layout.dense import DenseInfo

__all__ = ["DENSE_SELECTION", "run_dense_specs"]
DENSE_SELECTION = "holdout mIoU on 10% of the train images (whole images, seeded); ties: the earlier grid entry"


def run_dense_specs(plan: DensePlan, specs: Sequence[DenseSpec], *, store: FeatureStore, eval_store: FeatureStore,
                    train_split: str, eval_split: str, out: Path | None, results_file: str,
                    say: Callable[[str], None]) -> list[dict[str, Any]]:
    """Fit ``specs`` (those not finished yet) and write their rows; input by input, each layer read once."""
    rows: list[dict[str, Any]] = []
    info = plan.info
    read: dict[tuple[str, int], np.ndarray] = {}  # (split side, layer) -> patches, shared by the mixes

    def patches(side: str, layer: int) -> np.ndarray:
        if (side, layer) not in read:
            read[(side, layer)] = (_patches(store, train_split, layer) if side == "train" else
                                   _patches(eval_store, eval_split, layer))
        return read[(side, layer)]

    for layers, mix in dict.fromkeys((s.layers, s.mix) for s in specs):
        mine = [s for s in specs if (s.layers, s.mix) == (layers, mix)]
        t0 = time.perf_counter()
        train_x, eval_x = (_join([patches(side, ly) for ly in layers], mix) for side in ("train", "eval"))
        n_train, views = train_x.shape[0], train_x.shape[1]
        masks = {0: store.read_masks(train_split, slice(None), 0)}
        eval_y = eval_store.read_masks(eval_split, slice(None), 0).astype(np.int64)
        read_s = time.perf_counter() - t0
        for spec in mine:
            if spec.views > 1:
                for v in range(1, views):
                    masks.setdefault(v, store.read_masks(train_split, slice(None), v))
            used = range(spec.views)
            data = DenseData(
                train_feats=np.concatenate([train_x[:, v] for v in used]),
                train_labels=np.concatenate([masks[v] for v in used]).astype(np.int64),
                eval_feats=eval_x[:, 0], eval_labels=eval_y, num_classes=len(info.classes),
                ignore_index=info.ignore_index,
                train_groups=np.tile(np.arange(n_train), len(used)) if spec.views > 1 else None)
            t1 = time.perf_counter()
            say(f"dense: {spec.name} ({n_train} train images x {len(used)} view(s), {eval_x.shape[0]} eval)")
            result = run_dense_head(spec.kind, data, spec.params)
            holdout = _holdout_scores(spec, data, result)
            row = _row(spec, result, holdout, info, store, eval_store, n_train, eval_x.shape[0], dim=train_x.shape[-1],
                       seconds=time.perf_counter() - t1, read_seconds=read_s)
            if out is not None:
                _write_predictions(out / row["dense_file"], result, eval_y)
                append_result(out / results_file, row)
            rows.append(row)
    return rows


def _join(parts: list[np.ndarray], mix: str) -> np.ndarray:
    """One layer's ``[n, V, h, w, D]`` patches, or several joined patch by patch: channels side by side or averaged."""
    if mix == "none":
        return parts[0]
    return np.concatenate(parts, axis=-1) if mix == "concat" else np.mean(parts, axis=0, dtype=np.float32)


def _patches(store: FeatureStore, split: str, layer: int) -> np.ndarray:
    """``[n, V, h, w, D]`` float32 patch tokens of every row and view of ``split``."""
    n = store.split(split).num_samples
    x = store.read_rows(split, layer, np.arange(n))
    lm = store.meta.for_layer(layer)
    h, w = lm.layout.grid
    return np.asarray(x[:, :, lm.layout.num_prefix:], np.float32).reshape(x.shape[0], x.shape[1], h, w, -1)


def _holdout_scores(spec: DenseSpec, data: DenseData, result: DenseResult) -> list[dict[str, Any]]:
    """Every holdout score: the grid's, or for a head without a grid its own score on the same image holdout."""
    if result.holdout:
        return [{"params": _plain(p), "miou": float(m)} for p, m in result.holdout]
    defaults = {**DENSE_HEADS[spec.kind].defaults, **spec.params}
    seed = int(defaults.get("seed", 0))  # type: ignore[call-overload]
    fit, hold = holdout_split(data.train_feats.shape[0], data.train_groups, fraction=0.1, seed=seed)
    if data.train_groups is not None:  # the held-out images' other views may not score: view 0 rows only
        hold = hold[hold < int(data.train_groups.max()) + 1]
    sub = DenseData(data.train_feats[fit], data.train_labels[fit], data.train_feats[hold], data.train_labels[hold],
                    data.num_classes, data.ignore_index,
                    None if data.train_groups is None else data.train_groups[fit])
    return [{"params": _plain(result.chosen), "miou": float(run_dense_head(spec.kind, sub, spec.params).miou)}]


def _row(spec: DenseSpec, result: DenseResult, holdout: list[dict[str, Any]], info: DenseInfo,
         store: FeatureStore, eval_store: FeatureStore, n_train: int, n_eval: int, *, dim: int, seconds: float,
         read_seconds: float) -> dict[str, Any]:
    best = max(h["miou"] for h in holdout)
    per_class = {name: _num(v) for name, v in zip(info.classes, result.per_class_iou.tolist(), strict=False)}
    base = result.baseline
    return {
        "schema": RESULT_SCHEMA,
        "task": "dense",
        "id": spec.id,
        "name": spec.name,
        "kind": spec.kind,
        "head": spec.head,
        "seed_group": spec.id,
        "config": {"kind": spec.kind, "head": spec.head,
                   **({"layer": spec.layers[0]} if spec.mix == "none" else {"layers": list(spec.layers),
                                                                           "mix": spec.mix}),
                   **_plain(spec.params)},
        "chosen": _plain(result.chosen),
        "seed": int({**DENSE_HEADS[spec.kind].defaults, **spec.params}.get("seed", 0)),  # type: ignore[call-overload]
        "store": _store_info(store),
        "eval_store": _store_info(eval_store),
        "input": {"tokens": "patches", "layers": list(spec.layers), "layer_mix": spec.mix, "views": spec.views},
        "data": {"num_classes": len(info.classes), "num_train": n_train, "num_eval": n_eval,
                 "class_map": list(info.classes), "ignore_index": info.ignore_index, "mask_size": list(info.size)},
        "params": dense_head_params(spec.kind, dim, len(info.classes)),  # learned numbers, as `epcache heads` counts
        "metrics": {
            "holdout": {"miou": best},
            "eval": {"miou": float(result.miou), "pixel_acc": float(result.pixel_acc), "per_class_iou": per_class,
                     "majority_miou": None if base is None else float(base.miou),
                     "majority_pixel_acc": None if base is None else float(base.pixel_acc)},
        },
        "holdout_scores": holdout,
        "protocol": {"selection": DENSE_SELECTION},
        "dense_file": f"{DENSE_DIR}/{spec.id}.npz",
        "timing": {"seconds": seconds, "read_seconds": read_seconds},
    }


def _write_predictions(path: Path, result: DenseResult, eval_labels: np.ndarray) -> None:
    pred = np.zeros((0, *eval_labels.shape[1:]), np.int64) if result.predictions is None else result.predictions
    write_predictions(path, pred, eval_labels[: pred.shape[0]])


def _store_info(store: FeatureStore) -> dict[str, Any]:
    return {"path": store.location, "provenance": store.provenance, "backbone": store.meta.backbone.name}


def _plain(obj: Any) -> Any:
    """JSON-able copy: tuples and numpy scalars as lists and numbers."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _num(x: float) -> float | None:
    return None if x != x else float(x)  # NaN: a class absent from ground truth and prediction
