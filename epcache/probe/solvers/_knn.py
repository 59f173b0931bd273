"""k-NN evaluation: every k and every temperature from ONE top-max(k) search (docs/PROBE_FAMILIES.md §4).

The EP code runs a full similarity search per (k, T) pair (21 per variant); DINO v1 one per k.
Votes for every k and T only need the max(k) nearest neighbours and their similarities, so one
search serves the whole table: bank chunked (≤ 262,144 rows), queries batched (256), fp32
similarities, a running top-K merged per chunk (the query batch halves on out-of-memory), then
for each T the weights (softmax of s/T, DINOv2; or exp(s/T), DINO v1: same argmax) and for each
k a ``scatter_add`` of the first k weights into a (q, C) buffer, incrementally in k (never a
(q, K, C) one-hot).

``metric="euclidean", weighting="uniform"`` is scikit-learn's ``KNeighborsClassifier`` (brute
force, uniform votes, ties to the smallest class index), used for the parity test.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from epcache.errors import ConfigError
from epcache.probe.results.metrics import CONFUSION_MAX_CLASSES, Metrics, metrics_from_counts

__all__ = ["KNN_METRICS", "KNN_WEIGHTINGS", "KnnTable", "knn_search", "knn_table", "knn_vote"]

KNN_METRICS: tuple[str, ...] = ("cosine", "euclidean")
KNN_WEIGHTINGS: tuple[str, ...] = ("softmax", "exp", "uniform")
QUERY_BATCH = 256
BANK_CHUNK = 262_144


@dataclass(frozen=True)
class KnnTable:
    """Per-class counts for every (k, T) pair of one search."""

    ks: tuple[int, ...]
    temperatures: tuple[float, ...]
    correct1: np.ndarray  # [len(ks), len(temperatures), C] int64
    correct5: np.ndarray  # same, top-5 hits
    total: np.ndarray  # [C] queries per class
    confusion: np.ndarray | None = None  # [len(ks), len(temperatures), C * C] [true][predicted] counts, C <= 100

    def metrics(self, k: int, temperature: float) -> Metrics:
        """Metrics of one (k, T) pair."""
        i, j = self.ks.index(k), self.temperatures.index(temperature)
        five = self.total.shape[0] >= 5
        conf = None if self.confusion is None else self.confusion[i, j]
        return metrics_from_counts(self.correct1[i, j], self.correct5[i, j] if five else None, self.total,
                                   confusion=conf)

    def top1(self) -> np.ndarray:
        """``[len(ks), len(temperatures)]`` top-1 accuracy."""
        return self.correct1.sum(-1) / max(1, int(self.total.sum()))

    def to_json(self) -> dict[str, object]:
        five = self.total.shape[0] >= 5
        n = max(1, int(self.total.sum()))
        return {
            "ks": list(self.ks),
            "temperatures": list(self.temperatures),
            "top1": (self.correct1.sum(-1) / n).tolist(),
            "top5": (self.correct5.sum(-1) / n).tolist() if five else None,
        }


def knn_search(
    bank: Tensor,
    queries: Tensor,
    k: int,
    *,
    metric: str = "cosine",
    query_batch: int = QUERY_BATCH,
    bank_chunk: int = BANK_CHUNK,
) -> tuple[Tensor, Tensor]:
    """Top-``k`` neighbours of every query: similarities ``(q, k)`` (descending) and bank indices.

    ``cosine`` expects L2-normalised rows and ranks by the dot product; ``euclidean`` ranks by the
    negative squared distance (returned as the similarity). Results are in the inputs' dtype.
    """
    if k > bank.shape[0]:
        raise ConfigError(f"k={k} is larger than the bank ({bank.shape[0]} training samples); use a smaller k")
    sims, idxs = [], []
    bank_sq = (bank * bank).sum(1) if metric == "euclidean" else None
    for q0 in range(0, queries.shape[0], query_batch):
        q = queries[q0 : q0 + query_batch]
        best_s: Tensor | None = None
        best_i: Tensor | None = None
        for b0 in range(0, bank.shape[0], bank_chunk):
            b = bank[b0 : b0 + bank_chunk]
            s = q @ b.T  # (q, chunk), in the inputs' dtype (fp32 or fp64, never half)
            if bank_sq is not None:
                s = 2 * s - bank_sq[b0 : b0 + bank_chunk] - (q * q).sum(1, keepdim=True)
            top_s, top_i = s.topk(min(k, s.shape[1]), dim=1)
            top_i = top_i + b0
            if best_s is not None and best_i is not None:
                top_s, pos = torch.cat([best_s, top_s], 1).topk(k, dim=1)
                top_i = torch.cat([best_i, top_i], 1).gather(1, pos)
            best_s, best_i = top_s, top_i
        assert best_s is not None and best_i is not None
        sims.append(best_s)
        idxs.append(best_i)
    return torch.cat(sims), torch.cat(idxs)


def knn_vote(
    sims: Tensor,
    neighbour_labels: Tensor,
    *,
    ks: Sequence[int],
    temperature: float,
    num_classes: int,
    weighting: str = "softmax",
) -> list[Tensor]:
    """Class scores ``(q, C)`` for each k of ``ks`` (ascending) from one neighbour list.

    Weights are computed once for the max-k list and summed incrementally: scores for k2 are
    scores for k1 plus the neighbours k1..k2.
    """
    s = sims.to(torch.float32) if sims.dtype == torch.float16 else sims
    if weighting == "softmax":
        w = torch.softmax(s / temperature, dim=1)
    elif weighting == "exp":
        w = torch.exp(s / temperature)
    else:
        w = torch.ones_like(s)
    scores = torch.zeros(s.shape[0], num_classes, dtype=w.dtype, device=w.device)
    out, done = [], 0
    for k in ks:
        scores.scatter_add_(1, neighbour_labels[:, done:k], w[:, done:k])
        done = k
        out.append(scores.clone())
    return out


def knn_table(
    bank: Tensor,
    bank_labels: Tensor,
    queries: Tensor,
    query_labels: Tensor,
    *,
    ks: Sequence[int],
    temperatures: Sequence[float],
    num_classes: int,
    metric: str = "cosine",
    weighting: str = "softmax",
    query_batch: int = QUERY_BATCH,
    bank_chunk: int = BANK_CHUNK,
    confusion: bool = False,
) -> KnnTable:
    """Top-1/top-5 counts for every (k, T) from one top-max(k) search per query batch.

    ``confusion`` also counts [true][predicted] pairs for every (k, T) (up to
    :data:`~epcache.probe.results.metrics.CONFUSION_MAX_CLASSES` classes): the pair chosen on the
    holdout is known only after this pass, and the counts cost one bincount per vote.

    ``cosine`` L2-normalises bank and queries first. Ties in the vote go to the smallest class
    index (``argmax``), as scikit-learn's uniform vote does.

    Raises:
        ConfigError: a k larger than the bank, k < 1, T <= 0, unknown metric or weighting.
    """
    check_knn_options(ks, temperatures, metric, weighting, bank_size=bank.shape[0])
    ks_sorted = tuple(sorted(set(ks)))
    temps = tuple(dict.fromkeys(float(t) for t in temperatures))
    if metric == "cosine":
        bank = torch.nn.functional.normalize(bank, dim=1)
        queries = torch.nn.functional.normalize(queries, dim=1)
    C, kmax = num_classes, ks_sorted[-1]
    top = min(5, C)
    c1 = torch.zeros(len(ks_sorted), len(temps), C, dtype=torch.long, device=bank.device)
    c5 = torch.zeros_like(c1)
    total = torch.zeros(C, dtype=torch.long, device=bank.device)
    conf = (torch.zeros(len(ks_sorted), len(temps), C * C, dtype=torch.long, device=bank.device)
            if confusion and C <= CONFUSION_MAX_CLASSES else None)
    q0 = 0
    while q0 < queries.shape[0]:
        q, y = queries[q0 : q0 + query_batch], query_labels[q0 : q0 + query_batch]
        try:
            sims, idx = knn_search(bank, q, kmax, metric=metric, query_batch=query_batch, bank_chunk=bank_chunk)
        except torch.OutOfMemoryError:
            if query_batch == 1:
                raise
            query_batch //= 2  # the similarity block is query_batch x bank_chunk: halve and retry this batch
            if bank.device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        q0 += q.shape[0]
        labels = bank_labels[idx]  # (q, K): gathered once for every k and T
        total.index_add_(0, y, torch.ones_like(y))
        for j, t in enumerate(temps):
            for i, scores in enumerate(knn_vote(sims, labels, ks=ks_sorted, temperature=t, num_classes=C,
                                                weighting=weighting)):
                pred = scores.argmax(1)
                hit1 = pred == y
                if conf is not None:
                    conf[i, j] += torch.bincount(y * C + pred, minlength=C * C)
                v5, i5 = scores.topk(top, dim=1)
                hit5 = ((i5 == y[:, None]) & (v5 > 0)).any(1)  # a class without votes is no top-5 hit (k < 5)
                c1[i, j].index_add_(0, y, hit1.long())
                c5[i, j].index_add_(0, y, hit5.long())
    return KnnTable(ks_sorted, temps, c1.cpu().numpy(), c5.cpu().numpy(), total.cpu().numpy(),
                    None if conf is None else conf.cpu().numpy())


def knn_predict(
    bank: Tensor,
    bank_labels: Tensor,
    queries: Tensor,
    *,
    k: int,
    temperature: float = 0.07,
    num_classes: int,
    metric: str = "cosine",
    weighting: str = "softmax",
) -> Tensor:
    """Predicted class per query for one (k, T) (the same search and vote as :func:`knn_table`)."""
    check_knn_options([k], [temperature], metric, weighting, bank_size=bank.shape[0])
    if metric == "cosine":
        bank = torch.nn.functional.normalize(bank, dim=1)
        queries = torch.nn.functional.normalize(queries, dim=1)
    sims, idx = knn_search(bank, queries, k, metric=metric)
    (scores,) = knn_vote(sims, bank_labels[idx], ks=[k], temperature=temperature, num_classes=num_classes,
                         weighting=weighting)
    return scores.argmax(1)


def check_knn_options(
    ks: Sequence[int], temperatures: Sequence[float], metric: str, weighting: str, *, bank_size: int | None = None
) -> None:
    """Raise one ConfigError naming what is wrong with a k-NN request."""
    problems = []
    if not ks or any(k < 1 for k in ks):
        problems.append(f"k must be >= 1, got {list(ks)}")
    if bank_size is not None and ks and max(ks) > bank_size:
        problems.append(f"k={max(ks)} is larger than the bank ({bank_size} training samples); use k <= {bank_size}")
    if not temperatures or any(not t > 0 for t in temperatures):
        problems.append(f"temperature must be > 0, got {list(temperatures)}")
    if metric not in KNN_METRICS:
        problems.append(f"unknown k-NN metric {metric!r}; choose {', '.join(KNN_METRICS)}")
    if weighting not in KNN_WEIGHTINGS:
        problems.append(f"unknown k-NN weighting {weighting!r}; choose {', '.join(KNN_WEIGHTINGS)}")
    if problems:
        raise ConfigError("; ".join(problems))
