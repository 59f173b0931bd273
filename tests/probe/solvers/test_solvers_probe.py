"""`epcache probe` with solver heads: mixed with trained heads in one sweep, few-shot tries, bad input exits 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from solver_helpers import class_store, class_tokens, meta, write_tokens
from typer.testing import CliRunner

from epcache.cli import app
from epcache.probe.solvers import load_solver_head, pool_rows
from epcache.store import open_store

runner = CliRunner()
FAST = ["--epochs", "2", "--warmup", "1", "--batch-size", "32", "--optimizer", "adamw", "--lr", "0.01",
        "--holdout", "0.2", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return class_store(tmp_path_factory.mktemp("solv") / "s.zarr", registers=1)


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_solver_and_trained_heads_share_one_sweep(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["probe", "--store", str(store), "--head", "knn,ridge,logreg(C=[0.01,0.1,1.0]),ncm,linear",
            "--k", "5,20", "--tokens", "gap", "--out", str(out), *FAST]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    rows = _rows(out)
    assert sorted(row["config"]["kind"] for row in rows) == ["knn", "linear", "logreg", "ncm", "ridge"]
    assert all(row["metrics"]["holdout"] is not None and row["metrics"]["eval"]["n"] == 64 for row in rows)
    by_kind = {row["config"]["kind"]: row for row in rows}
    assert by_kind["ridge"]["metrics"]["eval"]["top1"] > 0.8  # separable classes: the probes work
    assert by_kind["knn"]["head_file"] is None and by_kind["knn"]["solver"]["k"] == 20  # the fixed rule
    assert by_kind["logreg"]["solver"]["C"] in (0.01, 0.1, 1.0)
    assert len(by_kind["logreg"]["curves"]["holdout_top1"]) == 3
    assert "ridge" in r.output and "best overall" in r.output
    assert any((out / "pooled").glob("*.gap.npy"))
    with open_store(store) as st:  # a saved head reproduces its eval accuracy from the pooled view
        rows_val = np.arange(st.split("val").num_samples)
        x = torch.from_numpy(pool_rows(st, "val", 0, rows_val).features("gap"))
        y = torch.from_numpy(st.read_labels("val"))
    for kind in ("ridge", "logreg", "ncm"):
        logits, head_meta = load_solver_head(out / by_kind[kind]["head_file"])
        assert head_meta["kind"] == kind and head_meta["tokens"] == "gap"
        acc = float((logits(x).argmax(1) == y).double().mean())
        assert acc == pytest.approx(by_kind[kind]["metrics"]["eval"]["top1"], abs=1 / 64 + 1e-9), kind
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and len(_rows(out)) == 5  # finished solver configs are skipped too
    rep = runner.invoke(app, ["report", str(out)])  # the report reads solver rows beside trained ones
    assert rep.exit_code == 0, rep.output
    assert "| ncm[gap] L0 |" in (out / "report" / "report.md").read_text()


def test_grid_file_routes_solver_heads_of_every_table(store: Path, tmp_path: Path) -> None:
    """Solver heads at the top level of a grid file or inside [[grid]] tables run with each table's own
    options; the tables' trained heads still run as the tables say (they used to be dropped whenever a
    solver head was in the sweep), and a solver head several tables inherit runs once."""
    grid = tmp_path / "sweep.toml"
    grid.write_text('head = ["linear", "knn(k=[5])"]\ntokens = ["gap"]\n'
                    '[[grid]]\nlr = [0.01]\n[[grid]]\nlr = [0.1]\n'
                    '[[grid]]\nhead = ["ncm"]\ntokens = ["cls"]\n')
    out = tmp_path / "run"
    fast = [a for a in FAST if a not in ("--lr", "0.01")]
    r = runner.invoke(app, ["probe", "--store", str(store), "--grid", str(grid), "--out", str(out), *fast])
    assert r.exit_code == 0, r.output
    rows = _rows(out)
    got = sorted((row["config"]["kind"], row["config"].get("lr"), row["config"]["tokens"]) for row in rows)
    assert got == [("knn", None, "gap"), ("linear", 0.01, "gap"), ("linear", 0.1, "gap"), ("ncm", None, "cls"),
                   ("ridge", None, "gap")], got  # ridge: the linear table's least-squares fit
    knn = next(row for row in rows if row["config"]["kind"] == "knn")
    assert knn["solver"]["k"] == 5
    assert {row["input"]["tokens"] for row in rows} == {"gap", "cls"}  # solver rows describe their input too
    assert all(row["input"]["layers"] == [0] and row["input"]["layer_mix"] == "none" for row in rows)


def test_fewshot_tries_give_mean_and_std(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "few"
    r = runner.invoke(app, ["probe", "--store", str(store), "--head", "knn(select='holdout'),ncm,ridge",
                            "--k", "1,3", "--shots", "1,5", "--tries", "2", "--out", str(out), *FAST])
    assert r.exit_code == 0, r.output
    rows = _rows(out)
    assert len(rows) == 3 * 2 * 2
    for row in rows:
        assert row["data"]["num_train"] == 4 * row["config"]["shots"]  # 4 classes x K
        assert row["data"]["num_refit"] == row["data"]["num_train"]  # the holdout only selects
    ncm = [row for row in rows if row["config"]["kind"] == "ncm" and row["config"]["shots"] == 5]
    assert {row["config"]["try"] for row in ncm} == {0, 1}
    assert "seeds (mean ± std)" in r.output and "5-shot" in r.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--head", "knn", "--k", "20,500"], "k=500 is larger than the bank"),
        (["--head", "logreg(C=[0.1,-1.0])"], "C values must be > 0"),
        (["--head", "ridge", "--tries", "3"], "needs --shots"),
        (["--head", "knn,linear", "--shots", "1,5"], "trained heads"),
        (["--head", "knn", "--k", "5", "--temperature", "0.1"], "k=20, T=0.07"),
        (["--head", "ncm", "--tokens", "mean"], "unknown tokens ['mean']"),
        (["--head", "ridge(grid='huge')"], "unknown ridge grid"),
    ],
)
def test_bad_solver_input_exits_2(store: Path, tmp_path: Path, args: list[str], message: str) -> None:
    r = runner.invoke(app, ["probe", "--store", str(store), *FAST, "--out", str(tmp_path / "r"), *args])
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
    assert not (tmp_path / "r" / "results.jsonl").exists()


def test_one_class_store_exits_2(tmp_path: Path) -> None:
    m = meta(dim=8)
    y = np.zeros(40, np.int64)
    store = write_tokens(tmp_path / "one.zarr", m, {"train": (class_tokens(y, m), y), "val": (class_tokens(y, m), y)})
    r = runner.invoke(app, ["probe", "--store", str(store), "--head", "ridge", *FAST])
    assert r.exit_code == 2, r.output
    assert "at least 2" in r.output and "Traceback" not in r.output


def test_non_finite_features_exit_2_naming_the_layer(tmp_path: Path) -> None:
    m = meta(dim=8, layers=(2,))
    y = np.arange(40) % 2
    x = class_tokens(y, m)
    x[7, 0, 3] = np.inf
    store = write_tokens(tmp_path / "inf.zarr", m, {"train": (x, y), "val": (class_tokens(y, m, seed=4), y)})
    out = tmp_path / "r"
    r = runner.invoke(app, ["probe", "--store", str(store), "--head", "knn,ridge", "--k", "20", "--tokens", "cls",
                            "--out", str(out), *FAST])
    assert r.exit_code == 2, r.output
    assert "layer 2" in r.output and "inf/nan" in r.output and "Traceback" not in r.output
    assert not (out / "results.jsonl").exists() and not any((out / "pooled").glob("*.npy"))


def test_shards_split_solver_configs_and_union_equals_the_whole(tmp_path: Path) -> None:
    from epcache.probe import ProbeConfig, probe_store

    store = class_store(tmp_path / "s.zarr", layers=(0, 1))
    base = {"store": str(store), "head": ("ncm", "ridge(grid='bigvision')"), "tokens": ("cls", "gap"),
            "layers": "all", "holdout": 0.2, "device": "cpu"}
    whole = probe_store(ProbeConfig(**base), progress=False)
    parts = [probe_store(ProbeConfig(**base, shard=f"{i}/2", out=str(tmp_path / "run")), progress=False)
             for i in (0, 1)]
    assert len(whole.rows) == 8 and all(len(p.rows) == 4 for p in parts)
    by_id = {r["id"]: r for p in parts for r in p.rows}
    assert set(by_id) == {r["id"] for r in whole.rows}
    for r in whole.rows:
        assert by_id[r["id"]]["metrics"]["eval"] == r["metrics"]["eval"]
