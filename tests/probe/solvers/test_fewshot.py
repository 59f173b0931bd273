"""Few-shot draws: K per class, nested across K within a try, different across tries, reproducible."""

from __future__ import annotations

import numpy as np

from epcache.probe.solvers import check_fewshot, fewshot_rows


def test_k_per_class_nested_and_seeded() -> None:
    labels = np.repeat(np.arange(5), 30)
    candidates = np.arange(0, 150, 1)[np.arange(150) % 7 != 0]  # some rows held out
    draws = {k: fewshot_rows(labels, candidates, shots=k, try_index=0, seed=0) for k in (1, 5, 10)}
    for k, rows in draws.items():
        assert np.array_equal(np.bincount(labels[rows], minlength=5), np.full(5, k))
        assert np.isin(rows, candidates).all() and np.array_equal(rows, np.sort(rows))
    assert set(draws[1]) <= set(draws[5]) <= set(draws[10])
    again = fewshot_rows(labels, candidates, shots=5, try_index=0, seed=0)
    other = fewshot_rows(labels, candidates, shots=5, try_index=1, seed=0)
    assert np.array_equal(again, draws[5]) and not np.array_equal(other, draws[5])


def test_short_classes_keep_what_they_have() -> None:
    labels = np.array([0, 0, 0, 1])
    rows = fewshot_rows(labels, np.arange(4), shots=2, try_index=0, seed=1)
    assert np.bincount(labels[rows]).tolist() == [2, 1]


def test_tries_need_shots() -> None:
    assert check_fewshot([], 1) == []
    assert "needs --shots" in check_fewshot([], 3)[0]
    assert check_fewshot([1, 0], 1) == ["shots must be >= 1, got [0]"]
