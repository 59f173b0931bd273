"""The summary names the selection rule that ran, the final heads' refit and advice fitting the rule."""

from __future__ import annotations

from typing import Any

import numpy as np

from epcache.probe.results.intervals import INTERVAL_METHOD
from epcache.probe.results.metrics import metrics_from_counts
from epcache.probe.results.ranking import rank_rows
from epcache.probe.results.selection import CV_SUGGEST_BELOW, holdout_warning, row_rule
from epcache.probe.results.summary import format_summary


def _m(k: int, n: int, classes: int = 10) -> dict[str, Any]:
    m = metrics_from_counts(np.array([k]), None, np.array([n])).to_json()
    m["per_class_n"] = [n // classes] * classes
    return m


def _row(i: int, sel: tuple[int, int], *, rule: str | None = "cv5", train: int = 200, holdout: int = 0,
         refit: dict[str, Any] | None = None, solver: bool = False) -> dict[str, Any]:
    cfg = {"kind": "ridge" if solver else "linear", "head": "linear", "layer": 0, "tokens": "cls",
           "lr": 0.01 * (i + 1), "seed": 0, "head_options": {}, **({"solver": "ridge"} if solver else {})}
    row: dict[str, Any] = {
        "id": f"row{i}".ljust(16, "x"), "name": f"cfg{i} seed=0", "seed_group": f"g{i}", "config": cfg,
        "params": 10, "flops": 20, "metrics": {"holdout": _m(*sel), "eval": _m(500, 1000), "interval": INTERVAL_METHOD},
        "selected_epoch": 0 if solver else 2, "oracle": {"epoch": 0 if solver else None, "eval_top1": None},
        "final": {"epoch": 3, "eval_top1": 0.5}, "curves": {"eval_top1": [None, None, None]},
        "store": {"provenance": "p"},
        "data": {"num_train": train, "num_holdout": holdout, "num_refit": train + holdout} if solver else {},
    }
    if rule is not None:
        row["protocol"] = {"selection_rule": rule, "train_size": train, "holdout_size": holdout}
    if not solver:
        row["refit"] = refit if refit is not None else {"enabled": True, "train_size": train + holdout}
    return row


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_cross_validated_rows_are_named_cv5_with_their_rule_and_refit() -> None:
    text = format_summary([_row(0, (150, 200)), _row(1, (100, 200))])
    header = next(line for line in text.splitlines() if line.startswith("id "))
    assert " cv5 " in header and "holdout" not in header
    flat = _flat(text)
    assert "cv5: stratified 5-fold cross-validation over 200 training rows, pooled" in flat
    assert "final heads: refit on all 200 training rows for each config's selected steps" in flat
    assert "train + holdout" not in flat
    assert "ranked by cv5 top-1 (pooled over the folds, seed mean" in flat
    assert "ranking: seed-mean cv5 top-1; ties: lower seed-mean cv5 cross-entropy" in flat
    assert "chosen by the selection rule" in flat and "chosen on the holdout" not in flat
    assert max(len(line) for line in text.splitlines()) <= 100


def test_held_out_rows_keep_the_holdout_column_and_say_the_refit_took_the_holdout_in() -> None:
    rows = [_row(i, (k, 400), rule="holdout", train=3600, holdout=400) for i, k in enumerate((300, 100))]
    text = format_summary(rows)
    header = next(line for line in text.splitlines() if line.startswith("id "))
    assert " holdout " in header and "cv5" not in header and "select" not in header
    flat = _flat(text)
    assert "final heads: refit on all 4000 training rows (train + holdout) for each config's selected steps" in flat
    assert "ranked by holdout top-1 (seed mean" in flat and "chosen on the holdout" in flat
    off = [_row(0, (300, 400), rule="holdout", refit={"enabled": False, "reason": "--no-refit"})]
    assert "final heads: the selection model (--no-refit)" in _flat(format_summary(off))


def test_mixed_rules_are_labelled_per_row() -> None:
    rows = [_row(0, (17, 20), rule=None, train=180, holdout=20, solver=True), _row(1, (120, 200))]
    assert [row_rule(r) for r in rows] == ["holdout", "cv5"]  # a solver row without a protocol: its holdout
    text = format_summary(rows)
    header = next(line for line in text.splitlines() if line.startswith("id "))
    assert " select " in header
    body = text.splitlines()[text.splitlines().index(header) + 2:][:2]
    assert " holdout 85.00 [" in body[0] and " cv5 60.00 [" in body[1], body
    flat = _flat(text)
    assert ("select: per row, holdout = 20 held-out training rows; cv5 = stratified 5-fold cross-validation "
            "over 200 training rows, pooled") in flat
    assert "solver heads fitted on 200 rows at their chosen hyperparameter" in flat
    assert "ranked by selection top-1" in flat
    assert "--select cv5" not in flat  # cv already ran for the trained heads


def test_a_cv_warning_suggests_seeds_or_a_tie_never_cv_again() -> None:
    rows = [_row(i, (k, 200)) for i, k in enumerate((150, 148, 20))]
    warning = holdout_warning(rank_rows(rows))
    assert warning is not None
    flat = _flat(warning)
    assert flat.startswith("warning: the cv5 scores (200 training rows, each scored once")
    assert "20 per class" in flat and "the top 2 configs" in flat
    assert "--seeds" in flat and "tied" in flat
    assert "--select" not in flat and "--holdout" not in flat


def test_a_holdout_warning_suggests_cv5_only_where_cv_is_cheap() -> None:
    def warning(train: int) -> str:
        rows = [_row(i, (k, 200), rule="holdout", train=train, holdout=200) for i, k in enumerate((150, 148))]
        text = holdout_warning(rank_rows(rows))
        assert text is not None
        return _flat(text)

    small = warning(1800)
    assert "more holdout data (--holdout) or --select cv5 would" in small
    big = warning(CV_SUGGEST_BELOW)
    assert "--holdout" in big and "--select cv5" not in big
