"""Cross-validated epoch selection: each config trained K times on K-1 folds, scored on the fold it missed.

Every epoch of every fold scores its held-out fold; the counts and losses of one epoch are pooled
over the K folds, so the per-epoch selection top-1 counts every training row once, and the epoch
is chosen on that pooled curve by the same rule as a holdout's (:func:`epoch_improves`). Each fold
runs the protocol's schedule with epochs of its step count, drawn as one stream over data epochs
(the folds differ in size by a few rows). No checkpoints: cross-validation is chosen for small sets,
so a killed group simply runs again from its deterministic start.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from epcache.probe.data.stream import BatchStream
from epcache.probe.results.metrics import Metrics, MetricsAccumulator
from epcache.probe.results.ranking import epoch_improves
from epcache.probe.sweep.grid import RunSpec
from epcache.probe.train.refit import endless
from epcache.probe.train.trainer import GroupTrainer

__all__ = ["CrossValidation", "adopt", "cross_validate"]


@dataclass(frozen=True)
class CrossValidation:
    """Per config (sweep order within the group): pooled curves, the selected epoch and its pooled metrics."""

    train_loss: list[list[float]]  # mean over the folds, per epoch
    holdout_top1: list[list[float]]  # pooled over the folds: correct over every training row
    holdout_loss: list[list[float]]
    selected: list[int]  # 0-based epochs
    metrics: list[Metrics]  # pooled at the selected epoch


def cross_validate(
    runs: Sequence[RunSpec],
    new_trainer: Callable[[], GroupTrainer],
    rows: np.ndarray,
    folds: Sequence[np.ndarray],
    stream: Callable[[np.ndarray, bool], BatchStream],
    *,
    steps_per_epoch: int,
    on_fold: Callable[[int], None] = lambda fold: None,
) -> CrossValidation:
    """Train ``runs`` on each fold's complement of ``rows``, score the fold every epoch, select on the pooled curve.

    ``new_trainer()`` builds the group's stacks from their seed init (one per fold); ``stream(rows,
    training)`` opens a batch stream over those stored rows.
    """
    p = runs[0].settings.protocol
    pooled: list[list[MetricsAccumulator]] = []
    loss_sum = np.zeros((len(runs), p.epochs))
    trainer: GroupTrainer | None = None
    for f, fold in enumerate(folds):
        on_fold(f)
        trainer = new_trainer()
        held = stream(fold, False)
        batches = endless(stream(np.setdiff1d(rows, fold), True))
        try:
            for epoch in range(p.epochs):
                trainer.train_steps(itertools.islice(batches, steps_per_epoch), steps_per_epoch,
                                    warmup_steps=p.warmup_steps, total_steps=p.total_steps)
                accs = trainer.evaluate(held)
                if f == 0:
                    pooled.append(accs)
                else:
                    for into, acc in zip(pooled[epoch], accs, strict=True):
                        _add(into, acc)
        finally:
            batches.close()
        loss_sum += np.asarray(trainer.train_loss)
    assert trainer is not None
    top1 = [trainer.top1(accs) for accs in pooled]  # (epochs, K)
    loss = [trainer.loss(accs) for accs in pooled]
    selected = []
    for k in range(len(runs)):
        best, best_loss, pick = -math.inf, math.inf, 0
        for e in range(p.epochs):
            e_loss = loss[e][k] if math.isfinite(loss[e][k]) else math.inf
            if epoch_improves(top1[e][k], e_loss, best, best_loss):
                best, best_loss, pick = top1[e][k], e_loss, e
        selected.append(pick)
    at = [trainer.metrics(pooled[e]) for e in range(p.epochs)]
    return CrossValidation(
        train_loss=(loss_sum / len(folds)).tolist(),
        holdout_top1=[[top1[e][k] for e in range(p.epochs)] for k in range(len(runs))],
        holdout_loss=[[loss[e][k] for e in range(p.epochs)] for k in range(len(runs))],
        selected=selected,
        metrics=[at[selected[k]][k] for k in range(len(runs))],
    )


@torch.inference_mode()  # the counts were made under inference mode (GroupTrainer.evaluate)
def _add(into: MetricsAccumulator, other: MetricsAccumulator) -> None:
    """Pool another fold's counts into ``into`` (same configs, disjoint rows)."""
    into.correct1 += other.correct1
    into.correct5 += other.correct5
    into.total += other.total
    into.loss_sum += other.loss_sum


def adopt(trainer: GroupTrainer, cv: CrossValidation) -> None:
    """Give the group's trainer the pooled curves and selected epochs, as if its own pass had run them.

    The rows are then written as after a holdout selection. No single model of an epoch exists, so
    the eval curve left here is empty (NaN); the refit supplies it (and the oracle) when the sweep
    scores eval every epoch, and the final weights always come from the refit.
    """
    epochs = len(cv.train_loss[0]) if cv.train_loss else 0
    trainer.train_loss = [list(x) for x in cv.train_loss]
    trainer.holdout_top1 = [list(x) for x in cv.holdout_top1]
    trainer.holdout_loss = [list(x) for x in cv.holdout_loss]
    trainer.eval_top1 = [[math.nan] * epochs for _ in cv.selected]
    trainer.best_epoch = list(cv.selected)
    trainer.epoch = epochs - 1
