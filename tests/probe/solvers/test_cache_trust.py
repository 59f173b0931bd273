"""Caches a probe reads are checked against what was recorded from the store: RUNDIR/pooled and checkpoints.

An edited pooled ``.npy`` whose row count still matches (rows shuffled, values doubled, GAP
negated) is detected by its sha256, pooled again from the store with one note, and the rows
and the best config equal a clean run's; rows say whether their vectors came from the store or
the cache; a changed store gets new entries; ``RUNDIR/pooled`` as a file is one line, exit 2;
a killed sweep's temporary files are removed on the next run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from solver_helpers import class_store
from typer.testing import CliRunner

from epcache.cli import app
from epcache.probe import ProbeConfig, probe_store
from epcache.probe.results.rows import load_checkpoint, save_checkpoint
from epcache.probe.solvers import PooledCache
from epcache.probe.solvers import vectors as pooled_module
from epcache.store import open_store

runner = CliRunner()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return class_store(tmp_path_factory.mktemp("trust") / "s.zarr", n_train=96, n_val=40, registers=1)


def _config(store: Path, out: Path) -> ProbeConfig:
    return ProbeConfig(store=str(store), head=("knn", "ridge", "logreg(C=[0.01,0.1,1.0])", "ncm"),
                       tokens=("cls", "gap"), k=(3, 5), holdout=0.25, device="cpu", out=str(out))


def _numbers(rows: tuple[dict, ...] | list[dict]) -> dict[str, object]:
    return {r["id"]: (r["metrics"], r["solver"], r["selected_epoch"]) for r in rows}


def _rerun(store: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> tuple[object, str]:
    for f in out.glob("results*.jsonl"):  # the configs run again, reading the pooled cache
        f.unlink()
    capsys.readouterr()
    result = probe_store(_config(store, out), progress=True)
    return result, capsys.readouterr().err


def _edit(path: Path, how: str) -> None:
    x = np.load(path, allow_pickle=False)
    if how == "shuffled":
        x = x[np.random.default_rng(0).permutation(len(x))]
    elif how == "doubled":
        x = x * 2
    else:
        x = -x
    np.save(path, x, allow_pickle=False)  # same shape and dtype: the row count still matches


@pytest.mark.reliability_corruption
@pytest.mark.parametrize("how", ["shuffled", "doubled", "negated"])
def test_edited_pooled_npy_is_pooled_again_and_rows_equal_the_clean_run(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], how: str
) -> None:
    out = tmp_path / "run"
    clean = probe_store(_config(store, out), progress=False)
    assert {r["input"]["features_from"] for r in clean.rows} == {"store"}
    (train_gap,) = (out / "pooled").glob("train-layer0-*.gap.npy")
    (train_cls,) = (out / "pooled").glob("train-layer0-*.cls.npy")
    original = train_gap.read_bytes()
    reread, err = _rerun(store, out, capsys)  # untouched: every vector from the cache, same numbers
    assert {r["input"]["features_from"] for r in reread.rows} == {"cache"} and "fails its check" not in err
    assert _numbers(reread.rows) == _numbers(clean.rows)

    _edit(train_gap, how)
    if how == "shuffled":
        _edit(train_cls, how)
    assert train_gap.read_bytes() != original
    again, err = _rerun(store, out, capsys)
    notes = [line for line in err.splitlines() if "fails its check" in line]
    assert len(notes) == 1 and train_gap.name.removesuffix(".gap.npy") in notes[0]
    assert "sha256 differs" in notes[0] and "Traceback" not in err
    assert {r["input"]["features_from"] for r in again.rows} == {"store+cache"}  # train pooled again, eval cached
    assert _numbers(again.rows) == _numbers(clean.rows)
    assert again.best is not None and clean.best is not None and again.best["id"] == clean.best["id"]
    assert train_gap.read_bytes() == original  # rewritten from the store
    rows_on_disk = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {r["input"]["features_from"] for r in rows_on_disk} == {"store+cache"}


@pytest.mark.reliability_corruption
def test_entry_without_its_record_or_with_another_stores_record_is_not_read(tmp_path: Path) -> None:
    store = class_store(tmp_path / "s.zarr", n_train=32, n_val=8)
    rows = np.arange(32)
    notes: list[str] = []
    root = tmp_path / "run" / "pooled"
    with open_store(store) as st:
        first = PooledCache(root, say=notes.append).get(st, "train", 0, rows)
        assert not first.from_cache
        (record,) = root.glob("*.json")
        doc = json.loads(record.read_text())
        doc["provenance"] = "0" * 16
        record.write_text(json.dumps(doc))
        again = PooledCache(root, say=notes.append).get(st, "train", 0, rows)
        assert not again.from_cache and len(notes) == 1 and "another store" in notes[0]
        record.unlink()  # a write killed before its record: pooled again
        assert not PooledCache(root, say=notes.append).get(st, "train", 0, rows).from_cache
        assert len(notes) == 2 and "missing" in notes[1]
        assert PooledCache(root, say=notes.append).get(st, "train", 0, rows).from_cache  # rewritten, now trusted
    assert np.array_equal(first.gap, again.gap)


def test_a_changed_store_gets_new_entries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = class_store(tmp_path / "s.zarr", n_train=32, n_val=8)
    rows = np.arange(32)
    root = tmp_path / "run" / "pooled"
    with open_store(store) as st:
        PooledCache(root).get(st, "train", 0, rows)
        assert PooledCache(root).get(st, "train", 0, rows).from_cache
        records = st.block_records("train", 0).copy()
        records[-1] ^= 1  # the same provenance, one block rewritten with other bytes
        monkeypatch.setattr(st, "block_records", lambda split, layer: records)
        calls = []
        real = pooled_module.pool_rows
        monkeypatch.setattr(pooled_module, "pool_rows", lambda *a: calls.append(a) or real(*a))
        view = PooledCache(root).get(st, "train", 0, rows)
    assert not view.from_cache and len(calls) == 1  # another key: never the old vectors
    assert len(list(root.glob("*.json"))) == 2


@pytest.mark.reliability_bad_input
def test_pooled_that_is_a_file_exits_2_with_one_line(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "pooled").write_text("not a folder")
    r = runner.invoke(app, ["probe", "--store", str(store), "--head", "ridge", "--tokens", "gap", "--out", str(out),
                            "--holdout", "0.2", "--device", "cpu", "--no-progress"])
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and str(out / "pooled") in lines[0] and "move or delete" in lines[0]
    assert "Traceback" not in r.output and not (out / "results.jsonl").exists()
    with pytest.raises(Exception, match="regular file"):
        PooledCache(out / "pooled")


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.mark.reliability_kill
def test_killed_sweeps_temporary_files_are_removed_on_rerun(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    probe_store(_config(store, out), progress=False)
    dead = _dead_pid()
    leftovers = [out / "pooled" / f".train-layer0-0123456789abcdef.gap.npy.tmp-{dead}",
                 out / "heads" / f".abc.safetensors.tmp-{dead}", out / "ckpt" / f".g.safetensors.tmp-{dead}"]
    alive = out / "pooled" / f".val-layer0-0123456789abcdef.gap.npy.tmp-{os.getpid()}"
    for f in [*leftovers, alive]:
        f.write_bytes(b"half written")
    again = probe_store(_config(store, out), progress=False)
    assert len(again.skipped) == len(again.rows)  # every config finished: only the cleanup ran
    assert not any(f.exists() for f in leftovers)
    assert alive.exists()  # its writer still runs (another shard): kept


@pytest.mark.reliability_corruption
def test_checkpoint_whose_tensors_changed_is_not_resumed(tmp_path: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = tmp_path / "ckpt.safetensors"
    tensors = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.zeros(3, dtype=torch.bfloat16)}
    save_checkpoint(path, tensors, {"config_ids": ["a"], "epoch": 1})
    loaded = load_checkpoint(path)
    assert loaded is not None and torch.equal(loaded[0]["w"], tensors["w"]) and loaded[1]["epoch"] == 1
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    save_file({**tensors, "w": tensors["w"] * 2}, str(path), metadata=meta)  # numbers changed, metadata kept
    notes: list[str] = []
    assert load_checkpoint(path, say=notes.append) is None
    assert len(notes) == 1 and str(path) in notes[0] and "first epoch" in notes[0]
