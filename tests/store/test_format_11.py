"""Format 1.1 (cache_layout.md): what an outside tool relies on, checked against the bytes on disk.

The provenance key is recomputed here from the stored document by the documented recipe (not by
epcache's code); every array carries ``dimension_names``; bf16 arrays say so; ids have a
fixed-width mirror; every chunk of a written block exists even when all zero; shards never
exceed the split; 1.0 stores (tests/data/v1_0, written by the 1.0 writer) still read, verify
and keep their version when appended to.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import google_crc32c
import numpy as np
import pytest
import zarr
from corrupt_helpers import DATA, meta, write

from epcache.store import SplitSpec, StoreLockedError, create_store, describe_store, open_store, verify_store
from epcache.store.layout.chunking import plan_chunks
from epcache.store.layout.crc import crc32c_combine, crc32c_concat


def _outsider_key(doc: dict) -> str:
    """cache_layout.md §2.3, implemented from the text alone."""
    d = {k: v for k, v in doc.items() if k not in ("extra", "provenance")}
    d["backbone"] = {k: v for k, v in d["backbone"].items() if k not in ("source", "weights_file")}
    keep = ("num_samples", "views", "classes", "permutation_seed", "ids_sha256", "labels_sha256")
    d["splits"] = {n: {k: s[k] for k in keep} for n, s in d["splits"].items()}
    text = json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


@pytest.mark.parametrize("name", ["s.zarr", "s.h5"])
def test_provenance_is_the_documented_hash_of_the_stored_document(tmp_path: Path, name: str) -> None:
    p = write(tmp_path / name)
    if name.endswith(".zarr"):
        raw = (p / "zarr.json").read_text()
        doc = json.loads(raw)["attributes"]["epcache"]
    else:
        import h5py

        with h5py.File(p) as f:
            raw = f.attrs["epcache"]
        doc = json.loads(raw)
        assert raw.isascii()  # HDF5: json.dumps with ensure_ascii
    assert doc["format_version"] == "1.1"
    assert doc["provenance"] == _outsider_key(doc)
    with open_store(p) as st:
        assert st.provenance == doc["provenance"] == st.computed_provenance()
    # written complete: every key of §2.1 is there, nothing is filled in at hash time
    assert {"format", "format_version", "backbone", "layout", "layers", "final_norm", "dtype", "storage_dtype",
            "dim", "num_tokens", "preprocessing", "views", "dataset", "extra", "splits", "provenance"} <= set(doc)
    assert set(doc["backbone"]) == {"name", "source", "timm_version", "weights_sha256", "weights_file", "num_blocks"}


def test_zarr_arrays_carry_dimension_names_dtype_attribute_and_ids_mirror(tmp_path: Path) -> None:
    p = write(tmp_path / "s.zarr", dtype="bfloat16", shard=16)
    g = zarr.open_group(p, mode="r")
    for split in ("train", "val"):
        s = g[f"splits/{split}"]
        for name in ("labels", "ids", "order"):
            assert s[name].metadata.dimension_names == ("sample",)
        assert s["ids_utf8"].metadata.dimension_names == ("sample", "byte")
        ids = [bytes(r).rstrip(b"\0").decode("utf-8") for r in s["ids_utf8"][...]]
        assert ids == list(s["ids"][...])
        for layer in ("0", "1"):
            arr = s[f"layers/{layer}"]
            assert arr.metadata.dimension_names == ("sample", "view", "token", "channel")
            assert arr.dtype == np.uint16 and arr.attrs["epcache_dtype"] == "bfloat16"
            assert s[f"records/{layer}"].metadata.dimension_names == ("block",)
        if split == "train":  # 32 samples, shards of 16: sharded, with per-chunk records
            assert s["chunk_records/1"].metadata.dimension_names == ("chunk",)


def test_xarray_opens_a_split_and_the_tree(tmp_path: Path) -> None:
    xr = pytest.importorskip("xarray")
    p = write(tmp_path / "s.zarr")
    ds = xr.open_zarr(p / "splits" / "val", consolidated=False)
    with open_store(p) as st:
        assert ds["labels"].values.tolist() == st.read_labels("val").tolist()
        assert [str(x) for x in ds["ids"].values] == st.read_ids("val")
        layers = xr.open_zarr(p / "splits" / "val" / "layers", consolidated=False)
        np.testing.assert_array_equal(layers["1"].values, st.read_tokens("val", 1))
    tree = xr.open_datatree(p, engine="zarr", consolidated=False)
    assert tree["splits/train/layers/0"].dims == ("sample", "view", "token", "channel")


@pytest.mark.parametrize("shard", [None, 8])
def test_every_chunk_of_a_written_block_exists_even_all_zero(tmp_path: Path, shard: int | None) -> None:
    p = tmp_path / "s.zarr"
    with create_store(p, meta()) as st:
        st.add_split(SplitSpec("val", np.zeros(16, np.int64), [f"{i}" for i in range(16)], ["a", "b", "c"]),
                     chunk_samples=4, shard_samples=shard)
        for layer in (0, 1):
            for b in range(st.split("val").num_blocks):
                st.write_block("val", layer, b, np.zeros((st.split("val").block_samples, 1, 5, 8), np.float16))
    layer_dir = p / "splits" / "val" / "layers" / "0" / "c"
    files = sorted(f for f in layer_dir.rglob("*") if f.is_file())
    if shard is None:
        assert len(files) == 4 and all(f.stat().st_size == 4 * 5 * 8 * 2 for f in files)
    else:
        assert len(files) == 2
        for f in files:  # every inner chunk has an index entry (no 2**64-1 "empty" marker)
            index = np.frombuffer(f.read_bytes()[-(16 * 2 + 4) : -4], "<u8").reshape(2, 2)
            assert (index[:, 1] == 4 * 5 * 8 * 2).all()
    assert verify_store(p).ok


def test_shards_are_capped_at_the_split() -> None:
    sample = 197 * 768 * 2
    plan = plan_chunks(2100, 80_000, 1)
    assert plan.chunk_samples == 64 and plan.block_samples == plan.chunk_samples  # few chunks: unsharded
    plan = plan_chunks(2100, 7680, 1, chunk_samples=1)  # 2100 chunk files > 2048: sharded
    assert plan.block_samples == 2100  # capped: one shard holds the whole split, not 69,905 samples
    assert plan_chunks(2100, sample, 12, chunk_samples=1).block_samples == 443  # 128 MiB budget per layer
    plan = plan_chunks(1_281_167, sample, 12)
    assert (plan.chunk_samples, plan.block_samples) == (16, 16 * (128 * 1024 * 1024 // (16 * sample)))
    assert plan_chunks(10, sample, 1, chunk_samples=4, shard_samples=64).block_samples == 12


def test_crc32c_combine_matches_the_crc_of_the_concatenation() -> None:
    rng = np.random.default_rng(0)
    parts = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in (1, 7, 4096, 0, 33)]
    whole = google_crc32c.value(b"".join(parts))
    assert crc32c_concat([(google_crc32c.value(b), len(b)) for b in parts]) == whole
    assert crc32c_combine(google_crc32c.value(parts[0]), google_crc32c.value(parts[2]), 4096) == (
        google_crc32c.value(parts[0] + parts[2])
    )


@pytest.mark.parametrize("name", ["store.zarr", "store.h5"])
def test_format_1_0_stores_read_verify_and_stay_1_0(tmp_path: Path, name: str) -> None:
    src = DATA / "v1_0" / name
    p = Path(shutil.copytree(src, tmp_path / name) if src.is_dir() else shutil.copy2(src, tmp_path / name))
    info = describe_store(p)
    assert info.format_version == "1.0" and info.provenance == info.computed_provenance
    assert verify_store(p).ok
    with open_store(p, "a") as st:  # appending (a resumed extraction adding a split) keeps it a 1.0 store
        st.set_extra("note", "appended by 1.1")
    with open_store(p) as st:
        assert st.format_version == "1.0" and st.provenance == st.computed_provenance()
        assert st._stored_doc is not None and st._stored_doc["format_version"] == 1
        assert st.read_tokens("train", 1).shape == (24, 1, 5, 4)


def test_hdf5_reader_during_a_write_names_the_writer(tmp_path: Path) -> None:
    p = write(tmp_path / "s.h5")
    code = textwrap.dedent(f"""
        import sys, time, h5py
        from epcache.store.ops.lock import acquire_store_lock
        lock = acquire_store_lock({str(p)!r}, purpose="epcache extract")
        f = h5py.File({str(p)!r}, "r+")
        print("ready", flush=True)
        sys.stdin.read()
        f.close(); lock.release()
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=env)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        with pytest.raises(StoreLockedError, match=rf"is being written by pid {proc.pid} on host .*epcache extract"):
            open_store(p)
    finally:
        proc.communicate("", timeout=30)
    with open_store(p) as st:  # readable again once the writer is done
        assert st.is_complete()


def test_hdf5_allocates_every_chunk_of_an_all_zero_block(tmp_path: Path) -> None:
    import h5py

    p = tmp_path / "s.h5"
    with create_store(p, meta()) as st:
        st.add_split(SplitSpec("val", np.zeros(16, np.int64), [f"{i}" for i in range(16)], ["a", "b", "c"]),
                     chunk_samples=4)
        for layer in (0, 1):
            for b in range(4):
                st.write_block("val", layer, b, np.zeros((4, 1, 5, 8), np.float16))
    with h5py.File(p, "r") as f:
        ds = f["splits/val/layers/1"]
        assert all(ds.id.get_chunk_info_by_coord((r, 0, 0, 0)).byte_offset is not None for r in (0, 4, 8, 12))


def test_a_store_without_splits_is_never_clean(tmp_path: Path) -> None:
    """A kill after the store's creation and before its first split leaves a document and nothing else."""
    p = tmp_path / "empty.zarr"
    create_store(p, meta()).close()
    report = verify_store(p)
    assert not report.ok and any("no split" in problem for problem in report.problems)
    assert "fix: re-run the same `epcache extract` command" in report.format_text()
