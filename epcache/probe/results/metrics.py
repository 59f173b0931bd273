"""Classification metrics from per-class counts over a whole split (never averaged per batch).

Every metric is computed from sample counts accumulated over the full split: per class, how
many samples there are and how many a config got right at top-1 / top-5. Averaging per-batch
accuracies would weight a short last batch like a full one; counts do not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NotRequired, TypedDict

import numpy as np
import torch
from torch import Tensor

from epcache.probe.results.intervals import wilson

__all__ = ["CONFUSION_MAX_CLASSES", "Metrics", "MetricsAccumulator", "MetricsJSON", "mean_std", "metrics_from_counts",
           "metrics_from_logits"]

# A C x C count matrix is stored in a row's eval metrics only up to this many classes: 100 classes are
# 10,000 counts per row; 1,000 classes would be a million, more than the rest of a sweep's results.
CONFUSION_MAX_CLASSES = 100


class MetricsJSON(TypedDict):
    n: int
    top1: float
    top5: float | None
    balanced_acc: float
    per_class: list[float | None]
    loss: float | None
    top1_ci: NotRequired[list[float]]  # [lo, hi] of top1 (intervals.INTERVAL_METHOD); rows before it lack it
    per_class_n: NotRequired[list[int]]  # samples per class behind per_class
    confusion: NotRequired[list[list[int]]]  # [true class][predicted class] counts; eval split, C <= 100 only


@dataclass(frozen=True)
class Metrics:
    """Accuracies of one config on one split, as fractions in [0, 1]."""

    n: int  # samples scored
    top1: float
    top5: float | None  # None when there are fewer than 5 classes
    balanced_acc: float  # mean of the per-class accuracies over classes with samples
    per_class: tuple[float | None, ...]  # top-1 per class; None for classes without samples
    loss: float | None = None  # mean cross-entropy; breaks accuracy ties on small holdouts
    per_class_n: tuple[int, ...] = ()  # samples per class: how much each per_class accuracy rests on

    @property
    def top1_ci(self) -> tuple[float, float]:
        """The 95% Wilson interval of top1, from the count of right answers it was computed from."""
        return wilson(round(self.top1 * self.n), self.n)
    confusion: tuple[tuple[int, ...], ...] | None = None  # [true][predicted] counts; see CONFUSION_MAX_CLASSES

    def to_json(self) -> MetricsJSON:
        return {
            "n": self.n,
            "top1": self.top1,
            "top1_ci": list(self.top1_ci),
            "top5": self.top5,
            "balanced_acc": self.balanced_acc,
            "per_class": list(self.per_class),
            "loss": self.loss,
            "per_class_n": list(self.per_class_n),
            **({"confusion": [list(r) for r in self.confusion]} if self.confusion is not None else {}),
        }


def metrics_from_counts(
    correct1: np.ndarray, correct5: np.ndarray | None, total: np.ndarray, loss_sum: float | None = None,
    confusion: np.ndarray | None = None,
) -> Metrics:
    """Metrics from per-class counts: correct at top-1, correct at top-5 (or None), samples, summed loss,
    and optionally the ``(C, C)`` [true][predicted] counts (kept only up to :data:`CONFUSION_MAX_CLASSES`)."""
    correct1 = np.asarray(correct1, np.int64)
    total = np.asarray(total, np.int64)
    n = int(total.sum())
    if n == 0:
        raise ValueError("no samples were scored")
    has = total > 0
    per_class = tuple(float(c / t) if t > 0 else None for c, t in zip(correct1.tolist(), total.tolist(), strict=True))
    return Metrics(
        n=n,
        top1=float(correct1.sum() / n),
        top5=None if correct5 is None else float(np.asarray(correct5, np.int64).sum() / n),
        balanced_acc=float(np.mean(correct1[has] / total[has])),
        per_class=per_class,
        loss=None if loss_sum is None else float(loss_sum / n),
        per_class_n=tuple(int(t) for t in total.tolist()),
        confusion=_confusion(confusion, len(total)),
    )


def _confusion(counts: np.ndarray | None, num_classes: int) -> tuple[tuple[int, ...], ...] | None:
    if counts is None or num_classes > CONFUSION_MAX_CLASSES:
        return None
    return tuple(tuple(int(v) for v in r) for r in np.asarray(counts, np.int64).reshape(num_classes, num_classes))


def metrics_from_logits(logits: Tensor, labels: Tensor, num_classes: int, *, confusion: bool = False) -> Metrics:
    """Metrics of one config from its logits ``(B, C)`` and labels ``(B,)`` (``confusion``: see the accumulator)."""
    acc = MetricsAccumulator(1, num_classes, logits.device, confusion=confusion)
    acc.update(logits.unsqueeze(0), labels)
    return acc.metrics()[0]


class MetricsAccumulator:
    """Per-class correct counts of K configs, kept on the device until read.

    Args:
        num_configs: K.
        num_classes: C.
        device: where the counts live (the logits' device).
        confusion: also count [true][predicted] pairs (one bincount per batch), for the eval split's
            confusion matrix in the report; ignored above :data:`CONFUSION_MAX_CLASSES` classes.
    """

    def __init__(self, num_configs: int, num_classes: int, device: torch.device, *, confusion: bool = False) -> None:
        self.num_classes = num_classes
        self.topk = 5 if num_classes >= 5 else 1
        self.correct1 = torch.zeros(num_configs, num_classes, dtype=torch.long, device=device)
        self.correct5 = torch.zeros(num_configs, num_classes, dtype=torch.long, device=device)
        self.total = torch.zeros(num_classes, dtype=torch.long, device=device)
        self.loss_sum = torch.zeros(num_configs, dtype=torch.float64, device=device)
        keep = confusion and num_classes <= CONFUSION_MAX_CLASSES
        self.confusion = torch.zeros(num_configs, num_classes * num_classes, dtype=torch.long, device=device) if keep \
            else None

    @torch.no_grad()
    def update(self, logits: Tensor, labels: Tensor) -> None:
        """Add a batch: ``logits (K, B, C)``, ``labels (B,)``."""
        top = logits.topk(self.topk, dim=-1).indices  # (K, B, k)
        hit = top == labels.view(1, -1, 1)
        self.correct1.index_add_(1, labels, hit[..., 0].long())
        self.correct5.index_add_(1, labels, hit.any(dim=-1).long())
        self.total.index_add_(0, labels, torch.ones_like(labels))
        K, B, C = logits.shape
        if self.confusion is not None:  # one bincount of config * C^2 + label * C + prediction
            cell = labels.view(1, -1) * C + top[..., 0] + torch.arange(K, device=labels.device).view(-1, 1) * (C * C)
            self.confusion += torch.bincount(cell.reshape(-1), minlength=K * C * C).view(K, C * C)
        ce = torch.nn.functional.cross_entropy(logits.reshape(K * B, C), labels.repeat(K), reduction="none")
        self.loss_sum += ce.view(K, B).sum(dim=1).to(torch.float64)

    def top1(self) -> np.ndarray:
        """Top-1 accuracy per config, ``(K,)`` (one host sync)."""
        n = max(1, int(self.total.sum()))
        return self.correct1.sum(dim=1).cpu().numpy() / n

    def loss(self) -> np.ndarray:
        """Mean cross-entropy per config, ``(K,)``."""
        n = max(1, int(self.total.sum()))
        return self.loss_sum.cpu().numpy() / n

    def metrics(self) -> list[Metrics]:
        """Full metrics per config."""
        c1, c5, tot = self.correct1.cpu().numpy(), self.correct5.cpu().numpy(), self.total.cpu().numpy()
        loss = self.loss_sum.cpu().numpy()
        five = self.num_classes >= 5
        conf = None if self.confusion is None else self.confusion.cpu().numpy()
        return [metrics_from_counts(c1[k], c5[k] if five else None, tot, float(loss[k]),
                                    None if conf is None else conf[k]) for k in range(len(c1))]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    arr = np.asarray(values, np.float64)
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0
