"""95% intervals on every top-1, the holdout-overlap warning and the summary's labels (hand-built rows)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from epcache.probe.results.intervals import INTERVAL_METHOD, bootstrap_mean_ci, intervals_overlap, wilson
from epcache.probe.results.metrics import metrics_from_counts
from epcache.probe.results.ranking import rank_rows
from epcache.probe.results.summary import format_summary, holdout_warning, repeats_text

Z95 = 1.959963984540054  # the 0.975 quantile of the standard normal, to float64 precision
CASES = [(0, 10), (10, 10), (8, 10), (1, 20), (13, 20), (71, 100), (500, 1000), (3, 7)]


def _textbook_wilson(k: int, n: int) -> tuple[float, float]:
    """Wilson (1927) in its usual printed form: (k + z²/2)/(n + z²) ± z·√n/(n + z²)·√(p̂(1 − p̂) + z²/(4n))."""
    p = k / n
    centre = (k + Z95**2 / 2) / (n + Z95**2)
    half = Z95 * math.sqrt(n) / (n + Z95**2) * math.sqrt(p * (1 - p) + Z95**2 / (4 * n))
    return centre - half, centre + half


@pytest.mark.parametrize(("k", "n"), CASES)
def test_wilson_matches_the_textbook_formula(k: int, n: int) -> None:
    lo, hi = wilson(k, n)
    ref_lo, ref_hi = _textbook_wilson(k, n)
    assert lo == pytest.approx(max(0.0, ref_lo), abs=1e-12) and hi == pytest.approx(min(1.0, ref_hi), abs=1e-12)
    assert 0.0 <= lo <= k / n <= hi <= 1.0


def test_wilson_matches_published_and_scipy_values() -> None:
    lo, hi = wilson(8, 10)  # the worked example of Newcombe (1998), method 3: 0.4902 to 0.9433
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)
    stats = pytest.importorskip("scipy.stats")
    for k, n in CASES:
        ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert wilson(k, n) == pytest.approx((ci.low, ci.high), abs=1e-12)


def test_wilson_refuses_impossible_counts() -> None:
    with pytest.raises(ValueError, match="n=0"):
        wilson(0, 0)
    with pytest.raises(ValueError, match="k=11"):
        wilson(11, 10)


def test_bootstrap_is_seeded_and_brackets_the_mean() -> None:
    xs = [0.70, 0.72, 0.68, 0.75, 0.71]
    lo, hi = bootstrap_mean_ci(xs)
    assert (lo, hi) == bootstrap_mean_ci(xs)  # the same interval on every call
    assert min(xs) <= lo < float(np.mean(xs)) < hi <= max(xs)
    assert bootstrap_mean_ci(xs, seed=1) != (lo, hi)
    assert bootstrap_mean_ci([0.5]) == (0.5, 0.5)
    assert intervals_overlap((0.1, 0.3), (0.3, 0.5)) and not intervals_overlap((0.1, 0.3), (0.31, 0.5))


def test_metrics_json_carries_the_interval_and_per_class_counts() -> None:
    m = metrics_from_counts(np.array([5, 2, 0]), None, np.array([6, 2, 3]))
    doc = m.to_json()
    assert doc["n"] == 11 and doc["per_class_n"] == [6, 2, 3]
    assert doc["top1_ci"] == pytest.approx(list(_textbook_wilson(7, 11)), abs=1e-12)


def _m(k: int, n: int, per_class_n: list[int] | None = None) -> dict[str, Any]:
    m = metrics_from_counts(np.array([k]), None, np.array([n])).to_json()
    m["per_class_n"] = per_class_n or [n]
    return m


def _row(i: int, hold: tuple[int, int], ev: tuple[int, int], *, per_class: list[int] | None = None,
         **config: Any) -> dict[str, Any]:
    cfg = {"kind": "linear", "head": "linear", "layer": 0, "tokens": "cls", "lr": 0.01 * (i + 1), "seed": 0,
           "head_options": {}, **config}
    solver = bool(cfg.get("solver"))
    return {"id": f"row{i}".ljust(16, "x"), "name": f"cfg{i} seed={cfg['seed']}", "seed_group": config.pop(
        "group", f"g{i}"), "config": cfg, "params": 10, "flops": 20,
        "metrics": {"holdout": _m(*hold, per_class), "eval": _m(*ev), "interval": INTERVAL_METHOD},
        "selected_epoch": 0 if solver else 2, "oracle": {"epoch": 0 if solver else 2, "eval_top1": ev[0] / ev[1]},
        "final": {"epoch": 2, "eval_top1": ev[0] / ev[1]}, "curves": {"eval_top1": [] if solver else [0.1, 0.2]},
        "data": {}, "store": {"provenance": "p"}}


def test_summary_shows_each_rows_interval() -> None:
    text = format_summary([_row(0, (14, 20), (713, 1000)), _row(1, (10, 20), (600, 1000), kind="ep")])
    lo, hi = wilson(713, 1000)
    assert f"eval top-1 71.30 [{100 * lo:.1f}, {100 * hi:.1f}]" in text  # the best's eval, on its line
    for k in (14, 10):  # every table row's holdout
        lo, hi = wilson(k, 20)
        assert f"{100 * k / 20:.2f} [{100 * lo:.1f}, {100 * hi:.1f}]" in text
    assert INTERVAL_METHOD in text and max(len(line) for line in text.splitlines()) <= 100


def test_a_small_holdout_that_cannot_separate_the_leaders_is_named() -> None:
    rows = [_row(i, (k, 20), (500, 1000), per_class=[2] * 10) for i, k in enumerate((15, 14, 13, 12, 2))]
    text = format_summary(rows)
    assert ("warning: the holdout (20 images, 2 per class) cannot separate the top 4 configs" in
            " ".join(text.split()))  # the 5th (10%) is outside the best's interval
    assert "--select cv5" in " ".join(text.split())
    uneven = [_row(i, (k, 20), (500, 1000), per_class=[1, 3, 2, 2, 2, 2, 2, 2, 2, 2]) for i, k in enumerate((15, 14))]
    assert "1 to 3 per class" in " ".join(format_summary(uneven).split())


def test_a_holdout_that_separates_the_leaders_gives_no_warning() -> None:
    rows = [_row(0, (900, 1000), (900, 1000)), _row(1, (700, 1000), (700, 1000))]
    assert holdout_warning(rank_rows(rows)) is None and "warning" not in format_summary(rows)


def test_tries_are_tries_and_seeds_are_seeds() -> None:
    solver = {"kind": "knn", "head": "knn", "solver": True, "shots": 5}
    tries = [_row(0, (5, 20), (60, 100), group="t", **solver, **{"try": t, "seed": t}) for t in range(3)]
    text = format_summary(tries)
    assert "(3 tries)" in text and "3 seeds" not in text
    seeds = [_row(0, (5, 20), (60, 100), group="s", seed=s) for s in range(3)]
    assert "(3 seeds)" in format_summary(seeds)
    both = [_row(0, (5, 20), (60, 100), group="b", seed=s, **{"try": t}) for s in (10, 11) for t in range(3)]
    assert repeats_text(both) == "2 seeds × 3 tries"


def test_solver_rows_have_no_epoch_text() -> None:
    solver = _row(0, (15, 20), (60, 100), kind="ridge", head="ridge", solver=True, shots=None)
    text = format_summary([solver])
    assert "selected epoch" not in text and "fitted once (solver: no epochs)" in text
    assert "selected epoch 2 of 2" in format_summary([_row(1, (15, 20), (60, 100))])


def test_rows_short_of_shots_are_labelled_with_the_shots_they_used() -> None:
    row = _row(0, (15, 20), (60, 100), kind="knn", head="knn", solver=True, shots=1000)
    row["data"] = {"shots_asked": 1000, "shots_used": 5}
    text = format_summary([row])
    assert "knn[cls] L0 5-shot (asked 1000)" in text and "1000-shot" not in text
    row["data"] = {"shots_asked": 5, "shots_used": 5}
    assert "(asked" not in format_summary([row])
