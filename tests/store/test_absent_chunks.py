"""One rule for absent chunks, shared by `epcache verify` and every read path of `epcache probe`.

A format-1.0 writer using zarr-python's default (``write_empty_chunks=False``) never writes an
all-zero chunk: its record is the crc32c of the zeros and the chunk is absent. That store is valid
and reads as zeros. From format 1.1 every chunk of a written block exists, so there an absent chunk
is damage. verify and probe must say the same thing in both cases (cache_layout.md §3.3), whether
the chunk is read by ``preadv`` (uncompressed), through zarr-python (compressed) or h5py; the remote
byte-range reads are in tests/store/test_scale_absent_chunks_s3.py.

The stores are written here with zarr-python and h5py only, as a 1.0-era pipeline would have
written them (tests/helpers/outsider_writer.py for the document and the stored order).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import outsider_writer as ow
import pytest
from typer.testing import CliRunner

from epcache.cli import app
from epcache.errors import CorruptStoreError
from epcache.store import open_store, verify_store
from epcache.store.layout.provenance import provenance_of_document
from epcache.store.verify.integrity import check_store_integrity

pytestmark = pytest.mark.reliability_corruption
runner = CliRunner()

ZERO_CHUNK = 1  # train chunk 1 (stored rows 4-8) holds only zeros
KINDS = ["plain", "zstd", "sharded", "h5"]  # preadv, zarr-python, preadv within a shard, h5py


def _document(version: str, block: int) -> dict:
    doc = ow.document()
    doc["format_version"] = 1 if version == "1.0" else version
    for s in doc["splits"].values():
        s["block_samples"] = block
    doc.pop("provenance")
    doc["provenance"] = provenance_of_document(doc)
    return doc


def _stored(split: str, block: int) -> dict:
    s = ow.stored(split)
    if split == "train":
        s["tokens"][ZERO_CHUNK * ow.CHUNK : (ZERO_CHUNK + 1) * ow.CHUNK] = 0
    import google_crc32c

    xs = s["tokens"]
    s["records"] = np.array([google_crc32c.value(xs[b : b + block].tobytes()) for b in range(0, len(xs), block)],
                            dtype=np.int64)
    return s


def write_store(path: Path, kind: str, version: str = "1.0") -> Path:
    """A store whose all-zero chunk was skipped by its writer (zarr-python's default; HDF5: never written)."""
    block = 2 * ow.CHUNK if kind == "sharded" else ow.CHUNK
    if kind == "h5":
        return _write_h5(path, version)
    import zarr
    from zarr.codecs import ZstdCodec

    root = zarr.open_group(path, mode="w", zarr_format=3)
    for split, n in ow.N.items():
        s = _stored(split, block)
        g = root.create_group(f"splits/{split}")
        for name in ("labels", "order"):
            g.create_array(name, shape=(n,), chunks=(n,), dtype="int64", compressors=None)[...] = s[name]
        g.create_array("ids", shape=(n,), chunks=(n,), dtype=str)[...] = np.asarray(s["ids"], dtype=object)
        attrs = {}
        if version != "1.0":
            u = s["ids_utf8"]
            g.create_array("ids_utf8", shape=u.shape, chunks=u.shape, dtype="uint8", compressors=None)[...] = u
            attrs = {"epcache_dtype": "float16"}
        tok = g.create_array(
            "layers/2", shape=(n, 1, ow.T, ow.D), chunks=(ow.CHUNK, 1, ow.T, ow.D), dtype="float16", fill_value=0,
            shards=(block, 1, ow.T, ow.D) if kind == "sharded" else None,
            compressors=ZstdCodec(level=3) if kind == "zstd" else None, attributes=attrs,
            config={"write_empty_chunks": False},  # zarr-python's default, spelled out
        )
        tok[...] = s["tokens"]
        rec = g.create_array("records/2", shape=(len(s["records"]),), chunks=(1,), dtype="int64", fill_value=-1,
                             compressors=None)
        rec[...] = s["records"]
    root.attrs["epcache"] = _document(version, block)
    return path


def _write_h5(path: Path, version: str) -> Path:
    import h5py

    with h5py.File(path, "w") as f:
        for split, n in ow.N.items():
            s = _stored(split, ow.CHUNK)
            g = f.create_group(f"splits/{split}")
            g.create_dataset("labels", data=s["labels"].astype("<i8"))
            g.create_dataset("order", data=s["order"].astype("<i8"))
            g.create_dataset("ids", data=np.asarray(s["ids"], dtype=object), dtype=h5py.string_dtype("utf-8"))
            if version != "1.0":
                g.create_dataset("ids_utf8", data=s["ids_utf8"])
            ds = g.create_dataset("layers/2", shape=(n, 1, ow.T, ow.D), dtype="<f2", chunks=(ow.CHUNK, 1, ow.T, ow.D),
                                  fillvalue=0)
            if version != "1.0":
                ds.attrs["epcache_dtype"] = "float16"
            for start in range(0, n, ow.CHUNK):  # chunk by chunk, skipping the all-zero one
                if split != "train" or start != ZERO_CHUNK * ow.CHUNK:
                    ds[start : start + ow.CHUNK] = s["tokens"][start : start + ow.CHUNK]
            g.create_dataset("records/2", data=s["records"], fillvalue=-1)
        f.attrs["epcache"] = json.dumps(_document(version, ow.CHUNK))
    return path


def absent(path: Path, kind: str) -> bool:
    """The zero chunk is really not stored (what the writer's default does)."""
    if kind == "h5":
        import h5py

        with h5py.File(path, "r") as f:
            ds = f["splits/train/layers/2"]
            return ds.id.get_chunk_info_by_coord((ZERO_CHUNK * ow.CHUNK, 0, 0, 0)).byte_offset is None
    layer = path / "splits" / "train" / "layers" / "2" / "c"
    if kind != "sharded":
        return not (layer / str(ZERO_CHUNK) / "0" / "0" / "0").exists()
    data = (layer / "0" / "0" / "0" / "0").read_bytes()  # shard 0 holds chunks 0 and 1
    index = np.frombuffer(data[-(16 * 2 + 4) : -4], "<u8").reshape(2, 2)
    return int(index[ZERO_CHUNK, 0]) == 2**64 - 1


def read_like_probe(location: str) -> list[np.ndarray]:
    """What probe does with a store: the integrity checks, then every chunk through the checked reads."""
    with open_store(location, verify_reads=True) as st:
        check_store_integrity(st, ["train", "val"])
        return [st.read_chunk("train", 2, c) for c in range(st.split("train").num_chunks)]


@pytest.mark.parametrize("kind", KINDS)
def test_a_v10_store_with_a_skipped_zero_chunk_is_valid_for_both(tmp_path: Path, kind: str) -> None:
    path = write_store(tmp_path / ("s.h5" if kind == "h5" else "s.zarr"), kind)
    assert absent(path, kind)
    report = verify_store(path)
    assert report.ok, report.format_text()
    chunks = read_like_probe(str(path))
    assert not np.any(chunks[ZERO_CHUNK])
    np.testing.assert_array_equal(np.concatenate(chunks), _stored("train", ow.CHUNK)["tokens"])


def test_probe_trains_on_it(tmp_path: Path) -> None:
    path = write_store(tmp_path / "s.zarr", "plain")
    r = runner.invoke(app, ["probe", "--store", str(path), "--head", "linear", "--tokens", "cls", "--epochs", "1",
                            "--warmup", "0", "--batch-size", "8", "--holdout", "0", "--device", "cpu",
                            "--out", str(tmp_path / "run"), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "run" / "results.jsonl").read_text().strip()


def _set_record(path: Path, block: int, value: int) -> None:
    if path.is_dir():
        import zarr

        zarr.open_array(path / "splits" / "train" / "records" / "2", mode="r+")[block] = value
        return
    import h5py

    with h5py.File(path, "r+") as f:
        f["splits/train/records/2"][block] = value


@pytest.mark.parametrize("kind", KINDS)
def test_a_v10_absent_chunk_whose_record_is_not_zeros_fails_both(tmp_path: Path, kind: str) -> None:
    path = write_store(tmp_path / ("s.h5" if kind == "h5" else "s.zarr"), kind)
    block = 0 if kind == "sharded" else ZERO_CHUNK
    _set_record(path, block, 12345)  # a block recorded with bytes, whose chunk is gone
    report = verify_store(path)
    assert [(b.block, b.problem) for b in report.bad_blocks] == [(block, "checksum")], report.format_text()
    if kind == "sharded":  # 1.0 shards: the zeros enter the shard's combined crc32c
        with pytest.raises(CorruptStoreError, match=r"shard 0 \(rows 0-8\) of 'train' layer 2 fails its crc32c"):
            read_like_probe(str(path))
        return
    with pytest.raises(CorruptStoreError, match=r"chunk 1 \(rows 4-8\) of 'train' layer 2 is absent although block 1 "
                                                r"is recorded written with crc32c 0x00003039, which is not that of an "
                                                r"all-zero chunk.*epcache verify .* --repair"):
        read_like_probe(str(path))


@pytest.mark.parametrize("kind", ["plain", "zstd", "h5"])
def test_a_v11_absent_chunk_fails_both_even_when_its_record_is_zeros(tmp_path: Path, kind: str) -> None:
    path = write_store(tmp_path / ("s.h5" if kind == "h5" else "s.zarr"), kind, version="1.1")
    assert absent(path, kind)
    report = verify_store(path)
    said = "chunk 1 (rows 4-8) of 'train' layer 2 is absent although block 1 is recorded written (format 1.1"
    assert [(b.block, b.problem) for b in report.bad_blocks] == [(ZERO_CHUNK, "unreadable")], report.format_text()
    assert said in report.bad_blocks[0].detail
    with pytest.raises(CorruptStoreError, match=r"is absent although block 1 is recorded written \(format 1.1"):
        read_like_probe(str(path))


def test_the_cli_says_the_same(tmp_path: Path) -> None:
    path = write_store(tmp_path / "s.zarr", "zstd", version="1.1")
    r = runner.invoke(app, ["verify", str(path), "--no-progress"])
    assert r.exit_code == 1 and "is absent although block 1 is recorded written" in r.output, r.output
    r = runner.invoke(app, ["probe", "--store", str(path), "--head", "linear", "--tokens", "cls", "--epochs", "1",
                            "--warmup", "0", "--holdout", "0", "--device", "cpu", "--out", str(tmp_path / "run"),
                            "--no-progress"])
    assert r.exit_code == 2 and "is absent although block 1 is recorded written" in r.output, r.output
