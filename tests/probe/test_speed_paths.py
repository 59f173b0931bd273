"""The faster data and scoring paths give the numbers of the plain paths."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from probe_helpers import config, write_store

from epcache.probe import probe_store
from epcache.probe.device import cpu_threads

KW = {"head": "linear,ep", "tokens": "gap,patch", "queries": 4, "lr": "0.01,0.05", "epochs": 3, "seeds": "0,1"}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_store(tmp_path_factory.mktemp("speed") / "s.zarr", n_train=160, n_val=48)


def _strip(rows: tuple[dict, ...]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "timing"} for r in rows]


def test_in_memory_converted_once_is_bit_identical_in_float64(store: Path) -> None:
    streamed = probe_store(config(store, dtype="float64", in_memory=False, **KW), progress=False)
    held = probe_store(config(store, dtype="float64", in_memory=True, eval_cache_mb=0, **KW), progress=False)
    assert _strip(held.rows) == _strip(streamed.rows)  # curves, metrics, selected epochs: exactly equal
    # train, holdout and eval rows (128 + 32 + 48) as the 16 patch tokens gap and patch heads need, in float64
    assert held.rows[0]["timing"]["held_bytes"] == (128 + 32 + 48) * 16 * 16 * 8
    assert streamed.rows[0]["timing"]["held_bytes"] > 0  # holdout/eval caches, converted once as well


def test_float32_fast_paths_select_the_same_epochs_and_metrics(store: Path) -> None:
    a = probe_store(config(store, in_memory=False, **KW), progress=False)
    b = probe_store(config(store, in_memory=True, **KW), progress=False)
    for ra, rb in zip(a.rows, b.rows, strict=True):
        assert ra["selected_epoch"] == rb["selected_epoch"]
        assert ra["metrics"]["holdout"]["top1"] == rb["metrics"]["holdout"]["top1"]
        assert ra["metrics"]["eval"]["top1"] == rb["metrics"]["eval"]["top1"]


def test_eval_scored_only_at_the_end_keeps_selection_and_metrics(store: Path) -> None:
    every = probe_store(config(store, **KW), progress=False)
    once = probe_store(config(store, eval_curve=False, **KW), progress=False)
    for ra, rb in zip(every.rows, once.rows, strict=True):
        assert ra["selected_epoch"] == rb["selected_epoch"] and ra["metrics"] == rb["metrics"]
        assert rb["curves"]["eval_top1"][:-1] == [None, None] and rb["curves"]["holdout_top1"] == ra["curves"][
            "holdout_top1"]
        assert rb["oracle"] == {"epoch": None, "eval_top1": None} and ra["oracle"]["epoch"] is not None
    assert "oracle" in once.summary  # the table keeps its columns, with "-" where there is no oracle


def test_timing_records_the_split_and_the_thread_rule(store: Path) -> None:
    t = probe_store(config(store, **KW), progress=False).rows[0]["timing"]
    assert t["train_seconds"] > 0 and t["eval_seconds"] > 0 and 0 <= t["data_wait_seconds"] <= t["train_seconds"]
    assert t["marginal_seconds_per_config"] > 0 and t["torch_threads"] >= 1 and t["threads_rule"]


def test_thread_rule_leaves_a_core_for_the_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: set(range(4)))
    torch.set_num_threads(4)
    try:
        with cpu_threads(torch.device("cpu")) as rule:
            assert torch.get_num_threads() == 3 and rule.startswith("3 (epcache")
        assert torch.get_num_threads() == 4  # restored
        monkeypatch.setenv("OMP_NUM_THREADS", "4")
        with cpu_threads(torch.device("cpu")) as rule:
            assert torch.get_num_threads() == 4 and "as set" in rule  # the user's choice is kept
    finally:
        torch.set_num_threads(before)
