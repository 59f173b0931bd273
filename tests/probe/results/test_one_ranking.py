"""One ranking, one epoch rule, one oracle: the rule that runs is the rule every row and table describes."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
from probe_helpers import config, write_store
from ranking_helpers import tie_rows

from epcache.probe import probe_store
from epcache.probe.results.ranking import (
    CONFIG_RANKING,
    EPOCH_SELECTION,
    NO_HOLDOUT_SELECTION,
    ORACLE_NOTE,
    ORACLE_RULE,
    epoch_improves,
    epoch_selection,
    group_by_seed,
    oracle_text,
    oracle_top1,
    rank_rows,
)


def test_rank_breaks_a_top1_tie_by_the_lower_holdout_loss_in_any_row_order() -> None:
    rows = tie_rows()
    assert {g.mean("holdout") for g in group_by_seed(rows)} == {0.75}  # a true tie on the first criterion
    for order in itertools.permutations(rows):
        ranked = rank_rows(order)
        assert [g.key for g in ranked] == ["mhca-0.01", "mhca-0.003"]
    assert CONFIG_RANKING.startswith("seed-mean holdout top-1; ties: lower seed-mean holdout cross-entropy")


def test_epoch_rule_is_top1_then_lower_loss_then_the_earlier_epoch() -> None:
    assert epoch_improves(0.8, 0.9, 0.7, 0.1)  # higher top-1 wins whatever the loss
    assert epoch_improves(0.8, 0.3, 0.8, 0.4)  # a top-1 tie: the lower loss wins
    assert not epoch_improves(0.8, 0.5, 0.8, 0.4)
    assert not epoch_improves(0.8, 0.4, 0.8, 0.4)  # a full tie keeps the earlier epoch
    assert not epoch_improves(0.7, 0.0, 0.8, 0.4)
    assert epoch_selection(True) == EPOCH_SELECTION == "holdout top-1; ties: lower holdout cross-entropy, then the " \
                                                       "earlier epoch"
    assert epoch_selection(False) == NO_HOLDOUT_SELECTION


def _described_choice(top1: list[float], loss: list[float]) -> int:
    """EPOCH_SELECTION read literally: highest top-1, then lowest loss, then earliest (1-based)."""
    return min(range(len(top1)), key=lambda i: (-top1[i], loss[i], i)) + 1


@pytest.mark.parametrize("holdout", [0.05, 0.0])
def test_recorded_selection_is_the_rule_the_trainer_ran(tmp_path: Path, holdout: float) -> None:
    store = write_store(tmp_path / "s.zarr", n_train=80, n_val=16)
    res = probe_store(config(store, lr=(0.05, 0.01), epochs=5, holdout=holdout, layers=(0,)), progress=False)
    assert res.rows
    ties = 0
    for r in res.rows:
        assert r["protocol"]["selection"] == epoch_selection(holdout > 0)
        curves = r["curves"]
        if holdout == 0:
            assert r["selected_epoch"] == len(curves["eval_top1"])  # the last epoch
            continue
        top1, loss = curves["holdout_top1"], curves["holdout_loss"]
        assert r["selected_epoch"] == _described_choice(top1, loss)
        ties += len(top1) - len(set(top1))
    if holdout:
        assert ties  # 4 held-out samples: top-1 ties across epochs, so the loss decided somewhere


def test_oracle_is_the_seed_mean_of_each_seeds_best_epoch_with_its_std() -> None:
    groups = {g.key: g for g in group_by_seed(tie_rows())}
    m, sd = oracle_top1(groups["mhca-0.01"])  # type: ignore[misc]
    assert m == pytest.approx(0.75) and sd == pytest.approx(math.sqrt(2 * 0.02**2))
    assert oracle_text(groups["mhca-0.01"]) == "75.00 ± 2.83"
    solver = [{**r, "oracle": {"epoch": 0, "eval_top1": 0.9}} for r in tie_rows()[:2]]  # solver rows: no epochs
    assert oracle_top1(group_by_seed(solver)[0]) is None and oracle_text(group_by_seed(solver)[0]) == "-"
    no_curve = [{**r, "oracle": {"epoch": None, "eval_top1": None}} for r in tie_rows()[:2]]
    assert oracle_text(group_by_seed(no_curve)[0]) == "-"
    assert ORACLE_RULE in ORACLE_NOTE and "solver heads" in ORACLE_NOTE
