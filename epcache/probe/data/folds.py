"""Which rule selects each trained config's epoch, and the stratified folds of cross-validation.

A holdout of a small training set is a handful of samples: its top-1 moves in steps of several
percent and picks epochs by noise. K-fold cross-validation scores every training row once per
epoch (each config trained K times on K-1 folds), so the selection curve counts all of them; the
final head is then the refit on every training row. The rule is resolved once, by the plan.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from epcache.errors import ConfigError

__all__ = ["CV_BELOW", "Selection", "parse_select", "selection_text", "stratified_folds"]

CV_BELOW = 1000  # select="auto": fewer usable training rows than this are cross-validated (cv5), not held out
_RULE = re.compile(r"^(auto|holdout|cv(\d+))$")


@dataclass(frozen=True)
class Selection:
    """The resolved selection rule: ``holdout``, ``cvK`` or ``none`` (no selection: the last epoch), and why."""

    rule: str
    folds: int  # K of cvK; 0 otherwise
    reason: str

    def note(self) -> str:
        """The plan's one line about the rule and why it was chosen."""
        if self.folds:
            return (f"selection: stratified {self.folds}-fold cross-validation over the training rows ({self.reason}), "
                    "then every config refit on all of them for its selected steps; --select holdout to hold out")
        if self.rule == "none":
            return f"selection: none ({self.reason}); the last epoch is kept"
        return f"selection: holdout ({self.reason})"


def selection_text(rule: str, epoch_rule: str) -> str:
    """The recorded ``protocol.selection`` of rule ``rule`` (holdout, cvK, none) applying ``epoch_rule``."""
    if rule.startswith("cv"):
        return (f"stratified {rule[2:]}-fold cross-validation over the training rows: {epoch_rule}, pooled over "
                "the folds; then refit on all training rows")
    return epoch_rule


def parse_select(text: str) -> tuple[str, int]:
    """``("auto"|"holdout", 0)`` or ``("cv", K)``.

    Raises:
        ConfigError: not auto, holdout or cvK with K >= 2.
    """
    m = _RULE.match(str(text).strip().lower())
    if m is None or (m.group(2) is not None and int(m.group(2)) < 2):
        raise ConfigError(f"--select must be auto, holdout or cvK with K >= 2 (e.g. cv5), got {text!r}")
    return ("cv", int(m.group(2))) if m.group(2) else (m.group(1), 0)


def stratified_folds(labels: np.ndarray, rows: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, ...]:
    """``k`` disjoint sorted subsets of ``rows`` covering them, each class dealt round-robin after a seeded shuffle.

    Every class with at least ``k`` rows is in every fold, and class counts differ by at most one
    between folds; the deal starts where the previous class ended, so fold sizes stay balanced too.
    """
    rows = np.asarray(rows, dtype=np.int64)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xF01D]))
    y = np.asarray(labels)[rows]
    parts: list[list[np.ndarray]] = [[] for _ in range(k)]
    start = 0
    for c in np.unique(y):
        members = rng.permutation(rows[y == c])
        for i in range(k):
            parts[(start + i) % k].append(members[i::k])
        start = (start + len(members)) % k
    return tuple(np.sort(np.concatenate(p)).astype(np.int64) if p else np.zeros(0, np.int64) for p in parts)
