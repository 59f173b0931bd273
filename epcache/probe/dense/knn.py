"""dense-knn: every eval patch takes the majority label of its k nearest training patches.

The memory is every LABELLED training patch of one feature set (a patch whose majority label is the
ignore index is left out: it has no label to vote with). For each metric one tiled search at the
largest k (``epcache.probe.solvers.knn_search``) serves every smaller k: the first k entries of a
top-K list are the top-k list, so a grid of k in {1, 3, 10, 30} costs one search per metric, and the
votes are summed incrementally in k (``knn_vote``, uniform weights). Ties in the vote go to the lowest
class index (``argmax``), as scikit-learn's uniform ``KNeighborsClassifier``.

Metrics: ``cosine`` ranks by the dot product of L2-normalised features; ``l2`` by the squared
Euclidean distance of the features as given (or L2-normalised first with ``normalize=True``, which
makes its ranking the cosine one). Predictions are per patch, upsampled to the pixels by nearest
neighbour and scored there (docs/DENSE.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from epcache.errors import ConfigError
from epcache.probe.dense.inputs import (
    DenseData,
    DenseResult,
    as_tensor,
    holdout_split,
    labelled_patches,
    score_patch_labels,
)
from epcache.probe.solvers import knn_search, knn_vote

__all__ = ["DENSE_KNN_KS", "DENSE_KNN_METRICS", "dense_knn_predict", "run_dense_knn"]

DENSE_KNN_KS: tuple[int, ...] = (1, 3, 10, 30)
DENSE_KNN_METRICS: tuple[str, ...] = ("cosine", "l2")
_SEARCH_METRIC = {"cosine": "cosine", "l2": "euclidean"}


def dense_knn_predict(
    memory: Tensor,
    memory_labels: Tensor,
    queries: Tensor,
    *,
    ks: Sequence[int],
    metrics: Sequence[str],
    num_classes: int,
    normalize: bool = False,
) -> dict[tuple[str, int], Tensor]:
    """Majority-vote class of every query for every ``(metric, k)``, one search per metric.

    Raises:
        ConfigError: an unknown metric, k < 1, or k larger than the memory.
    """
    bad = [m for m in metrics if m not in _SEARCH_METRIC]
    if bad or not metrics:
        raise ConfigError(f"unknown dense-knn metric {bad or list(metrics)}; choose {', '.join(DENSE_KNN_METRICS)}")
    ks_sorted = sorted(set(int(k) for k in ks))
    if not ks_sorted or ks_sorted[0] < 1:
        raise ConfigError(f"dense-knn k must be >= 1, got {list(ks)}")
    if normalize:
        memory = torch.nn.functional.normalize(memory, dim=1)
        queries = torch.nn.functional.normalize(queries, dim=1)
    out: dict[tuple[str, int], Tensor] = {}
    for metric in dict.fromkeys(metrics):
        bank, q = memory, queries
        if metric == "cosine" and not normalize:
            bank = torch.nn.functional.normalize(memory, dim=1)
            q = torch.nn.functional.normalize(queries, dim=1)
        sims, idx = knn_search(bank, q, ks_sorted[-1], metric=_SEARCH_METRIC[metric])
        votes = knn_vote(sims, memory_labels[idx], ks=ks_sorted, temperature=1.0, num_classes=num_classes,
                         weighting="uniform")
        for k, scores in zip(ks_sorted, votes, strict=True):
            out[(metric, k)] = scores.argmax(1)  # first maximum: ties to the lowest class
    return out


def _patch_preds(data: DenseData, mem_rows: np.ndarray, query_feats: np.ndarray, *, ks: Sequence[int],
                 metrics: Sequence[str], normalize: bool, dtype: torch.dtype) -> dict[tuple[str, int], np.ndarray]:
    feats, labels = labelled_patches(data.train_feats[mem_rows], data.train_patch_labels[mem_rows], data.ignore_index)
    grid = query_feats.shape[:3]
    preds = dense_knn_predict(as_tensor(feats, dtype), torch.from_numpy(labels),
                              as_tensor(query_feats.reshape(-1, query_feats.shape[-1]), dtype), ks=ks,
                              metrics=metrics, num_classes=data.num_classes, normalize=normalize)
    return {key: p.numpy().reshape(grid) for key, p in preds.items()}


def run_dense_knn(
    data: DenseData,
    *,
    ks: Sequence[int] = DENSE_KNN_KS,
    metrics: Sequence[str] = DENSE_KNN_METRICS,
    normalize: bool = False,
    holdout: float = 0.1,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> DenseResult:
    """Choose ``(metric, k)`` by holdout mIoU (memory = the other train images), then score the eval split
    with the memory of all training images. A tie in holdout mIoU keeps the earlier grid entry
    (metrics in the given order, k ascending)."""
    fit, hold = holdout_split(data.train_feats.shape[0], data.train_groups, fraction=holdout, seed=seed)
    table: list[tuple[dict[str, object], float]] = []
    held = _patch_preds(data, fit, data.train_feats[hold], ks=ks, metrics=metrics, normalize=normalize, dtype=dtype)
    for (metric, k), pred in held.items():
        m, _ = score_patch_labels(pred, data.train_labels[hold], num_classes=data.num_classes,
                                  ignore_index=data.ignore_index)
        table.append(({"metric": metric, "k": k}, m.miou))
    best = max(range(len(table)), key=lambda i: (np.nan_to_num(table[i][1], nan=-1.0), -i))
    chosen = dict(table[best][0])
    metric, k = str(chosen["metric"]), int(chosen["k"])  # type: ignore[call-overload]
    pred = _patch_preds(data, np.arange(data.train_feats.shape[0]), data.eval_feats, ks=[k], metrics=[metric],
                        normalize=normalize, dtype=dtype)[(metric, k)]
    metrics_eval, preview = score_patch_labels(pred, data.eval_labels, num_classes=data.num_classes,
                                               ignore_index=data.ignore_index)
    chosen["normalize"] = normalize
    return DenseResult("dense-knn", metrics_eval, chosen, table, preview)
