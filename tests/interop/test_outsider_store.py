"""Contract test: stores written from cache_layout.md alone (tests/interop/outsider_writer.py imports
no epcache) are accepted by `epcache info`, `verify` and `probe`, with zarr-python and with h5py."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
import outsider_writer

from epcache.cli import app

runner = CliRunner()


def test_the_writer_imports_no_epcache() -> None:
    tree = ast.parse(Path(outsider_writer.__file__).read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert names and not [m for m in names if m.startswith("epcache")]


@pytest.mark.parametrize("backend", ["zarr", "h5"])
def test_epcache_accepts_an_outsider_store(backend: str, tmp_path: Path) -> None:
    path = tmp_path / f"outsider.{backend}"
    (outsider_writer.write_zarr if backend == "zarr" else outsider_writer.write_h5)(path)
    key = outsider_writer.document()["provenance"]

    r = runner.invoke(app, ["info", str(path)])
    assert r.exit_code == 0, r.output
    assert "format 1.1" in r.output and "status      complete" in r.output and f"provenance  {key}" in r.output
    assert "WARNING" not in r.output

    r = runner.invoke(app, ["verify", str(path), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "clean:" in r.output and "11 blocks; 11 checksummed" in r.output

    out = tmp_path / "run"
    r = runner.invoke(app, ["probe", "--store", str(path), "--head", "linear", "--tokens", "cls", "--epochs", "5",
                            "--warmup", "0", "--batch-size", "8", "--optimizer", "adamw", "--lr", "0.05",
                            "--holdout", "0", "--device", "cpu", "--out", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["store"]["provenance"] == key
    assert rows[0]["store"]["backbone"] == "outsider_net.v1" and rows[0]["data"]["num_eval"] == 12
    assert rows[0]["metrics"]["eval"]["top1"] > 0.9  # CLS channel y is raised for class y: separable
