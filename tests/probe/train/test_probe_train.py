"""End-to-end sweeps on tiny needle stores: accuracy, fusion equivalence, selection, outputs, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from probe_helpers import config, write_store
from safetensors.torch import load_file

from epcache.probe import load_head, probe_store, read_results
from epcache.probe.data.select import HOLDOUT_RULE
from epcache.probe.results.rows import RESULT_SCHEMA
from epcache.store import class_map_fingerprint, open_store, select_tokens
from epcache.store.layout.tokens import to_torch


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_store(tmp_path_factory.mktemp("needle") / "needle.zarr", n_train=240, n_val=120)


def test_ep_beats_linear_gap_when_the_class_is_in_one_token(store: Path) -> None:
    # Each image's class is the direction of ONE random patch token; GAP averages it with 15 noise tokens.
    res = probe_store(config(store, head="linear,ep", tokens="gap,patch", epochs=12, lr="0.01,0.05"), progress=False)
    best = {
        kind: max(r["metrics"]["eval"]["top1"] for r in res.rows if r["config"]["kind"] == kind)
        for kind in ("ep", "linear")
    }
    assert best["ep"] > 0.9
    assert best["ep"] > best["linear"] + 0.25


def test_sweep_equals_configs_trained_alone(store: Path, tmp_path: Path) -> None:
    common = {"dtype": "float64", "epochs": 3, "out": str(tmp_path / "sweep")}
    sweep = probe_store(
        config(store, head="linear,ep,mhca", queries=4, num_heads=2, tokens="gap,cls,patch", lr="0.01,0.05",
               wd="0,0.01", seeds="0,1", optimizer="lars", **common),
        progress=False,
    )
    assert len(sweep.rows) == (2 + 1 + 1) * 2 * 2 * 2  # linear gap/cls, ep, mhca x lr x wd x seed
    by_name = {r["name"]: r for r in sweep.rows}
    picks = [
        ("ep", "patch", 0.05, 0.01, 1),
        ("linear", "gap", 0.01, 0.0, 0),
        ("linear", "cls", 0.05, 0.01, 1),
        ("mhca", "patch", 0.01, 0.01, 0),
    ]
    for kind, tokens, lr, wd, seed in picks:
        alone_dir = tmp_path / f"alone-{kind}-{tokens}"
        alone = probe_store(
            config(store, head=kind, tokens=tokens, lr=lr, wd=wd, seeds=seed, optimizer="lars",
                   queries=4 if kind == "ep" else (), num_heads=2 if kind == "mhca" else (),
                   **{**common, "out": str(alone_dir)}),
            progress=False,
        )
        (row,) = alone.rows
        twin = by_name[row["name"]]
        assert row["id"] == twin["id"]
        _assert_rows_close(row, twin)
        w_alone = load_file(str(alone_dir / row["head_file"]))
        w_sweep = load_file(str(tmp_path / "sweep" / twin["head_file"]))
        for key, t in w_alone.items():
            torch.testing.assert_close(w_sweep[key], t, rtol=1e-9, atol=1e-12)


def test_fused_equals_reference_loop_and_in_memory_equals_streaming(store: Path) -> None:
    kw = {"head": "linear,ep,mhca", "tokens": "cls+gap,patch,all", "queries": 4, "num_heads": 2, "epochs": 3,
          "dtype": "float64", "lr": "0.02", "seeds": "0,1"}
    fused = probe_store(config(store, in_memory=False, **kw), progress=False)
    loop = probe_store(config(store, fused=False, in_memory=False, **kw), progress=False)
    memory = probe_store(config(store, in_memory=True, **kw), progress=False)
    streamed_eval = probe_store(config(store, in_memory=False, eval_cache_mb=0, **kw), progress=False)
    for other in (loop, memory, streamed_eval):
        for a, b in zip(fused.rows, other.rows, strict=True):
            assert a["id"] == b["id"]
            _assert_rows_close(a, b)


def test_selection_never_looks_at_the_eval_split(tmp_path: Path) -> None:
    val = np.arange(120) % 4
    shuffled = np.random.default_rng(5).permutation(val)
    a = write_store(tmp_path / "a.zarr", n_train=240, n_val=120)
    b = write_store(tmp_path / "b.zarr", n_train=240, n_val=120, val_labels=val, val_label_override=shuffled)
    kw = {"head": "linear,ep", "tokens": "gap,patch", "lr": "0.005,0.05", "epochs": 6, "seeds": "0,1"}
    ra, rb = probe_store(config(a, **kw), progress=False), probe_store(config(b, **kw), progress=False)
    assert [r["selected_epoch"] for r in ra.rows] == [r["selected_epoch"] for r in rb.rows]
    assert [r["metrics"]["holdout"] for r in ra.rows] == [r["metrics"]["holdout"] for r in rb.rows]
    assert ra.best is not None and rb.best is not None and ra.best["name"] == rb.best["name"]
    assert [r["curves"]["eval_top1"] for r in ra.rows] != [r["curves"]["eval_top1"] for r in rb.rows]


def test_results_schema_heads_and_consistency(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = probe_store(config(store, head="linear,ep", tokens="gap,patch", seeds="0,1", epochs=4, out=str(out)),
                      progress=False)
    rows = read_results(out / "results.jsonl")
    assert [r["id"] for r in rows] == [r["id"] for r in res.rows]
    cfg = json.loads((out / "config.json").read_text())
    assert [r["id"] for r in cfg["runs"]] == [r["id"] for r in rows]
    assert not list((out / "ckpt").iterdir())  # group checkpoints are removed once the rows are written
    st = open_store(store)
    meta = st.meta
    val_labels = torch.from_numpy(st.read_labels("val"))
    tokens = to_torch(st.read_tokens("val", 1)[:, 0]).float()
    for r in rows:
        assert r["schema"] == RESULT_SCHEMA
        assert set(r) >= {"id", "name", "config", "store", "eval_store", "data", "params", "flops", "selected_epoch",
                          "metrics", "oracle", "final", "curves", "head_file", "timing", "diverged"}
        assert r["store"]["provenance"] == st.provenance and r["store"]["path"] == str(store)
        assert set(r["config"]) >= {"head", "kind", "head_options", "layer", "tokens", "optimizer", "lr", "blr", "wd",
                                    "seed", "data_seed", "holdout", "shots", "fraction"}
        assert r["protocol"]["epochs"] == 4 and r["protocol"]["batch_size"] == 32
        assert r["protocol"]["total_steps"] == 4 * (192 // 32) and r["protocol"]["store_provenance"] == st.provenance
        assert r["params"] > 0 and r["flops"] > 0
        assert r["data"] == {"num_classes": 4, "num_train": 192, "num_holdout": 48, "num_eval": 120,
                             "holdout_fraction": 0.2, "holdout_rule": HOLDOUT_RULE,
                             "excluded_train": 0, "excluded_eval": 0,
                             "class_map": class_map_fingerprint(st.split("train").classes), "tap": "block"}
        assert r["stop"] == {"epochs_run": 4, "reason": "schedule"}
        curves = r["curves"]
        assert len(curves["train_loss"]) == len(curves["holdout_top1"]) == len(curves["eval_top1"]) == 4
        e = r["selected_epoch"] - 1  # 1-based in rows, 0-based in the curve lists
        assert curves["holdout_top1"][e] == max(curves["holdout_top1"])
        scores = [(h, -loss) for h, loss in zip(curves["holdout_top1"], curves["holdout_loss"], strict=True)]
        assert scores.index(max(scores)) == e  # top-1 ties broken by the lower holdout loss, then the earlier epoch
        assert r["metrics"]["eval"]["top1"] == pytest.approx(curves["eval_top1"][e])
        assert r["metrics"]["holdout"]["top1"] == pytest.approx(curves["holdout_top1"][e])
        assert r["oracle"]["eval_top1"] == max(curves["eval_top1"])
        m = r["metrics"]["eval"]
        assert m["n"] == 120 and len(m["per_class"]) == 4 and m["top5"] is None  # fewer than 5 classes
        # the saved head reproduces the reported eval accuracy from the store's tokens
        head, hmeta = load_head(out / r["head_file"])
        assert hmeta["id"] == r["id"] and hmeta["store_provenance"] == st.provenance
        x = tokens if r["config"]["kind"] == "linear" else select_tokens(tokens, meta.layout, "patch")
        with torch.no_grad():
            acc = (head(x).argmax(-1) == val_labels).double().mean().item()
        assert acc == pytest.approx(m["top1"], abs=1.5 / 120)  # fp16 -> fp32 on both sides; at most a tie apart
    assert "seeds (mean ± std)" in res.summary and "best overall" in res.summary
    assert (out / "summary.txt").read_text().strip() == res.summary


def test_rerun_skips_finished_configs_and_ignores_a_truncated_line(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    kw = {"head": "ep", "lr": "0.01,0.05", "epochs": 2, "out": str(out)}
    first = probe_store(config(store, **kw), progress=False)
    with open(out / "results.jsonl", "a", encoding="utf-8") as f:
        f.write('{"id": "half a line')  # a crash in the middle of an append
    again = probe_store(config(store, **kw), progress=False)
    assert again.skipped == tuple(r["id"] for r in first.rows)
    assert again.rows == first.rows
    assert (out / "results.jsonl").read_text().endswith("}\n")
    more = probe_store(config(store, **{**kw, "lr": "0.01,0.05,0.1"}), progress=False)
    assert len(more.skipped) == 2 and len(more.rows) == 3
    assert len(read_results(out / "results.jsonl")) == 3


def test_low_shot_and_views(tmp_path: Path) -> None:
    s = write_store(tmp_path / "views.zarr", n_train=200, n_val=40, views=3)
    shots = probe_store(config(s, shots=5, batch_size=8, epochs=2), progress=False)
    assert shots.rows[0]["data"]["num_train"] == 5 * 4
    frac = probe_store(config(s, fraction=0.5, batch_size=8, epochs=2), progress=False)
    assert frac.rows[0]["data"]["num_train"] == 4 * 20  # 50 per class, 10 held out, half of the other 40
    first = probe_store(config(s, epochs=3), progress=False)
    again = probe_store(config(s, epochs=3), progress=False)
    assert first.rows[0]["curves"] == again.rows[0]["curves"]


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_bfloat16_and_float32_stores(tmp_path: Path, dtype: str) -> None:
    s = write_store(tmp_path / f"{dtype}.zarr", n_train=240, n_val=120, dtype=dtype)
    res = probe_store(config(s, head="linear,ep", tokens="cls+gap,all", epochs=8, lr=0.05), progress=False)
    ep = next(r for r in res.rows if r["config"]["kind"] == "ep")
    assert ep["metrics"]["eval"]["top1"] > 0.85


def test_holdout_zero_selects_the_last_epoch(store: Path) -> None:
    res = probe_store(config(store, holdout=0.0, epochs=3), progress=False)
    row = res.rows[0]
    assert row["selected_epoch"] == 3 and row["metrics"]["holdout"] is None and res.best is None  # 1-based
    assert "not an honest selection" in res.summary


def _assert_rows_close(a: dict, b: dict) -> None:
    assert a["selected_epoch"] == b["selected_epoch"]
    assert a["params"] == b["params"] and a["flops"] == b["flops"]
    for key in ("holdout", "eval"):
        ma, mb = a["metrics"][key], b["metrics"][key]
        assert (ma is None) == (mb is None)
        if ma is not None:
            assert ma["n"] == mb["n"] and ma["per_class"] == pytest.approx(mb["per_class"])
    for name, curve in a["curves"].items():
        assert curve == pytest.approx(b["curves"][name], rel=1e-9, abs=1e-12)
