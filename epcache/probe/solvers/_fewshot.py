"""The few-shot protocol of big_vision and DINOv2: per try, permute every class and take the first K.

Try ``t`` draws one permutation per class from ``(seed, t)`` only, and every shot count takes
a prefix of it, so for one try the 1-shot set is inside the 5-shot set, which is inside the
10-shot set (shot counts differ only in how much data, not which). Results are reported as
mean ± std over tries. The candidates are the training rows left after the holdout is removed,
so the holdout that selects hyperparameters is the same for every shot count and try. Under
cross-validation there is no holdout: every usable row is a candidate and each draw is split into
folds of its own shots (``_cv.draw_selection``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["check_fewshot", "fewshot_rows", "shots_record"]


def fewshot_rows(labels: np.ndarray, candidates: np.ndarray, *, shots: int, try_index: int, seed: int) -> np.ndarray:
    """Stored rows of try ``try_index``: the first ``shots`` of each class's seeded permutation, sorted.

    Args:
        labels: labels of the whole split, stored order.
        candidates: rows that may be drawn (sorted).
        shots: K per class; a class with fewer candidates keeps all it has.
        try_index: t, seeds the permutations together with ``seed``.
        seed: the sweep's data seed.
    """
    candidates = np.asarray(candidates, np.int64)
    rng = np.random.default_rng([seed, 7, try_index])
    y = np.asarray(labels)[candidates]
    picked = []
    for c in np.unique(y).tolist():  # classes in order, so the draw is independent of row order
        rows = candidates[y == c]
        picked.append(rng.permutation(rows)[:shots])
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)


def check_fewshot(shots: Sequence[int], tries: int) -> list[str]:
    """Problems with a shots/tries request, as messages (empty when fine)."""
    problems = []
    if tries < 1:
        problems.append(f"tries must be >= 1, got {tries}")
    if tries > 1 and not shots:
        problems.append(
            f"--tries {tries} needs --shots: tries redraw the few-shot subset, and without shots every try "
            "would train on the same full train split. Give e.g. --shots 1,5,10,25 or drop --tries"
        )
    bad = [s for s in shots if s < 1]
    if bad:
        problems.append(f"shots must be >= 1, got {bad}")
    return problems


def shots_record(labels: np.ndarray, rows: np.ndarray, asked: int | None) -> dict[str, int]:
    """The shots a row asked for and the fewest it got in any class, for the row's ``data`` section.

    A class with fewer rows than ``--shots`` keeps all it has (the draw is not refused, so a sweep of
    1,5,10,25 shots still runs on a small store), and the summary labels such a row by the shots it
    really used: ``5-shot (asked 1000)``. Empty when no shots were asked.
    """
    if asked is None:
        return {}
    counts = np.unique(np.asarray(labels)[np.asarray(rows, np.int64)], return_counts=True)[1]
    return {"shots_asked": int(asked), "shots_used": int(counts.min()) if counts.size else 0}
