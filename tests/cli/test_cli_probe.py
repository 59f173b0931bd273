"""`epcache probe` through the CLI: comma lists become a sweep, results land in RUNDIR, errors exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from probe_helpers import write_store
from typer.testing import CliRunner

from epcache.cli import app

runner = CliRunner()
FAST = ["--epochs", "2", "--warmup", "1", "--batch-size", "32", "--optimizer", "adamw", "--no-progress"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_store(tmp_path_factory.mktemp("cli") / "s.zarr", n_train=96, n_val=32)


def test_sweep_from_comma_lists(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    r = runner.invoke(app, ["probe", "--store", str(store), "--head", "linear,ep", "--queries", "2,4",
                            "--lr", "1e-3,3e-3", "--layers", "0,1", "--out", str(out), *FAST])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    # linear: 1 token choice; ep: 2 query counts -> 3 heads x 2 lrs x 2 layers, plus the linear family's
    # least-squares candidate on each layer (recipe auto fits both linear fits)
    assert len(rows) == 14
    assert sorted(r["config"]["layer"] for r in rows if r["config"]["kind"] == "ridge") == [0, 1]
    assert {r["config"]["head_options"].get("queries") for r in rows if r["config"]["kind"] == "ep"} == {2, 4}
    assert "best overall" in r.output
    again = runner.invoke(app, ["probe", "--store", str(store), "--head", "linear,ep", "--queries", "2,4",
                                "--lr", "1e-3,3e-3", "--layers", "0,1", "--out", str(out), *FAST])
    assert again.exit_code == 0
    assert len((out / "results.jsonl").read_text().splitlines()) == 14  # finished configs are skipped


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--layers", "7"], "layer"),
        (["--eval-split", "test"], "test"),
        (["--head", "ep", "--queries", "3,5"], "queries"),
        (["--lr", "fast"], "fast"),
    ],
)
def test_bad_input_exits_2(store: Path, tmp_path: Path, args: list[str], message: str) -> None:
    r = runner.invoke(app, ["probe", "--store", str(store), *FAST, "--out", str(tmp_path / "r"), *args])
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
    assert not (tmp_path / "r" / "results.jsonl").exists()


def test_probe_refuses_a_chunk_whose_bytes_changed(tmp_path: Path) -> None:
    import numpy as np

    store = write_store(tmp_path / "s.zarr", n_train=64, n_val=16, chunk_samples=16)
    chunk = store / "splits/train/layers/0/c/1/0/0/0"
    raw = bytearray(chunk.read_bytes())
    raw[100] ^= 0x40  # one flipped bit: still a valid float16, so only the checksum can tell
    chunk.write_bytes(bytes(raw))
    r = runner.invoke(app, ["probe", "--store", str(store), "--head", "linear", "--layers", "0", *FAST])
    assert r.exit_code == 2, r.output
    assert "chunk 1 (rows 16-32) of 'train' layer 0 fails its crc32c check" in r.output
    assert "Traceback" not in r.output
    from epcache.store import open_store

    with open_store(store) as st:  # plain readers (and the read benchmark) do not pay for the check
        assert np.isfinite(st.read_chunk("train", 0, 1).astype(np.float32)).all()
