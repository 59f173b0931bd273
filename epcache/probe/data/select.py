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

__all__ = ["HOLDOUT_RULE", "SKIPPED_LABEL", "VTAB_RULE", "TrainSubsets", "check_labels", "holdout_count",
           "split_train", "split_vtab"]

HOLDOUT_RULE = "per class round(holdout x n), at least 1 when n >= 2, at most n - 1"
VTAB_RULE = ("vtab1k: 1,000 train rows (all when the split has exactly 1,000, else a stratified draw), split "
             "stratified into 800 train / 200 holdout (largest remainder per class, each class keeps a training row)")

SKIPPED_LABEL = -1  # extraction marks images it could not decode with this label


@dataclass(frozen=True)
class TrainSubsets:
    """Stored-row indices of the train split, each sorted ascending (chunk order reads them in order)."""

    train: np.ndarray  # rows the heads are trained on
    holdout: np.ndarray  # rows that select epoch and config (empty when holdout is 0)
    notes: tuple[str, ...] = ()  # things the user should know (classes short of shots, ...)
    pool: np.ndarray | None = None  # rows outside the holdout before the low-shot subset (solver heads draw from it)


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

    Per class with ``n`` usable samples the holdout takes :func:`holdout_count` of them:
    ``round(holdout · n)`` (half up), at least 1 when ``n >= 2`` and at most ``n - 1``, so every
    class keeps a training sample and every class that can spare one is held out. Classes where
    the rule had to step in are named in ``notes`` (summarised when long). The random draws depend
    only on ``seed`` and the labels.

    Args:
        labels: train labels in stored order.
        usable: mask of rows that may be used (label >= 0 and in written blocks).
        classes: class names (for messages), ``len(classes)`` = C.
        holdout: fraction held out, in [0, 1).
        seed: the sweep's data seed.
        shots: keep at most this many training samples per class.
        fraction: keep this fraction (at least 1) of each class's training samples.

    """
    labels = np.asarray(labels)
    hold_seq, shot_seq = np.random.SeedSequence(seed).spawn(2)
    hold_rng, shot_rng = np.random.default_rng(hold_seq), np.random.default_rng(shot_seq)
    train_rows: list[np.ndarray] = []
    pool_rows: list[np.ndarray] = []
    hold_rows: list[np.ndarray] = []
    raised: list[str] = []  # classes whose round(holdout * n) was 0 and got 1
    single: list[str] = []  # classes with one sample: trained on, not held out
    short: list[str] = []
    absent = 0
    for c in range(len(classes)):
        rows = np.flatnonzero((labels == c) & usable)
        n = len(rows)
        if n == 0:
            absent += 1
            continue
        rows = hold_rng.permutation(rows)
        n_hold = holdout_count(holdout, n)
        if holdout > 0 and n == 1:
            single.append(str(classes[c]))
        elif holdout > 0 and int(np.floor(holdout * n + 0.5)) == 0:
            raised.append(str(classes[c]))
        hold_rows.append(rows[:n_hold])
        rest = rows[n_hold:]
        pool_rows.append(rest)
        if shots is not None or fraction is not None:
            rest = shot_rng.permutation(rest)
            keep = shots if shots is not None else max(1, int(np.floor(fraction * len(rest) + 0.5)))  # type: ignore[operator]
            if len(rest) < keep:
                short.append(str(classes[c]))
            rest = rest[:keep]
        train_rows.append(rest)
    notes = []
    if raised:
        notes.append(f"holdout: too few samples for {holdout:g} in {_some(raised, len(classes))}; each holds out 1 "
                     f"(rule: {HOLDOUT_RULE})")
    if single:
        notes.append(f"holdout: a single sample in {_some(single, len(classes))}; it is trained on, not held out")
    if absent:
        notes.append(f"{absent} of {len(classes)} classes have no usable sample in the train split")
    if short:
        what = f"{shots} training samples" if shots is not None else "the requested fraction"
        notes.append(f"fewer than {what} in {_some(short, len(classes))}; they use all they have")
    train = np.sort(np.concatenate(train_rows)) if train_rows else np.zeros(0, np.int64)
    hold = np.sort(np.concatenate(hold_rows)) if hold_rows else np.zeros(0, np.int64)
    pool = np.sort(np.concatenate(pool_rows)) if pool_rows else np.zeros(0, np.int64)
    return TrainSubsets(train=train.astype(np.int64), holdout=hold.astype(np.int64), notes=tuple(notes),
                        pool=pool.astype(np.int64))


def split_vtab(labels: np.ndarray, usable: np.ndarray, *, rows: int, holdout: int, seed: int) -> TrainSubsets:
    """VTAB-1k's train800/val200 of ``rows`` usable rows (:data:`VTAB_RULE`), drawn with ``seed`` alone.

    VTAB fixes the counts, not a fraction: exactly ``rows - holdout`` rows train and ``holdout`` select,
    so per-class rounding (as :func:`split_train` does) would miss the protocol by a few rows. Stratified
    rather than the dataset's file order, so the data seed draws another train800val200 per repeat.

    Raises:
        ConfigError: fewer than ``rows`` usable rows, or too many classes to keep a training row each.
    """
    labels = np.asarray(labels)
    pool = np.flatnonzero(usable).astype(np.int64)
    if len(pool) < rows:
        raise ConfigError(f"vtab1k needs {rows:,} usable train rows, the split has {len(pool):,}")
    pick_seq, hold_seq = np.random.SeedSequence([seed, 0x7AB]).spawn(2)
    if len(pool) > rows:
        pool = _stratified_take(labels, pool, rows, np.random.default_rng(pick_seq), keep=0)
    held = _stratified_take(labels, pool, holdout, np.random.default_rng(hold_seq), keep=1)
    train = np.setdiff1d(pool, held)
    note = f"rows: {VTAB_RULE}"
    return TrainSubsets(train=train, holdout=np.sort(held), notes=(note,), pool=train)


def _stratified_take(labels: np.ndarray, rows: np.ndarray, count: int, rng: np.random.Generator,
                     keep: int) -> np.ndarray:
    """Exactly ``count`` of ``rows``, per class in proportion (largest remainder), leaving ``keep`` of each class.

    Remainder ties are broken by a seeded order, so two draws of one seed agree and two seeds differ.
    """
    y = labels[rows]
    classes, sizes = np.unique(y, return_counts=True)
    caps = np.maximum(sizes - keep, 0)
    if caps.sum() < count:
        raise ConfigError(f"cannot take {count} rows leaving {keep} per class from {len(rows)} rows of "
                          f"{len(classes)} classes")
    exact = count * sizes / sizes.sum()
    quota = np.minimum(np.floor(exact).astype(np.int64), caps)
    order = np.lexsort((rng.permutation(len(classes)), -(exact - np.floor(exact))))
    while quota.sum() < count:  # largest remainders first; full classes pass their share on
        for c in order:
            if quota.sum() < count and quota[c] < caps[c]:
                quota[c] += 1
    taken = [rng.permutation(rows[y == cls])[:q] for cls, q in zip(classes, quota, strict=True)]
    return np.sort(np.concatenate(taken)).astype(np.int64)


def holdout_count(holdout: float, n: int) -> int:
    """Held-out samples of a class of ``n``: ``round(holdout · n)`` clamped to ``[1, n - 1]`` (0 if n < 2)."""
    if holdout <= 0 or n < 2:
        return 0
    return min(max(int(np.floor(holdout * n + 0.5)), 1), n - 1)


def _some(names: Sequence[str], total: int, limit: int = 5) -> str:
    """``"3 of 10 classes ('a', 'b', 'c')"``; long lists are cut: ``"37 of 1000 classes, e.g. 'a', 'b' ..."``."""
    shown = ", ".join(repr(n) for n in names[:limit])
    if len(names) > limit:
        return f"{len(names)} of {total} classes, e.g. {shown} ..."
    return f"{len(names)} of {total} class{'es' if total != 1 else ''} ({shown})"
