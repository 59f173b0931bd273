"""One plan per sweep: resolved once, written as it ran, heads split by their registry kind."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from probe_helpers import config, write_store

import epcache.probe.heads._registry as _registry
import epcache.probe.plan as plan_module
import epcache.probe.run as run_module
import epcache.probe.train.group as group_module
from epcache.errors import ConfigError
from epcache.probe import probe_store
from epcache.probe.heads import SOLVER_KINDS, head_kind, list_heads, register_solver
from epcache.probe.plan import plan_sweep
from epcache.store import open_store

FAST: dict[str, Any] = {"epochs": 2, "warmup": 1, "batch_size": 16, "optimizer": "adamw", "queries": ()}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_store(tmp_path_factory.mktemp("plan") / "s.zarr", n_train=96, n_val=32)


def _counting(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[int]:
    calls: list[int] = []
    real: Callable[..., Any] = getattr(module, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)
    return calls


def _sha(rows: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(rows, "<i8").tobytes()).hexdigest()


def test_one_plan_and_one_row_resolution_per_sweep_and_the_written_plan_is_what_trained(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    grid = tmp_path / "sweep.toml"
    grid.write_text('head = ["linear", "knn"]\ntokens = ["gap"]\n'
                    '[[grid]]\nlr = [0.01, 0.03]\n'
                    '[[grid]]\nhead = ["ep(queries=4)", "ncm"]\ntokens = ["patch", "cls"]\n'
                    'lr = [0.02]\nwd = [0.0, 0.1]\n',
                    encoding="utf-8")
    plans = _counting(monkeypatch, run_module, "plan_sweep")
    resolutions = _counting(monkeypatch, plan_module, "resolve_rows")
    streams: list[dict[str, Any]] = []
    schedules: list[dict[str, Any]] = []
    solver_rows: list[np.ndarray] = []

    class RecordingStream(group_module.BatchStream):
        def __init__(self, source: Any, rows: np.ndarray, labels: np.ndarray, **kw: Any) -> None:
            streams.append({"rows": np.asarray(rows), "batch": kw["batch_size"]})
            super().__init__(source, rows, labels, **kw)

    class RecordingTrainer(group_module.GroupTrainer):
        def train_epoch(self, stream: Any, epoch: int, **kw: Any) -> Any:
            schedules.append({"ids": [r.id for r in self.runs], "lr": [r.lr for r in self.runs],
                              "wd": [r.wd for r in self.runs], **{k: v for k, v in kw.items() if k != "on_batch"}})
            return super().train_epoch(stream, epoch, **kw)

    real_solvers = run_module.run_solver_configs

    def recording_solvers(specs: Any, **kw: Any) -> Any:
        solver_rows.append(kw["data"].train_rows)
        return real_solvers(specs, **kw)

    monkeypatch.setattr(group_module, "BatchStream", RecordingStream)
    monkeypatch.setattr(group_module, "GroupTrainer", RecordingTrainer)
    monkeypatch.setattr(run_module, "run_solver_configs", recording_solvers)
    out = tmp_path / "run"
    result = probe_store(config(store, grid=str(grid), out=str(out), shots=10, **FAST), progress=False)

    assert len(plans) == 1 and len(resolutions) == 1  # three blocks, a k cap and shot-free solver rows: one draw
    written = json.loads((out / "plan.json").read_text())
    assert {r["id"] for r in result.rows} == {c["id"] for c in written["trained"] + written["solvers"]}
    assert {s["kind"] for s in written["solvers"]} == {"knn", "ncm"}
    assert {c["kind"] for c in written["trained"]} == {"linear", "ep"}
    assert any("k-NN: the default k list capped" in n for n in written["notes"])
    by_id = {c["id"]: c for c in written["trained"]}
    trained_ids = {i for s in schedules for i in s["ids"]}
    assert trained_ids == set(by_id)
    for s in schedules:  # every epoch of every group: the schedule the plan says
        for i, lr, wd in zip(s["ids"], s["lr"], s["wd"], strict=True):
            c = by_id[i]
            assert (c["lr"], c["wd"], c["steps"], c["warmup"]) == (lr, wd, s["total_steps"], s["warmup_steps"])
    assert {round(c["lr"], 6) for c in written["trained"]} == {0.01, 0.03, 0.02}
    assert {c["epochs"] for c in written["trained"]} == {len(schedules) // len(written["groups"])}
    groups = len(written["groups"])
    train_streams, holdout_streams, eval_streams = streams[0::3], streams[1::3], streams[2::3]
    assert len(streams) == 3 * groups
    for c in written["trained"]:
        rows = c["rows"]
        assert {s["batch"] for s in train_streams} == {c["batch"]}
        assert {_sha(s["rows"]) for s in train_streams} == {rows["sha256"]["train"]}
        assert {_sha(s["rows"]) for s in holdout_streams} == {rows["sha256"]["holdout"]}
        assert {_sha(s["rows"]) for s in eval_streams} == {rows["sha256"]["eval"]}
        assert rows["train"] == 10 * 4  # 10 shots of 4 classes
    solver = written["solvers"][0]["rows"]
    assert len(solver_rows) == 1 and _sha(solver_rows[0]) == solver["sha256"]["train"]
    assert solver["train"] == len(solver_rows[0]) > 10 * 4  # shot-free: every row outside the holdout
    assert solver["sha256"]["holdout"] == written["trained"][0]["rows"]["sha256"]["holdout"]  # the same draw


def test_a_shard_writes_its_own_plan(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = config(store, head=("linear", "ncm"), tokens=("gap", "cls"), lr=(0.01, 0.03), out=str(out), shard="1/2",
                 **FAST)
    probe_store(cfg, progress=False)
    written = json.loads((out / "plan.shard-1-of-2.json").read_text())
    assert written["shard"] == [1, 2] and not (out / "plan.json").exists()
    assert len(written["trained"]) + len(written["solvers"]) < written["configs_in_sweep"]


def test_registry_says_each_heads_kind() -> None:
    assert [head_kind(k) for k in SOLVER_KINDS] == ["solver"] * 4
    assert head_kind("knn(k=[5], select='holdout')") == "solver"
    assert all(head_kind(k) == "trained" for k in list_heads())
    assert head_kind("no_such_head") is None
    with pytest.raises(ValueError, match="already registered"):
        register_solver("ep")


def test_a_head_registered_as_a_solver_kind_is_planned_as_a_solver(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config(store, head=("linear", "mysolver"), **FAST)
    with open_store(store) as st:
        with pytest.raises(ConfigError, match="unknown head kind 'mysolver'"):  # not registered: a trained head
            plan_sweep(cfg, st, st)
        monkeypatch.setattr(_registry, "_SOLVERS", dict(_registry._SOLVERS))  # registered for this test only
        register_solver("mysolver")
        assert head_kind("mysolver") == "solver"
        with pytest.raises(ConfigError, match="'mysolver' is registered as a solver head"):
            plan_sweep(cfg, st, st)
        plan = plan_sweep(config(store, head=("linear", "ncm"), tokens=("gap", "cls"), **FAST), st, st)
        assert {s.kind for s in plan.specs} == {"ncm"} and {r.head.kind for r in plan.runs} == {"linear"}
        monkeypatch.delitem(_registry._SOLVERS, "ncm")  # the registry, not the name, makes ncm a solver
        with pytest.raises(ConfigError, match="unknown head kind 'ncm'"):
            plan_sweep(config(store, head=("linear", "ncm"), **FAST), st, st)
