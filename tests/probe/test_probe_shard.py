"""Sharded sweeps: the union of `--shard I/N` runs in one RUNDIR equals the unsharded sweep."""

from __future__ import annotations

from pathlib import Path

import pytest
from probe_helpers import write_store
from typer.testing import CliRunner

from epcache.cli import app
from epcache.errors import ConfigError
from epcache.probe import ProbeConfig, probe_store
from epcache.probe.device import resolve_shard
from epcache.report import load_rows, write_report


def _config(store: Path, out: Path, shard: str | None = None) -> ProbeConfig:
    return ProbeConfig(store=str(store), head=("linear", "ep"), queries=(2, 4), lr=(1e-3, 3e-3), layers=("all",),
                       optimizer=("adamw",), epochs=2, warmup=1, batch_size=32, out=str(out), shard=shard,
                       linear_fit="sgd")  # trained configs only: the shards split 12 of them


def _strip(rows: list[dict]) -> dict[str, dict]:
    return {r["id"]: {k: v for k, v in r.items() if k != "timing"} for r in rows}


def test_two_shards_equal_the_unsharded_sweep(tmp_path: Path) -> None:
    store = write_store(tmp_path / "s.zarr", n_train=96, n_val=32)
    full = probe_store(_config(store, tmp_path / "full"), progress=False)
    a = probe_store(_config(store, tmp_path / "sharded", "0/2"), progress=False)
    b = probe_store(_config(store, tmp_path / "sharded", "1/2"), progress=False)
    assert len(a.rows) + len(b.rows) == len(full.rows) == 12
    assert not {r["id"] for r in a.rows} & {r["id"] for r in b.rows}
    files = sorted(p.name for p in (tmp_path / "sharded").glob("results*.jsonl"))
    assert files == ["results.shard-0-of-2.jsonl", "results.shard-1-of-2.jsonl"]  # no shared file
    sharded, unsharded = _strip(load_rows(tmp_path / "sharded")), _strip(list(full.rows))
    assert sharded.keys() == unsharded.keys()
    for key, row in unsharded.items():  # float32 losses may differ in the last bits with another stack size
        other = sharded[key]
        assert {k: v for k, v in other.items() if k not in ("metrics", "curves")} == {
            k: v for k, v in row.items() if k not in ("metrics", "curves")}
        for split in ("holdout", "eval"):
            assert {k: v for k, v in other["metrics"][split].items() if k != "loss"} == {
                k: v for k, v in row["metrics"][split].items() if k != "loss"}
            assert other["metrics"][split]["loss"] == pytest.approx(row["metrics"][split]["loss"], rel=1e-5)
        for name, curve in row["curves"].items():
            assert other["curves"][name] == pytest.approx(curve, rel=1e-5), name
    assert write_report(tmp_path / "sharded", figures=False).num_configs == 12
    again = probe_store(_config(store, tmp_path / "sharded"), progress=False)  # unsharded re-run: all finished
    assert len(again.skipped) == 12


def test_resolve_shard(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert resolve_shard(None) is None and resolve_shard("1/3") == (1, 3)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert resolve_shard(None) == (1, 2)  # torchrun
    for bad in ("3/3", "a/b", "1"):
        with pytest.raises(ConfigError, match="--shard"):
            resolve_shard(bad)


def test_bad_shard_on_the_cli(tmp_path: Path) -> None:
    store = write_store(tmp_path / "s.zarr", n_train=64, n_val=16)
    args = ["--head", "linear", "--shard", "2/2", "--epochs", "1", "--warmup", "0", "--batch-size", "16"]
    r = CliRunner().invoke(app, ["probe", "--store", str(store), *args, "--no-progress"])
    assert r.exit_code == 2 and "--shard" in r.output and "Traceback" not in r.output
