"""What must NOT happen to a corrupted store: a repair or resume writing through wrong array metadata,
a probe that trains silently. And what --trust-store does instead: trains, and says so in every row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from corrupt_helpers import chunk, copy, edit_json, edit_meta, edit_vector, probe, runner, write

from epcache.cli import app
from epcache.errors import CorruptStoreError
from epcache.store import open_store

pytestmark = pytest.mark.reliability_corruption


def _files(p: Path) -> dict[str, bytes]:
    return {f.relative_to(p).as_posix(): f.read_bytes() for f in sorted(p.rglob("*")) if f.is_file()}


@pytest.mark.parametrize("dtype", ["float32", "int16"])
def test_repair_refuses_a_dtype_edit_and_touches_nothing(dtype: str, tmp_path: Path) -> None:
    store = write(tmp_path / "s.zarr")
    edit_json(store / "splits/train/layers/1/zarr.json", lambda d: d.__setitem__("data_type", dtype))
    before = _files(store)
    (tmp_path / "data").mkdir()
    r = runner.invoke(app, ["verify", str(store), "--repair", "--data", str(tmp_path / "data"), "--no-progress"])
    assert r.exit_code == 2, r.output
    assert "cannot be repaired block by block" in r.output and "set its data type back to float16" in r.output
    assert _files(store) == before  # not one block rewritten
    with pytest.raises(CorruptStoreError, match="refusing to write into this store"):
        open_store(store, "a")  # a resumed extraction would write through the wrong dtype too


def test_trust_store_trains_and_is_recorded_in_every_row(tmp_path: Path) -> None:
    store = write(tmp_path / "s.zarr")
    code, out = probe(store, "--out", str(tmp_path / "clean"))
    assert code == 0, out
    rows = [json.loads(x) for x in (tmp_path / "clean/results.jsonl").read_text().splitlines()]
    assert rows and all(r["config"]["trust_store"] is False for r in rows)

    edit_vector(store, "train", "labels", lambda a: a[::-1].copy())
    edit_meta(store, lambda d: d["backbone"].__setitem__("name", "edited_name"))
    code, out = probe(store, "--out", str(tmp_path / "refused"))
    assert code == 2 and "fails the provenance check" in out
    code, out = probe(store, "--out", str(tmp_path / "trusted"), "--trust-store")
    assert code == 0, out
    assert "warning:" in out and "--trust-store: training on it anyway" in out
    rows = [json.loads(x) for x in (tmp_path / "trusted/results.jsonl").read_text().splitlines()]
    assert rows and all(r["config"]["trust_store"] is True for r in rows)
    assert rows[0]["store"]["backbone"] == "edited_name"  # what was trusted, visibly
    stored = json.loads((store / "zarr.json").read_text())["attributes"]["epcache"]["provenance"]
    assert rows[0]["store"]["provenance"] == stored  # the STORED key, as info shows it


def test_verify_reports_leftovers_of_killed_writes_and_repairs(tmp_path: Path) -> None:
    store = write(tmp_path / "s.zarr")
    partial = chunk(store, "train", 0, 1).with_name("0.1b2c3d.partial")
    partial.write_bytes(b"half")
    scratch = tmp_path / ".epcache-repair-abc123"
    scratch.mkdir()
    r = runner.invoke(app, ["verify", str(store), "--no-progress"])
    assert r.exit_code == 0, r.output  # leftovers do not make the store wrong
    assert f"leftover: {partial}" in r.output and f"leftover: {scratch}" in r.output
    assert partial.exists() and scratch.exists()  # reported, not removed (resume and repair remove them)


def test_edited_document_is_flagged_by_info_and_ls(tmp_path: Path) -> None:
    store = write(tmp_path / "s.zarr")
    stored = json.loads((store / "zarr.json").read_text())["attributes"]["epcache"]["provenance"]
    edit_meta(store, lambda d: d["backbone"].__setitem__("name", "other"))
    r = runner.invoke(app, ["info", str(store)])
    assert r.exit_code == 0, r.output
    assert f"provenance  {stored}" in r.output  # the STORED key
    assert "WARNING" in r.output and "edited after extraction" in r.output
    r = runner.invoke(app, ["ls", str(tmp_path)])
    assert "EDITED metadata" in r.output and stored[:16] in r.output


def test_sharded_copy_is_checked_in_any_read_order(tmp_path: Path) -> None:
    """1.0 sharded stores: the shard is checked once its last chunk was read, whatever the order."""
    import numpy as np

    src = Path(__file__).resolve().parents[2] / "data" / "v1_0" / "store.zarr"
    store = copy(src, tmp_path / "v10.zarr")
    with open(chunk(store, "train", 0, 2), "r+b") as f:
        f.seek(3)
        f.write(b"\x7f")
    with open_store(store, verify_reads=True) as st:
        st.read_chunk("train", 0, 5)  # chunk 5 of shard 2 (chunks 4, 5): one of two read, nothing to say yet
        st.read_chunk("train", 0, 0)
        st.read_chunk("train", 0, 1)  # shard 0 complete and intact
        with pytest.raises(CorruptStoreError, match=r"shard 2 \(rows 16-24\) of 'train' layer 0 fails"):
            st.read_chunk("train", 0, 4)
        assert np.isfinite(st.read_chunk("train", 1, 4).astype(np.float32)).all()  # other layer intact
