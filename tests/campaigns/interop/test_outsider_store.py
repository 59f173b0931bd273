"""Contract test: stores written from cache_layout.md alone (tests/helpers/outsider_writer.py imports
no epcache) are accepted by `epcache info`, `verify` and `probe`, with zarr-python and with h5py."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import outsider_writer
import pytest
from typer.testing import CliRunner

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
                            "--holdout", "0", "--device", "cpu", "--out", str(out), "--no-progress",
                            "--linear-fit", "sgd"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["store"]["provenance"] == key
    assert rows[0]["store"]["backbone"] == "outsider_net.v1" and rows[0]["data"]["num_eval"] == 12
    assert rows[0]["metrics"]["eval"]["top1"] > 0.9  # CLS channel y is raised for class y: separable


def _zarr_layout(root: Path) -> dict[str, dict]:
    """Every array's zarr.json (the array metadata of §4.1), by path."""
    return {str(p.parent.relative_to(root)): json.loads(p.read_text())
            for p in sorted(root.glob("splits/**/zarr.json")) if json.loads(p.read_text())["node_type"] == "array"}


def _h5_layout(path: Path) -> dict[str, dict]:
    """Every dataset's dtype, shape, layout, chunks, filters, fill value and attributes (§4.2), by path."""
    import h5py

    out: dict[str, dict] = {}
    with h5py.File(path, "r") as f:
        def visit(name: str, obj: object) -> None:
            if isinstance(obj, h5py.Dataset):
                out[name] = {
                    "dtype": obj.dtype.str, "string": h5py.check_string_dtype(obj.dtype), "shape": obj.shape,
                    "layout": obj.id.get_create_plist().get_layout(), "chunks": obj.chunks,
                    "compression": obj.compression, "fill": obj.fillvalue, "attrs": dict(obj.attrs),
                }
        f.visititems(visit)
        root = f.attrs.get_id("epcache")
        out["/epcache"] = {"string": h5py.check_string_dtype(root.dtype), "shape": root.shape}
    return out


@pytest.mark.parametrize("backend", ["zarr", "h5"])
def test_the_outsider_store_is_laid_out_as_epcache_writes_it(backend: str, tmp_path: Path) -> None:
    """Records, ids, ids_utf8, labels, order and tokens as §4 states them: the array metadata (zarr)
    and dataset properties (HDF5) of the outsider's store equal those of epcache writing the same
    content, and so does the root document."""
    import numpy as np

    from epcache.store import SplitSpec, StoreMeta, create_store, open_store

    outsider = tmp_path / f"outsider.{backend}"
    (outsider_writer.write_zarr if backend == "zarr" else outsider_writer.write_h5)(outsider)
    mine = tmp_path / f"epcache.{backend}"
    with create_store(str(mine), StoreMeta.from_json(outsider_writer.document())) as st:
        for split in outsider_writer.N:
            ids, labels, x = outsider_writer.dataset(split)
            st.add_split(SplitSpec(split, labels, ids, outsider_writer.CLASSES, permutation_seed=11),
                         chunk_samples=outsider_writer.CHUNK)
            order = st.read_order(split)
            for b in range(st.split(split).num_blocks):
                lo, hi = st.block_range(split, b)
                st.write_block(split, 2, b, np.ascontiguousarray(x[order][lo:hi]))
    with open_store(str(mine)) as a, open_store(str(outsider)) as b:
        assert a._stored_doc == b._stored_doc == outsider_writer.document()
    if backend == "zarr":
        assert _zarr_layout(mine) == _zarr_layout(outsider)
        files = [sorted(p.relative_to(r).as_posix() for p in r.rglob("*") if p.is_file()) for r in (mine, outsider)]
        assert files[0] == files[1] and "splits/val/records/2/c/2" in files[0]  # the same chunk files
    else:
        got, want = _h5_layout(mine), _h5_layout(outsider)
        assert got == want
        assert got["splits/val/records/2"]["layout"] == 1 and got["splits/val/records/2"]["fill"] == -1  # contiguous
        assert got["splits/val/ids"]["string"].encoding == "utf-8" and got["splits/val/ids"]["string"].length is None
        assert got["splits/val/ids_utf8"]["dtype"] == "|u1" and got["/epcache"]["string"].length is None
