"""Moment Probing inside sweeps: alone == in a fused sweep (float64), fused == module loop, default tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from probe_helpers import config, write_store
from safetensors.torch import load_file

from epcache.probe import load_head, probe_store

MP = "mp(hidden=64,num_heads=4)"  # 4 slices of 16: 3 maps of 16x16 -> 7x7 -> 3x3, 27 features


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_store(tmp_path_factory.mktemp("mp") / "needle.zarr", n_train=96, n_val=48)


def test_mp_alone_equals_mp_in_a_fused_sweep(store: Path, tmp_path: Path) -> None:
    common = {"dtype": "float64", "epochs": 2, "optimizer": "adamw", "wd": 0.05}
    sweep = probe_store(config(store, head=f"{MP},ep", queries=4, lr="0.01,0.05", seeds="0,1",
                               out=str(tmp_path / "sweep"), **common), progress=False)
    assert sum(r["config"]["kind"] == "mp" for r in sweep.rows) == 4
    by_name = {r["name"]: r for r in sweep.rows}
    alone = probe_store(config(store, head=MP, queries=(), lr=0.05, seeds=1, out=str(tmp_path / "alone"), **common),
                        progress=False)
    (row,) = alone.rows
    assert row["config"]["tokens"] == "all" and row["input"] == {"tokens": "all", "layer_mix": "none", "layers": [1]}
    twin = by_name[row["name"]]
    assert twin["id"] == row["id"]
    assert twin["curves"]["train_loss"] == pytest.approx(row["curves"]["train_loss"], rel=1e-10)
    w_alone = load_file(str(tmp_path / "alone" / row["head_file"]))
    w_sweep = load_file(str(tmp_path / "sweep" / twin["head_file"]))
    assert w_alone.keys() == {"proj.weight", "proj.bias", "ln.weight", "ln.bias", "classifier1.weight",
                              "classifier1.bias", "classifier2.weight", "classifier2.bias",
                              "downblocks.0.0.weight", "downblocks.0.2.weight"}
    for key, t in w_alone.items():
        torch.testing.assert_close(w_sweep[key], t, rtol=1e-10, atol=1e-13)
    head, meta = load_head(tmp_path / "alone" / row["head_file"])
    assert meta["num_prefix"] == 1 and head(torch.randn(2, 17, 16, dtype=torch.float64).float()).shape == (2, 4)


def test_mp_fused_equals_module_loop_and_reads_patch_with_gap(store: Path) -> None:
    kw = {"head": MP, "tokens": "all,patch", "epochs": 2, "dtype": "float64", "lr": "0.02", "seeds": "0,1",
          "queries": (), "optimizer": "adamw"}
    fused = probe_store(config(store, **kw), progress=False)
    loop = probe_store(config(store, fused=False, **kw), progress=False)
    assert {r["config"]["tokens"] for r in fused.rows} == {"all", "patch"}
    for a, b in zip(fused.rows, loop.rows, strict=True):
        assert a["id"] == b["id"]
        assert a["curves"]["train_loss"] == pytest.approx(b["curves"]["train_loss"], rel=1e-10)
        assert a["metrics"]["eval"]["top1"] == b["metrics"]["eval"]["top1"]
