"""The refit: every config of a group retrained on train + holdout rows for exactly the steps it was selected at.

The selection pass spends the holdout on choosing each config's epoch, so its model never sees
those rows; on a small training set that is a large share of the data. The refit repeats the same
protocol (per-config seed init, batch, lr schedule with the selection's total and warm-up steps,
epochs of the selection's step count) on train + holdout, drawn as one stream over data epochs,
and keeps each config's weights at the end of its selected epoch. Its eval score replaces the
selection model's; the holdout curves stay those of the selection (the refit has no holdout).
After cross-validation no single selection model has a per-epoch eval curve, so with ``eval_curve``
the refit runs the whole schedule and scores eval every epoch: the rows' curve and oracle are the
refit's, while the weights kept are still each config's at its selected epoch. Deterministic from
its start, so a group killed during the refit simply runs it again.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import Tensor

from epcache.probe.config.runspec import RunSpec
from epcache.probe.data.samples import RunData
from epcache.probe.data.stream import Batch, BatchStream
from epcache.probe.results.metrics import Metrics
from epcache.probe.train.trainer import GroupTrainer

__all__ = ["RefitResult", "endless", "refit_off", "refit_rows", "run_refit"]


@dataclass(frozen=True)
class RefitResult:
    """The refit of one config: its eval metrics, weights at its selected step and what it trained on."""

    eval: Metrics
    state: dict[str, Tensor] = field(repr=False)
    record: dict[str, Any] = field(default_factory=dict)  # the row's ``refit`` section
    eval_curve: list[float] | None = None  # eval top-1 after every epoch of the whole schedule (``eval_curve``)


def refit_rows(data: RunData) -> np.ndarray:
    """The rows the refit trains on: train and holdout together, sorted (chunk order reads them in order)."""
    return np.sort(np.concatenate([data.train_rows, data.holdout_rows])).astype(np.int64)


def refit_off(refit: bool) -> dict[str, Any]:
    """The ``refit`` section of a row whose final model is the selection model, with the reason."""
    reason = "--no-refit" if not refit else "no holdout: the selection model trained on every training row"
    return {"enabled": False, "reason": reason}


def run_refit(
    runs: Sequence[RunSpec],
    new_trainer: Callable[[], GroupTrainer],
    selected: Sequence[int],
    selection_eval: Sequence[Metrics] | None,
    stream: BatchStream,
    evaluation: BatchStream,
    *,
    steps_per_epoch: int,
    eval_curve: bool = False,
) -> list[RefitResult]:
    """Retrain ``runs`` from their seed init on ``stream`` (train + holdout, or every row after cv); score eval.

    ``new_trainer()`` builds the group's stacks from their seed init, exactly as the selection did.
    ``selected``: each config's selected epoch (0-based, sweep order within the group); the pass
    runs epochs of ``steps_per_epoch`` steps up to the largest and snapshots each config at its own.
    ``eval_curve``: run every epoch of the schedule instead, scoring eval after each (the curve).
    """
    p = runs[0].settings.protocol
    trainer = new_trainer()
    batches = endless(stream)
    curves: list[list[float]] = [[] for _ in runs]
    try:
        for epoch in range(p.epochs if eval_curve else max(selected) + 1):
            trainer.train_steps(itertools.islice(batches, steps_per_epoch), steps_per_epoch,
                                warmup_steps=p.warmup_steps, total_steps=p.total_steps)
            done = [k for k, e in enumerate(selected) if e == epoch]
            if done:
                trainer.keep(done)
            if eval_curve:
                for curve, top1 in zip(curves, trainer.top1(trainer.evaluate(evaluation)), strict=True):
                    curve.append(top1)
    finally:
        batches.close()  # stops the reader thread of the data epoch it was in
    trainer.load_selected()
    outcomes = trainer.outcomes(None, trainer.metrics(trainer.evaluate(evaluation, confusion=True)))
    results = []
    for k, o in enumerate(outcomes):
        epochs = selected[k] + 1
        results.append(RefitResult(eval=o.eval, state=o.state, eval_curve=curves[k] if eval_curve else None, record={
            "enabled": True,
            "train_size": len(stream.rows),
            "epochs": epochs,
            "steps": epochs * steps_per_epoch,
            "train_loss": o.train_loss[:epochs],
            # the selection model's eval, for comparison (cross-validation has no single selection model)
            "selection_eval_top1": None if selection_eval is None else selection_eval[k].top1,
            "eval_curve": eval_curve,  # True: the row's curves.eval_top1 and oracle are this refit's, every epoch
        }))
    return results


def endless(stream: BatchStream) -> Iterator[Batch]:
    """Shuffled training batches of data epochs 0, 1, 2, ... as one stream."""
    for data_epoch in itertools.count():
        yield from stream.train_epoch(data_epoch)
