"""`epcache export`: writes the file, refuses to overwrite without --force, and every bad input is one line, exit 2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from solver_helpers import class_store, class_tokens, meta, write_tokens
from typer.testing import CliRunner

from epcache.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return class_store(tmp_path_factory.mktemp("xcli") / "s.zarr", n_train=48, n_val=16, layers=(0, 3))


def test_export_writes_the_file_and_force_replaces_it(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "val.npz"
    args = ["export", str(store), "--layer", "3", "--tokens", "cls+gap", "--split", "val", "--out", str(out)]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "exported 16 x 32 float32 cls+gap vectors of split 'val' (layer 3" in r.output
    with np.load(out, allow_pickle=False) as z:
        assert z["features"].shape == (16, 32) and z["index"].tolist() == list(range(16))
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and "exists; pass --force" in r.output
    r = runner.invoke(app, ["export", str(store), "--layer", "3", "--split", "val", "--out", str(out), "--force"])
    assert r.exit_code == 0, r.output
    with np.load(out, allow_pickle=False) as z:
        assert z["features"].shape == (16, 16)


@pytest.mark.reliability_bad_input
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--layer", "5"], "has no layer 5 (stored layers: 0, 3)"),
        (["--split", "test"], "has no split 'test'"),
        (["--tokens", "patch"], "unknown tokens 'patch'; export reads cls, gap, cls+gap, pooled"),
        (["--tokens", "pooled"], "has no 'pooled' array"),
        (["--out", "feats.csv"], "the suffix must be .npz or .parquet"),
    ],
    ids=["layer", "split", "tokens", "pooled", "suffix"],
)
def test_bad_input_exits_2_with_one_line(store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         args: list[str], message: str) -> None:
    monkeypatch.chdir(tmp_path)
    full = ["export", str(store), *args]
    if "--out" not in args:
        full += ["--out", "f.npz"]
    r = runner.invoke(app, full)
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.output
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.reliability_bad_input
def test_missing_store_exits_2(tmp_path: Path) -> None:
    r = runner.invoke(app, ["export", str(tmp_path / "nope.zarr"), "--out", str(tmp_path / "f.npz")])
    assert r.exit_code == 2 and r.output.startswith("error: ") and "nope.zarr" in r.output, r.output
    assert not (tmp_path / "f.npz").exists()


@pytest.mark.reliability_bad_input
def test_cls_of_a_backbone_without_one_exits_2(tmp_path: Path) -> None:
    m = meta(dim=8, cls=False)
    y = np.arange(16) % 2
    path = write_tokens(tmp_path / "nocls.zarr", m, {"train": (class_tokens(y, m), y)})
    r = runner.invoke(app, ["export", str(path), "--tokens", "cls", "--out", str(tmp_path / "f.npz")])
    assert r.exit_code == 2 and "has no CLS token; export tokens gap" in r.output, r.output
    assert not (tmp_path / "f.npz").exists()
