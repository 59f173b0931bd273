"""The report's dense part: the table in rank order and the mask panel of the ranking's best dense row.

Rows are written as the probe writes them (results.jsonl plus dense/<id>.npz), with holdout and eval
mIoU disagreeing on purpose: the panel must show the holdout's pick, never eval's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from epcache.errors import ConfigError
from epcache.probe.results.predictions import read_predictions, write_predictions
from epcache.report import write_report
from epcache.report._dense import DENSE_FIGURE, dense_panel

CLASSES = ["background", "disc", "box"]


def _row(ident: str, kind: str, holdout: float, ev: float) -> dict[str, Any]:
    return {
        "schema": "epcache-probe-result/2", "task": "dense", "id": ident, "name": f"{kind} L1", "kind": kind,
        "head": kind, "seed_group": ident, "config": {"kind": kind, "head": kind, "layer": 1},
        "chosen": {"C": 1.0}, "seed": 0, "store": {"path": "/nowhere.zarr", "provenance": "p", "backbone": "vit"},
        "eval_store": {"path": "/nowhere.zarr", "provenance": "p", "backbone": "vit"},
        "input": {"tokens": "patches", "layers": [1], "views": 1},
        "data": {"num_classes": 3, "num_train": 8, "num_eval": 4, "class_map": CLASSES, "ignore_index": 255},
        "params": 0,
        "metrics": {"holdout": {"miou": holdout},
                    "eval": {"miou": ev, "pixel_acc": 0.9, "per_class_iou": dict.fromkeys(CLASSES, ev),
                             "majority_miou": 0.2}},
        "holdout_scores": [{"params": {"C": 1.0}, "miou": holdout}], "protocol": {"selection": "holdout mIoU"},
        "dense_file": f"dense/{ident}.npz",
    }


@pytest.fixture
def rundir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    rng = np.random.default_rng(0)
    rows = [_row("a" * 16, "dense-knn", holdout=0.5, ev=0.9), _row("b" * 16, "seg-linear", holdout=0.7, ev=0.6)]
    for i, r in enumerate(rows):
        truth = rng.integers(0, 3, size=(3, 16, 16))
        truth[0, 0, 0] = 255
        write_predictions(run / r["dense_file"], (truth + i) % 3, truth)
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_the_panel_draws_the_holdout_best_rows_stored_predictions(rundir: Path) -> None:
    rows = [json.loads(line) for line in (rundir / "results.jsonl").read_text().splitlines()]
    panel = dense_panel(rundir, rows)
    assert panel.row["id"] == "b" * 16  # holdout 0.7 beats 0.5, although its eval mIoU is lower
    stored = read_predictions(rundir / "dense" / f"{'b' * 16}.npz")
    np.testing.assert_array_equal(panel.pred, stored["pred"])
    np.testing.assert_array_equal(panel.truth, stored["truth"])
    assert panel.pred.dtype == np.uint8 and panel.truth[0, 0, 0] == panel.ignore_index == 255
    assert panel.classes == tuple(CLASSES)


def test_report_has_the_dense_table_and_figure(rundir: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    rep = write_report(rundir, tmp_path / "rep")
    md = rep.markdown.read_text()
    assert "## Dense probes" in md and f"]({DENSE_FIGURE})" in md
    table = [line for line in md.splitlines() if line.startswith("| `")]
    assert [line.split("`")[1] for line in table] == ["b" * 10, "a" * 10]  # the ranking's order
    assert (tmp_path / "rep" / DENSE_FIGURE).is_file() and (tmp_path / "rep" / DENSE_FIGURE) in rep.figures
    assert rep.num_configs == 2


def test_a_missing_predictions_file_is_a_user_error(rundir: Path, tmp_path: Path) -> None:
    (rundir / "dense" / f"{'b' * 16}.npz").unlink()
    with pytest.raises(ConfigError, match="copy the run directory whole"):
        write_report(rundir, tmp_path / "rep")
