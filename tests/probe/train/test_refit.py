"""The refit: final heads retrained on train + holdout for each config's selected steps, recorded in every row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from probe_helpers import config, write_store
from typer.testing import CliRunner

from epcache.cli import app
from epcache.probe import load_head, probe_store
from epcache.store import open_store, select_tokens
from epcache.store.layout.tokens import to_torch

KW = {"head": "linear,ep", "tokens": "gap,patch", "lr": "0.01,0.05", "epochs": 4, "seeds": "0,1"}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_store(tmp_path_factory.mktemp("refit") / "needle.zarr", n_train=120, n_val=80)


@pytest.fixture(scope="module")
def runs(store: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """One sweep with the refit and the same sweep without it (the selection model)."""
    out = tmp_path_factory.mktemp("runs")
    on = probe_store(config(store, refit=True, out=str(out / "on"), **KW), progress=False)
    off = probe_store(config(store, refit=False, out=str(out / "off"), **KW), progress=False)
    return {"on": on, "off": off, "out": out}


def test_refit_trains_on_train_plus_holdout_for_the_selected_steps(runs: dict) -> None:
    on = runs["on"]
    for r in on.rows:
        p, d, refit = r["protocol"], r["data"], r["refit"]
        assert p["refit"] is True and refit["enabled"] is True
        assert refit["train_size"] == d["num_train"] + d["num_holdout"] == 96 + 24
        assert refit["epochs"] == r["selected_epoch"]
        assert refit["steps"] == r["selected_epoch"] * p["steps_per_epoch"]
        assert len(refit["train_loss"]) == r["selected_epoch"]
        assert r["timing"]["refit_seconds"] > 0
    assert sum("final heads refit on train+holdout (120 rows)" in n for n in on.notes) == 1
    plan = json.loads((runs["out"] / "on" / "plan.json").read_text())
    assert any("--no-refit keeps the selection model" in n for n in plan["notes"])


def test_no_refit_is_the_selection_model_and_refit_keeps_its_selection(runs: dict) -> None:
    on, off = runs["on"], runs["off"]
    assert [r["id"] for r in on.rows] != [r["id"] for r in off.rows]  # other numbers: other ids and seed groups
    assert not any("final heads refit" in n for n in off.notes)
    for a, b in zip(on.rows, off.rows, strict=True):
        assert b["refit"] == {"enabled": False, "reason": "--no-refit"} and b["protocol"]["refit"] is False
        # the selection pass is the same run: curves, selected epoch and holdout metrics are identical
        assert a["curves"] == b["curves"] and a["selected_epoch"] == b["selected_epoch"]
        assert a["metrics"]["holdout"] == b["metrics"]["holdout"]
        assert a["refit"]["selection_eval_top1"] == b["metrics"]["eval"]["top1"]
        e = b["selected_epoch"] - 1
        assert b["metrics"]["eval"]["top1"] == pytest.approx(b["curves"]["eval_top1"][e])
    assert [a["metrics"]["eval"] for a in on.rows] != [b["metrics"]["eval"] for b in off.rows]


def test_saved_refit_heads_reproduce_the_reported_eval(store: Path, runs: dict) -> None:
    st = open_store(store)
    labels = torch.from_numpy(st.read_labels("val"))
    tokens = to_torch(st.read_tokens("val", 1)[:, 0]).float()
    for r in runs["on"].rows:
        head, meta = load_head(runs["out"] / "on" / r["head_file"])
        assert meta["refit"] is True
        x = tokens if r["config"]["kind"] == "linear" else select_tokens(tokens, st.meta.layout, "patch")
        with torch.no_grad():
            acc = (head(x).argmax(-1) == labels).double().mean().item()
        assert acc == pytest.approx(r["metrics"]["eval"]["top1"], abs=1.5 / 80)  # fp16 -> fp32: at most a tie apart


def test_refit_equals_training_by_hand_on_train_plus_holdout(store: Path) -> None:
    """A float64 refit selected at the last epoch is exactly a run on all 120 rows with the same schedule.

    Selection: 96 train rows, batch 24, 5 epochs x 4 steps = 20 steps, no warm-up. The refit draws 4-step
    epochs from one stream over data epochs of the 120 rows (5 batches each); a run with no holdout, 4 epochs
    of 5 steps, has the same init, the same 20 batches and the same lr at every step.
    """
    common = {"head": "linear", "tokens": "gap", "lr": 0.1, "dtype": "float64", "batch_size": 24, "warmup": 0,
              "min_steps": 0, "optimizer": "sgd", "queries": ()}
    refit = probe_store(config(store, refit=True, epochs=5, **common), progress=False).rows[0]
    assert refit["selected_epoch"] == 5  # the premise: this lr still improves at the last epoch
    assert refit["refit"]["steps"] == 5 * refit["protocol"]["steps_per_epoch"] == 20
    by_hand = probe_store(config(store, holdout=0, epochs=4, **common), progress=False).rows[0]
    assert by_hand["protocol"]["total_steps"] == 20 and by_hand["data"]["num_train"] == 120
    assert refit["metrics"]["eval"] == by_hand["metrics"]["eval"]
    assert refit["refit"]["train_loss"] != refit["curves"]["train_loss"]  # other rows than the selection pass


def test_no_holdout_means_no_refit(store: Path) -> None:
    res = probe_store(config(store, head="linear", tokens="gap", queries=(), holdout=0, refit=True, epochs=2),
                      progress=False)
    (row,) = res.rows
    assert row["refit"]["enabled"] is False and "no holdout" in row["refit"]["reason"]
    assert row["protocol"]["refit"] is False
    assert not any("final heads refit" in n for n in res.notes)


def test_cli_takes_refit_and_no_refit(store: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    help_text = runner.invoke(app, ["probe", "--help"], terminal_width=200).output
    assert "--no-refit" in help_text
    out = tmp_path / "cli"
    result = runner.invoke(app, ["probe", "--store", str(store), "--head", "linear", "--tokens", "gap", "--epochs", "2",
                                 "--batch-size", "32", "--device", "cpu", "--no-refit", "--no-progress",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    trained = [r for r in rows if not r["config"].get("solver")]  # the linear family's ridge is fitted, not trained
    assert trained and all(r["refit"]["enabled"] is False for r in trained)
    assert json.loads((out / "config.json").read_text())["config"]["refit"] is False
