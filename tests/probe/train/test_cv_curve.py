"""Cross-validated rows get their eval curve and oracle from the refit, which still keeps the selected epoch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from probe_helpers import config, write_store

from epcache.probe import load_head, probe_store
from epcache.store import open_store
from epcache.store.layout.tokens import to_torch

KW: dict[str, Any] = {"head": "linear", "tokens": "gap", "queries": (), "epochs": 4, "batch_size": 16,
                      "lr": "0.01,0.05", "select": "cv3", "refit": True}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_store(tmp_path_factory.mktemp("cvcurve") / "needle.zarr", n_train=90, n_val=40)


def test_cv_rows_get_the_refit_curve_and_an_oracle_and_the_head_reproduces_eval(store: Path, tmp_path: Path) -> None:
    res = probe_store(config(store, out=str(tmp_path / "on"), **KW), progress=False)
    st = open_store(store)
    labels = torch.from_numpy(st.read_labels("val"))
    tokens = to_torch(st.read_tokens("val", 1)[:, 0]).float()
    assert len(res.rows) == 2
    for r in res.rows:
        assert r["protocol"]["selection_rule"] == "cv3"
        curve = r["curves"]["eval_top1"]
        assert len(curve) == r["protocol"]["epochs"] == 4 and all(v is not None for v in curve)
        assert r["refit"]["eval_curve"] is True and r["refit"]["epochs"] == r["selected_epoch"]
        oracle = r["oracle"]
        assert oracle["curve"] == "refit" and oracle["eval_top1"] == max(curve)
        assert curve[oracle["epoch"] - 1] == oracle["eval_top1"]
        # the curve includes the selected epoch, whose weights are the ones kept: it is the reported eval
        assert curve[r["selected_epoch"] - 1] == pytest.approx(r["metrics"]["eval"]["top1"])
        assert oracle["eval_top1"] >= r["metrics"]["eval"]["top1"]
        assert r["final"] == {"epoch": 4, "eval_top1": curve[-1]}
        head, _ = load_head(tmp_path / "on" / r["head_file"])
        with torch.no_grad():
            acc = (head(tokens).argmax(-1) == labels).double().mean().item()
        assert acc == pytest.approx(r["metrics"]["eval"]["top1"], abs=1.5 / 40)  # fp16 -> fp32: a tie apart


def test_no_eval_curve_keeps_the_short_refit_and_no_oracle(store: Path, tmp_path: Path) -> None:
    on = probe_store(config(store, out=str(tmp_path / "on"), **KW), progress=False)
    off = probe_store(config(store, eval_curve=False, out=str(tmp_path / "off"), **KW), progress=False)
    for a, b in zip(on.rows, off.rows, strict=True):
        assert b["refit"]["eval_curve"] is False and b["oracle"] == {"epoch": None, "eval_top1": None}
        assert all(v is None for v in b["curves"]["eval_top1"])
        # the same refit up to the selected epoch: the kept head scores the same eval either way
        assert a["selected_epoch"] == b["selected_epoch"]
        assert a["metrics"]["eval"]["top1"] == pytest.approx(b["metrics"]["eval"]["top1"])
