"""`epcache probe` says what it ran: intervals in rows and summary, tries, shots used, tokens refused not replaced."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from solver_helpers import class_store
from typer.testing import CliRunner

from epcache.cli import app
from epcache.probe.results.intervals import INTERVAL_METHOD, wilson

runner = CliRunner()
FAST = ["--epochs", "2", "--warmup", "1", "--batch-size", "32", "--optimizer", "adamw", "--lr", "0.01",
        "--holdout", "0.2", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return class_store(tmp_path_factory.mktemp("honest") / "s.zarr")


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_every_top1_carries_its_interval_and_per_class_counts(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    r = runner.invoke(app, ["probe", "--store", str(store), "--head", "linear,ridge", "--tokens", "cls",
                            "--out", str(out), *FAST])
    assert r.exit_code == 0, r.output
    rows = _rows(out)
    assert {row["config"]["kind"] for row in rows} == {"linear", "ridge"}
    for row in rows:
        assert row["metrics"]["interval"] == INTERVAL_METHOD
        for split in ("holdout", "eval"):
            m = row["metrics"][split]
            assert m["top1_ci"] == pytest.approx(list(wilson(round(m["top1"] * m["n"]), m["n"])), abs=1e-12)
            assert sum(m["per_class_n"]) == m["n"] and len(m["per_class_n"]) == 4
    assert rows[0]["metrics"]["holdout"]["per_class_n"] == [8, 8, 8, 8]  # 0.2 of 40 per class
    summary = (out / "summary.txt").read_text()
    for row in rows:  # one row per kind: each in the table with its holdout interval
        lo, hi = row["metrics"]["holdout"]["top1_ci"]
        assert f"{100 * row['metrics']['holdout']['top1']:.2f} [{100 * lo:.1f}, {100 * hi:.1f}]" in summary
    best = next(line for line in summary.splitlines() if line.startswith("  eval top-1 "))
    assert best.split(" [", 1)[1].split("]", 1)[0].count(",") == 1 and INTERVAL_METHOD in summary


def test_fewshot_tries_are_called_tries_and_short_classes_say_the_shots_used(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "few"
    r = runner.invoke(app, ["probe", "--store", str(store), "--head", "ncm", "--tokens", "cls", "--shots", "5,1000",
                            "--tries", "3", "--out", str(out), *FAST])
    assert r.exit_code == 0, r.output
    rows = _rows(out)
    big = [row for row in rows if row["config"]["shots"] == 1000]
    assert len(big) == 3 and all(row["data"]["shots_asked"] == 1000 for row in big)
    assert {row["data"]["shots_used"] for row in big} == {32}  # 40 per class, 8 of them held out
    assert all(row["data"]["num_train"] == 4 * 32 for row in big)
    assert all(row["data"]["shots_used"] == 5 for row in rows if row["config"]["shots"] == 5)
    assert "32-shot (asked 1000)" in r.output and "1000-shot" not in r.output.replace("(asked 1000)", "")
    assert "(3 tries)" in r.output and "3 seeds" not in r.output and "3 tries" in r.output
    assert "selected epoch" not in r.output and "fitted once (solver: no epochs)" in r.output


def test_trained_rows_record_the_shots_they_used(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "lin"
    r = runner.invoke(app, ["probe", "--store", str(store), "--head", "linear", "--tokens", "cls", "--shots", "1000",
                            "--linear-fit", "sgd", "--out", str(out), *FAST])
    assert r.exit_code == 0, r.output
    (row,) = _rows(out)
    assert (row["data"]["shots_asked"], row["data"]["shots_used"]) == (1000, 32)
    assert "32-shot (asked 1000)" in r.output and "selected epoch 2 of 2" in r.output


@pytest.mark.parametrize("heads", ["ridge", "knn,ncm", "ep(queries=4),ridge"])
def test_a_token_source_a_solver_cannot_read_is_refused(store: Path, tmp_path: Path, heads: str) -> None:
    r = runner.invoke(app, ["probe", "--store", str(store), "--head", heads, "--tokens", "patch",
                            "--out", str(tmp_path / "x"), *FAST])
    assert r.exit_code == 2, r.output
    assert "cannot read tokens ['patch']: solver heads read cls, gap, cls+gap" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "x" / "results.jsonl").exists()
    if "," not in heads or heads == "knn,ncm":  # the only problem: one line
        assert len(r.output.strip().splitlines()) == 1, r.output


def test_a_store_without_cls_names_its_default_tokens_once(tmp_path: Path) -> None:
    conv = class_store(tmp_path / "conv.zarr", cls=False, n_train=80, n_val=32)
    out = tmp_path / "run"
    r = runner.invoke(app, ["probe", "--store", str(conv), "--head", "linear,ep(queries=4),knn", "--lr", "0.01,0.1",
                            "--out", str(out), *[a for a in FAST if a not in ("--lr", "0.01")]])
    assert r.exit_code == 0, r.output
    notes = [line for line in r.output.splitlines() if "no CLS token" in line]
    assert len(notes) == 1, r.output
    assert "knn, linear, ridge read gap" in notes[0] and "ep read patch" in notes[0]  # ridge: linear's lstsq fit
    assert {row["config"]["tokens"] for row in _rows(out) if row["config"]["kind"] != "ep"} == {"gap"}
    assert np.unique([row["config"]["lr"] for row in _rows(out) if not row["config"].get("solver")]).size == 2
