"""Which stored rows train, which select, which are skipped: holdout and low-shot subsets.

Selection must be honest: a seeded, stratified part of the *train* split (the holdout) picks
every config's epoch and the sweep's best config, so the eval split never influences what is
reported. Low-shot subsets (``shots`` per class or a ``fraction`` of each class) are drawn from
what remains after the holdout is removed, so the holdout is the same for every shot count of
one ``data_seed`` and low-shot results stay comparable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from epcache.errors import ConfigError, CorruptStoreError

__all__ = ["SKIPPED_LABEL", "TrainSubsets", "check_labels", "split_train"]

SKIPPED_LABEL = -1  # extraction marks images it could not decode with this label


@dataclass(frozen=True)
class TrainSubsets:
    """Stored-row indices of the train split, each sorted ascending (chunk order reads them in order)."""

    train: np.ndarray  # rows the heads are trained on
    holdout: np.ndarray  # rows that select epoch and config (empty when holdout is 0)
    notes: tuple[str, ...] = ()  # things the user should know (classes short of shots, ...)


def check_labels(labels: np.ndarray, num_classes: int, *, split: str, where: str) -> np.ndarray:
    """Boolean mask of usable rows; rows labelled ``SKIPPED_LABEL`` (-1) are not usable.

    Raises:
        CorruptStoreError: a label is >= ``num_classes`` or below -1.
        ConfigError: no usable row is left (an empty split).
    """
    labels = np.asarray(labels)
    bad = (labels >= num_classes) | (labels < SKIPPED_LABEL)
    if bad.any():
        values = sorted(set(labels[bad].tolist()))[:10]
        raise CorruptStoreError(
            f"{where}: split {split!r} has {int(bad.sum())} label(s) outside [0, {num_classes}) (e.g. {values}) "
            f"but lists {num_classes} classes; the labels or the class list are wrong. Re-extract the split"
        )
    usable = labels >= 0
    if not usable.any():
        raise ConfigError(
            f"{where}: split {split!r} has no usable samples ({len(labels)} rows, all skipped or none at all); "
            "extract it again or choose another split"
        )
    return usable


def split_train(
    labels: np.ndarray,
    usable: np.ndarray,
    *,
    classes: Sequence[str],
    holdout: float,
    seed: int,
    shots: int | None = None,
    fraction: float | None = None,
) -> TrainSubsets:
    """Seeded, stratified holdout, then an optional stratified low-shot subset of the rest.

    Per class with ``n`` usable samples the holdout takes ``round(holdout · n)`` of them (half
    rounds up). The random draws depend only on ``seed`` and the labels.

    Args:
        labels: train labels in stored order.
        usable: mask of rows that may be used (label >= 0 and in written blocks).
        classes: class names (for messages), ``len(classes)`` = C.
        holdout: fraction held out, in [0, 1).
        seed: the sweep's data seed.
        shots: keep at most this many training samples per class.
        fraction: keep this fraction (at least 1) of each class's training samples.

    Raises:
        ConfigError: a class present in the split would end up with no training or no holdout
            samples; the message lists them and the fix.
    """
    labels = np.asarray(labels)
    hold_seq, shot_seq = np.random.SeedSequence(seed).spawn(2)
    hold_rng, shot_rng = np.random.default_rng(hold_seq), np.random.default_rng(shot_seq)
    train_rows: list[np.ndarray] = []
    hold_rows: list[np.ndarray] = []
    empty: list[str] = []
    short: list[str] = []
    absent = 0
    for c in range(len(classes)):
        rows = np.flatnonzero((labels == c) & usable)
        n = len(rows)
        if n == 0:
            absent += 1
            continue
        rows = hold_rng.permutation(rows)
        n_hold = int(np.floor(holdout * n + 0.5)) if holdout > 0 else 0
        if holdout > 0 and (n_hold == 0 or n_hold == n):
            empty.append(f"{classes[c]!r} ({n} sample(s) -> {n_hold} holdout, {n - n_hold} train)")
            continue
        hold_rows.append(rows[:n_hold])
        rest = rows[n_hold:]
        if shots is not None or fraction is not None:
            rest = shot_rng.permutation(rest)
            keep = shots if shots is not None else max(1, int(np.floor(fraction * len(rest) + 0.5)))  # type: ignore[operator]
            if len(rest) < keep:
                short.append(str(classes[c]))
            rest = rest[:keep]
        train_rows.append(rest)
    if empty:
        listed = "; ".join(empty[:10]) + (f"; and {len(empty) - 10} more" if len(empty) > 10 else "")
        raise ConfigError(
            f"holdout={holdout} leaves {len(empty)} class(es) with no holdout or no training samples: {listed}. "
            "Use a larger --holdout, or --holdout 0 to train on all of train (then each config reports its last "
            "epoch and configs are ranked on the eval split, which is not an honest selection)"
        )
    notes = []
    if absent:
        notes.append(f"{absent} of {len(classes)} classes have no usable sample in the train split")
    if short:
        notes.append(f"{len(short)} class(es) have fewer than {shots} training samples and use all they have")
    train = np.sort(np.concatenate(train_rows)) if train_rows else np.zeros(0, np.int64)
    hold = np.sort(np.concatenate(hold_rows)) if hold_rows else np.zeros(0, np.int64)
    return TrainSubsets(train=train.astype(np.int64), holdout=hold.astype(np.int64), notes=tuple(notes))
