"""Checkpoint curves: a real series probed through `epcache probe --store 'DIR/*.zarr'`, then its curve."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from extract_helpers import tiny_config
from series_helpers import STEPS, series_data, train_checkpoints
from typer.testing import CliRunner

from epcache.board.checkpoints import checkpoint_curve, write_checkpoint_figure
from epcache.cli import app
from epcache.cli.probe_series import CHECKPOINT_SWEEP
from epcache.errors import ConfigError
from epcache.extract import extract_series, list_checkpoints

runner = CliRunner()
FAST = ["--epochs", "2", "--warmup", "1", "--min-steps", "2", "--k", "5", "--select", "holdout", "--holdout", "0.25",
        "--no-progress"]


@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("curve")
    series = list_checkpoints([str(p) for p in train_checkpoints(root / "ckpts")])
    extract_series(tiny_config(series_data(root / "data"), root / "stores", random_init=False), series,
                   progress=False)
    r = runner.invoke(app, ["probe", "--store", str(root / "stores" / "*.zarr"), "--out", str(root / "runs"), *FAST])
    assert r.exit_code == 0, r.output
    assert "epcache board --by checkpoint" in r.output
    return root / "runs"


def test_series_probe_writes_one_run_per_store_with_the_default_sweep(probed: Path) -> None:
    assert sorted(p.name for p in probed.iterdir()) == sorted(f"checkpoint_{s}" for s in STEPS)
    for run in probed.iterdir():
        rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
        # ridge: the linear family's least-squares fit, which the default recipe adds beside the SGD heads
        assert {r["config"]["kind"] for r in rows} == {*CHECKPOINT_SWEEP.split(","), "ridge"}
        assert {r["store"]["path"] for r in rows} == {str(probed.parent / "stores" / f"{run.name}.zarr")}


def test_curve_has_every_checkpoint_in_step_order_and_the_holdout_best(probed: Path, tmp_path: Path) -> None:
    curve = checkpoint_curve(sorted(probed.iterdir(), reverse=True))  # any order in, step order out
    assert set(curve.families) == {"knn", "linear", "logreg", "ridge"}
    for fam in curve.families.values():
        assert [p.step for p in fam.points] == list(STEPS)
        assert all(p.eval_lo <= p.eval_top1 <= p.eval_hi for p in fam.points)
        assert fam.best is not None and fam.best in fam.points
        assert fam.best.holdout_top1 == max(p.holdout_top1 or 0.0 for p in fam.points)
    text = curve.format_text()
    assert text.count("*best (holdout)") == 4  # one per family
    figure = write_checkpoint_figure(curve, tmp_path / "fig" / "checkpoints.png")
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _row(step: int, *, holdout: float | None, eval_top1: float, lr: float = 0.1) -> dict[str, Any]:
    """A results row with the fields the curve reads; its store name carries the step (no store on disk)."""
    metrics = {"eval": {"n": 100, "top1": eval_top1, "top1_ci": [eval_top1 - 0.05, eval_top1 + 0.05],
                        "balanced_acc": eval_top1, "loss": 1.0}}
    metrics["holdout"] = (None if holdout is None else
                          {"n": 50, "top1": holdout, "balanced_acc": holdout, "loss": 1.0})
    return {"name": f"linear lr={lr} seed=0", "seed_group": f"g{step}-{lr}", "params": 10,
            "config": {"kind": "linear"}, "store": {"path": f"gone/checkpoint_{step}.zarr"}, "metrics": metrics}


def _run(root: Path, step: int, rows: list[dict[str, Any]]) -> Path:
    run = root / f"checkpoint_{step}"
    run.mkdir(parents=True)
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_best_checkpoint_is_chosen_on_the_holdout_not_on_eval(tmp_path: Path) -> None:
    runs = [
        _run(tmp_path, 100, [_row(100, holdout=0.50, eval_top1=0.90)]),  # the best eval: must not win
        _run(tmp_path, 200, [_row(200, holdout=0.80, eval_top1=0.60), _row(200, holdout=0.70, eval_top1=0.95, lr=1)]),
        _run(tmp_path, 0, [_row(0, holdout=0.30, eval_top1=0.30)]),
    ]
    fam = checkpoint_curve(runs).families["linear"]
    assert [p.step for p in fam.points] == [0, 100, 200]
    assert fam.points[2].eval_top1 == 0.60  # within a checkpoint, the ranking (holdout) picks the config too
    assert fam.best is fam.points[2]


def test_no_holdout_marks_no_best_and_bad_inputs_are_refused(tmp_path: Path) -> None:
    runs = [_run(tmp_path, s, [_row(s, holdout=None, eval_top1=0.5 + s / 1000)]) for s in (1, 2)]
    fam = checkpoint_curve(runs).families["linear"]
    assert fam.best is None and "no best checkpoint marked" in checkpoint_curve(runs).format_text()
    with pytest.raises(ConfigError, match="both at step 2"):
        checkpoint_curve([*runs, _run(tmp_path / "again", 2, [_row(2, holdout=0.1, eval_top1=0.1)])])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no results"):
        checkpoint_curve([tmp_path / "empty"])
    with pytest.raises(ConfigError, match="run directories"):
        checkpoint_curve([])


def test_series_probe_refuses_an_unmatched_glob_and_an_eval_store(tmp_path: Path) -> None:
    r = runner.invoke(app, ["probe", "--store", str(tmp_path / "*.zarr"), "--out", str(tmp_path / "runs")])
    assert r.exit_code == 2 and "matches no store" in r.output
    assert not (tmp_path / "runs").exists()


def test_board_by_checkpoint_prints_and_draws_the_curve(probed: Path, tmp_path: Path) -> None:
    r = runner.invoke(app, ["board", "--by", "checkpoint", *map(str, sorted(probed.iterdir())),
                            "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    assert r.output.count("*best (holdout)") == 4 and (tmp_path / "b" / "checkpoints.png").stat().st_size > 0
    bad = runner.invoke(app, ["board", "--by", "epoch", str(next(probed.iterdir()))])
    assert bad.exit_code == 2 and "--by takes checkpoint" in bad.output
