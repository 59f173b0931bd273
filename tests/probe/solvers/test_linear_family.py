"""`--head linear` fits the linear family: SGD cross-entropy heads and the least-squares classifier, one choice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from probe_helpers import config
from solver_helpers import class_store
from typer.testing import CliRunner

from epcache.cli import app
from epcache.errors import ConfigError
from epcache.probe import probe_store
from epcache.probe.plan import plan_sweep
from epcache.probe.results.ranking import best_row, group_by_seed, rank
from epcache.store import open_store

FAST: dict[str, Any] = {"epochs": 2, "warmup": 1, "batch_size": 16, "optimizer": "adamw", "queries": (),
                        "linear_fit": "auto", "lr": (0.01, 0.1)}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return class_store(tmp_path_factory.mktemp("lf") / "s.zarr", n_train=120, n_val=40, noise=2.0,
                       layers=(0, 1))


def _plan(store: Path, **kw: Any) -> Any:
    with open_store(store) as st:
        return plan_sweep(config(store, **{"head": ("linear",), **FAST, **kw}), st, st)


def test_auto_adds_the_least_squares_candidate_on_the_linear_input_and_says_so(store: Path) -> None:
    plan = _plan(store)
    assert {r.head.kind for r in plan.runs} == {"linear"} and len(plan.runs) == 2
    assert [(s.kind, s.tokens) for s in plan.specs] == [("ridge", "cls")]
    assert any(n.startswith("linear: also the closed-form least-squares") for n in plan.notes)
    asked = _plan(store, head=("linear", "ridge"))  # the same row a user asking for ridge gets: fitted once
    assert [s.id for s in asked.specs] == [s.id for s in plan.specs]


def test_gap_tokens_named_recipes_and_the_explicit_fits(store: Path) -> None:
    assert [s.tokens for s in _plan(store, head=("linear(tokens='gap')",)).specs] == ["gap"]
    assert _plan(store, linear_fit="sgd").specs == ()
    named = _plan(store, recipe="dinov2-linear", optimizer=(), lr=(), holdout=0.2)
    assert named.specs == () and not any(n.startswith("linear:") for n in named.notes)  # the paper's probe only
    only = _plan(store, linear_fit="lstsq")
    assert only.runs == () and [s.kind for s in only.specs] == ["ridge"]
    assert _plan(store, layer_mix=("concat",), layers=(0, 1)).specs == ()  # a mixed input: no per-layer stand-in
    assert [s.head_name for s in _plan(store, holdout=0.0, select="holdout").specs] == ["ridge(grid='bigvision')"]


def test_the_one_ranking_chooses_between_the_fits(store: Path, tmp_path: Path) -> None:
    res = probe_store(config(store, head=("linear",), **FAST, out=str(tmp_path / "run")), progress=False)
    kinds = sorted(r["config"]["kind"] for r in res.rows)
    assert kinds == ["linear", "linear", "ridge"]
    assert res.best is not None and res.best["id"] == best_row(rank(group_by_seed(res.rows))[0])["id"]
    alone = probe_store(config(store, head=("ridge",), **FAST), progress=False)
    ridge = next(r for r in res.rows if r["config"]["kind"] == "ridge")
    assert ridge["id"] == alone.rows[0]["id"] and ridge["metrics"] == alone.rows[0]["metrics"]


def test_a_wrong_fit_is_refused_early(store: Path) -> None:
    with pytest.raises(ConfigError, match="--linear-fit must be one of auto, both, sgd, lstsq"):
        _plan(store, linear_fit="closed")
    out = CliRunner().invoke(app, ["probe", "--store", str(store), "--head", "linear", "--linear-fit", "closed"])
    assert out.exit_code == 2 and "--linear-fit must be one of" in out.output and "Traceback" not in out.output


def test_a_suite_preset_keeps_its_sgd_heads(tmp_path: Path) -> None:
    big = class_store(tmp_path / "big.zarr", n_train=1000, n_val=40, dim=8)
    vtab: dict[str, Any] = {"head": ("linear",), "protocol": "vtab1k", "holdout": None, "refit": True, "queries": (),
                            "epochs": 1, "warmup": 0, "lr": (0.01,)}
    with open_store(big) as st:
        plan = plan_sweep(config(big, linear_fit="auto", **vtab), st, st)
        assert plan.specs == () and {r.head.kind for r in plan.runs} == {"linear"}
        with pytest.raises(ConfigError, match="--protocol vtab1k trains and refits SGD heads only"):
            plan_sweep(config(big, linear_fit="both", **vtab), st, st)
