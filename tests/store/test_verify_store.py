"""`epcache verify` finds exactly the damaged blocks; `--repair` makes the store byte-identical to a clean one."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner
from verify_helpers import (
    TINY_VIT,
    TINY_VIT_KWARGS,
    chunk_file,
    copy_store,
    flip_byte,
    h5_chunk_offset,
    make_imagefolder,
    store_arrays,
    store_files,
    tiny_config,
)

from epcache.cli import app
from epcache.errors import CorruptStoreError, ProvenanceMismatchError, StoreNotFoundError
from epcache.extract import extract_config_from_store, extract_store, repair_store
from epcache.store import open_store, verify_store

runner = CliRunner()
SPLITS = {"train": 24, "val": 8}  # chunk 4: 6 + 2 blocks per layer; layers 0, 1 (depth 2)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("verify") / "data", splits=SPLITS, seed=5)


def _clean(data: Path, out: Path, **overrides: object) -> Path:
    extract_store(tiny_config(data, out, views=1, **overrides), progress=False)
    return out


@pytest.fixture(scope="module")
def clean_zarr(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _clean(data, tmp_path_factory.mktemp("clean_zarr") / "a.zarr")


@pytest.fixture(scope="module")
def clean_h5(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _clean(data, tmp_path_factory.mktemp("clean_h5") / "a.h5")


def _bad(report: object) -> set[tuple[str, int, int, str]]:
    return {(b.split, b.layer, b.block, b.problem) for b in report.bad_blocks}  # type: ignore[attr-defined]


def _verify(store: Path, *args: str) -> object:
    return runner.invoke(app, ["verify", str(store), "--no-progress", *args])


def _repair(store: Path, data: Path, *args: str) -> object:
    return runner.invoke(app, ["verify", str(store), "--repair", "--data", str(data), "--workers", "0",
                               "--no-progress", *args])


@pytest.mark.parametrize("fixture", ["clean_zarr", "clean_h5"])
def test_clean_store_is_clean(fixture: str, request: pytest.FixtureRequest) -> None:
    store = request.getfixturevalue(fixture)
    r = _verify(store, "--deep")
    assert r.exit_code == 0, r.output
    assert "clean" in r.output and "16 checksummed" in r.output and "values scanned" in r.output
    r = _verify(store, "--json")
    doc = json.loads(r.stdout)
    assert r.exit_code == 0 and doc["ok"] is True and doc["bad_blocks"] == [] and doc["blocks_checked"] == 16


def test_zarr_damage_is_found_exactly_and_repaired_to_identical_files(
    clean_zarr: Path, data: Path, tmp_path: Path
) -> None:
    b = copy_store(clean_zarr, tmp_path / "b" / "b.zarr")
    flip_byte(chunk_file(b, "train", 0, 1), 100)  # flipped bits
    f = chunk_file(b, "train", 1, 3)
    f.write_bytes(f.read_bytes()[:100])  # truncated chunk
    chunk_file(b, "train", 1, 5).write_bytes(b"")  # zero-byte chunk
    chunk_file(b, "val", 0, 0).unlink()  # deleted chunk
    shutil.rmtree(b / "splits/train/layers/0/c/4")  # a file where a directory is expected
    (b / "splits/train/layers/0/c/4").write_bytes(b"not a directory")
    chunk_file(b, "train", 0, 2).unlink()  # a directory where the chunk file is expected
    chunk_file(b, "train", 0, 2).mkdir()
    with open_store(b, "a") as st:
        st._write_record("val", 1, 1, -1)  # record says missing
    expected = {
        ("train", 0, 1, "checksum"),
        ("train", 1, 3, "unreadable"),
        ("train", 1, 5, "unreadable"),
        ("val", 0, 0, "checksum"),
        ("train", 0, 4, "checksum"),
        ("train", 0, 2, "checksum"),
        ("val", 1, 1, "missing"),
    }
    report = verify_store(b)
    assert _bad(report) == expected and not report.problems and not report.ok
    where = {(x.split, x.layer, x.block): x for x in report.bad_blocks}
    assert where[("val", 0, 0)].where.endswith("splits/val/layers/0/c/0/0/0/0")
    assert "chunk file is missing" in where[("val", 0, 0)].detail
    assert "a file stands where a directory" in where[("train", 0, 4)].detail
    assert "a directory stands where the chunk file" in where[("train", 0, 2)].detail
    assert where[("train", 1, 3)].rows == (12, 16)

    r = _verify(b)
    assert r.exit_code == 1 and "BAD: 0 metadata/split problem(s), 6 corrupt block(s), 1 missing block(s)" in r.output
    assert "split=train layer=1 block=3 rows=12-16  unreadable" in r.output and "Traceback" not in r.output
    doc = json.loads(_verify(b, "--json").stdout)
    assert doc["ok"] is False and len(doc["bad_blocks"]) == 7

    r = _repair(b, data)
    assert r.exit_code == 0, r.output
    assert "re-extracted 7 block(s)" in r.output and r.output.rstrip().endswith(
        "clean: metadata consistent, every block present and equal to its recorded crc32c"
    )
    assert _verify(b).exit_code == 0
    assert store_files(b) == store_files(clean_zarr)  # every file byte-identical, not only the values
    assert store_arrays(b) == store_arrays(clean_zarr)


def test_hdf5_damage_is_found_exactly_and_repaired_to_identical_arrays(
    clean_h5: Path, data: Path, tmp_path: Path
) -> None:
    b = copy_store(clean_h5, tmp_path / "b" / "b.h5")
    offset, size = h5_chunk_offset(b, "train", 1, 8)
    flip_byte(b, offset + size // 2)  # flipped bits inside block 2 of layer 1
    with open_store(b, "a") as st:
        st._write_record("val", 0, 1, -1)  # missing
        st._write_record("train", 0, 0, 12345)  # a damaged record: the bytes are fine
        st._write_record("val", 1, 0, 2**40)  # not a crc32c at all
    report = verify_store(b)
    assert _bad(report) == {
        ("train", 1, 2, "checksum"),
        ("val", 0, 1, "missing"),
        ("train", 0, 0, "checksum"),
        ("val", 1, 0, "bad-record"),
    }
    assert all(x.where.startswith(f"{b}:/splits/") for x in report.bad_blocks)
    assert "bytes at offset" in next(x.where for x in report.bad_blocks if x.block == 2)
    result = repair_store(b, data=data, workers=0, progress=False)
    assert result.after.ok and len(result.blocks) == 4
    assert store_arrays(b) == store_arrays(clean_h5)


def test_sharded_zarr_store_is_repaired_shard_by_shard(data: Path, tmp_path: Path) -> None:
    a = _clean(data, tmp_path / "a" / "a.zarr", shard_samples=8)  # 3 + 1 shards of 2 chunks
    b = copy_store(a, tmp_path / "b" / "b.zarr")
    flip_byte(chunk_file(b, "train", 1, 1), 7)  # inside inner chunk 0 of shard 1
    shard = chunk_file(b, "train", 0, 2)
    shard.write_bytes(shard.read_bytes()[:-10])  # the shard index at the end is cut
    report = verify_store(b)
    assert _bad(report) == {("train", 1, 1, "checksum"), ("train", 0, 2, "unreadable")}
    assert report.bad_blocks[0].rows == (16, 24) or report.bad_blocks[1].rows == (16, 24)
    assert _repair(b, data).exit_code == 0
    assert store_files(b) == store_files(a)


def test_bad_and_missing_records_of_an_incomplete_store_are_listed(clean_zarr: Path, tmp_path: Path) -> None:
    b = copy_store(clean_zarr, tmp_path / "b" / "b.zarr")
    with open_store(b, "a") as st:
        for layer in (0, 1):
            for block in range(3, 6):
                st._write_record("train", layer, block, -1)  # like a run killed after block 2
    r = _verify(b)
    assert r.exit_code == 1 and "0 corrupt block(s), 6 missing block(s)" in r.output
    assert "re-extracts exactly these blocks" in r.output


def test_repair_is_refused_before_anything_changes(clean_zarr: Path, data: Path, tmp_path: Path) -> None:
    b = copy_store(clean_zarr, tmp_path / "b" / "b.zarr")
    flip_byte(chunk_file(b, "val", 1, 1), 3)
    before = store_files(b)
    cases = [
        (["--data", str(tmp_path / "nowhere")], "does not exist"),
        (["--data", str(tmp_path)], "named 'data'"),
        (["--data", str(data), "--weights", str(tmp_path / "w.pth")], "drop --weights"),
        (["--data", str(data), "--device", "tpu"], "device"),
    ]
    for args, message in cases:
        r = runner.invoke(app, ["verify", str(b), "--repair", "--workers", "0", "--no-progress", *args])
        assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, (args, r.output)
        assert store_files(b) == before  # not a byte changed
    r = runner.invoke(app, ["verify", str(b), "--data", str(data)])
    assert r.exit_code == 2 and "only with --repair" in r.output


def test_repair_with_changed_images_restores_the_records(clean_zarr: Path, data: Path, tmp_path: Path) -> None:
    other = shutil.copytree(data, tmp_path / "copy" / "data")
    (other / "val" / "cat" / "img_0000.jpg").rename(other / "val" / "dog" / "img_0000.jpg")  # relabelled
    b = copy_store(clean_zarr, tmp_path / "b" / "b.zarr")
    flip_byte(chunk_file(b, "train", 0, 3), 3)
    before = store_files(b)
    with pytest.raises(ProvenanceMismatchError, match=r"split 'val'.*labels_sha256"):
        repair_store(b, data=other, workers=0, progress=False)
    assert store_files(b) == before  # the bad block is still reported as it was, nothing else moved
    assert _bad(verify_store(b)) == {("train", 0, 3, "checksum")}
    assert os.listdir(b.parent) == ["b.zarr"]  # the repair's scratch space beside the store is gone


def test_repair_that_does_not_reproduce_the_bytes_keeps_the_intact_blocks(
    clean_zarr: Path, data: Path, tmp_path: Path
) -> None:
    """Other pixels under the same names pass every fingerprint; the witnesses catch them, nothing intact is lost."""
    other = make_imagefolder(tmp_path / "copy" / "data", splits=SPLITS, seed=6)  # same ids and labels
    b = copy_store(clean_zarr, tmp_path / "b" / "b.zarr")
    flip_byte(chunk_file(b, "train", 0, 3), 3)
    r = _repair(b, other)
    assert r.exit_code == 2 and "does not reproduce the crc32c" in r.output and "--batch-size" in r.output
    assert _bad(verify_store(b)) == {("train", 0, 3, "missing")}  # damaged block: now honestly missing
    got, want = store_arrays(b), store_arrays(clean_zarr)
    assert got["train/layers/1"] == want["train/layers/1"]  # the intact layer of that block was restored
    r = _repair(b, data)
    assert r.exit_code == 0, r.output
    assert store_files(b) == store_files(clean_zarr)


def test_checkpoint_store_repairs_only_with_the_same_weights(data: Path, tmp_path: Path) -> None:
    import timm

    def checkpoint(path: Path, seed: int) -> Path:
        torch.manual_seed(seed)
        model = timm.create_model(TINY_VIT, pretrained=False, num_classes=0, **TINY_VIT_KWARGS)
        torch.save(model.state_dict(), path)
        return path

    good, other = checkpoint(tmp_path / "good.pth", 1), checkpoint(tmp_path / "other.pth", 2)
    a = tmp_path / "a" / "a.zarr"
    extract_store(tiny_config(data, a, splits={"val": "val"}, random_init=False, weights=good), progress=False)
    b = copy_store(a, tmp_path / "b" / "b.zarr")
    chunk_file(b, "val", 1, 0).unlink()
    r = _repair(b, data)
    assert r.exit_code == 2 and "extracted from the checkpoint 'good.pth'" in r.output and "--weights" in r.output
    r = _repair(b, data, "--weights", str(other))
    assert r.exit_code == 2 and "has sha256" in r.output and "good.pth" in r.output
    r = _repair(b, data, "--weights", str(good))
    assert r.exit_code == 0, r.output
    assert store_files(b) == store_files(a)


def test_reconstructed_config_is_the_extraction_config(clean_zarr: Path, data: Path) -> None:
    cfg = extract_config_from_store(clean_zarr, data=data, workers=0)
    assert cfg.model == TINY_VIT and cfg.model_kwargs == TINY_VIT_KWARGS and cfg.img_size == 32
    assert cfg.layers == "0,1" and cfg.views == 1 and cfg.view_splits == ("train",) and cfg.random_init
    assert dict(cfg.splits) == {"train": "train", "val": "val"} and cfg.resume and cfg.dtype == "float16"
    assert extract_store(cfg, progress=False).status == "already-complete"


def test_split_source_from_metadata_never_leaves_the_data_root(clean_zarr: Path, data: Path, tmp_path: Path) -> None:
    import zarr

    b = copy_store(clean_zarr, tmp_path / "b" / "b.zarr")
    chunk_file(b, "val", 0, 1).unlink()
    g = zarr.open_group(b, mode="r+")
    for bad in ("../../etc", "/etc", "C:/x.csv"):
        doc = dict(g.attrs["epcache"])
        doc["extra"] = {**doc["extra"], "split_sources": {"train": "train", "val": bad}}
        g.attrs["epcache"] = doc
        r = _repair(b, data)
        assert r.exit_code == 2 and "not a path under the data root" in r.output, r.output
    r = _repair(b, data, "--split", "val=val")  # the user says where it is
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("labels", "label 7 of row 0"),
        ("order", "order is not a permutation"),
        ("swap", "not the permutation of seed 0"),
        ("dup", "appears 2 times"),
        ("escape", "not a relative path under the data root"),
    ],
)
def test_split_vectors_are_cross_checked(clean_zarr: Path, data: Path, tmp_path: Path, edit: str, message: str) -> None:
    import zarr

    b = copy_store(clean_zarr, tmp_path / "b" / "b.zarr")
    g = zarr.open_group(b / "splits" / "train", mode="r+")
    if edit == "labels":
        g["labels"][0] = 7
    elif edit == "order":
        g["order"][0] = g["order"][1]
    elif edit == "swap":
        o = g["order"][...]
        g["order"][0:2] = o[[1, 0]]
    else:
        ids = g["ids"][...]
        ids[1] = ids[0] if edit == "dup" else "../../secret.png"
        g["ids"][...] = ids
    r = _verify(b)
    assert r.exit_code == 1 and message in r.output and "the metadata itself is damaged" in r.output, r.output
    if edit in ("labels", "dup", "escape", "swap"):
        assert "do not match" in r.output  # the fingerprints in the metadata see it too
    r = _repair(b, data)
    assert r.exit_code == 2 and "cannot be repaired block by block" in r.output
    with pytest.raises(CorruptStoreError):
        repair_store(b, data=data, workers=0, progress=False)


def test_deep_scan_finds_non_finite_values_behind_a_valid_checksum(clean_zarr: Path, tmp_path: Path) -> None:
    b = copy_store(clean_zarr, tmp_path / "b" / "b.zarr")
    with open_store(b, "a") as st:
        start, stop = st.block_range("val", 1)
        x = st.read_tokens("val", 0, start, stop).copy()
        x[0, 0, 0, :3] = [np.nan, np.inf, -np.inf]
        st.write_block("val", 0, 1, x)  # written through the API: a valid record of invalid values
    assert _verify(b).exit_code == 0
    r = _verify(b, "--deep")
    assert r.exit_code == 1 and "split=val layer=0 block=1 rows=4-8  non-finite: 3 values are inf or nan" in r.output


def test_stale_writer_lock_is_reported_and_broken_only_on_request(
    clean_zarr: Path, data: Path, tmp_path: Path
) -> None:
    b = copy_store(clean_zarr, tmp_path / "b" / "b.zarr")
    chunk_file(b, "train", 1, 0).unlink()
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock = {"host": socket.gethostname(), "pid": dead.pid, "started": "2026-01-01T00:00:00+00:00",
            "purpose": "epcache extract"}
    (b / ".epcache.lock").write_text(json.dumps(lock))
    r = _verify(b)
    assert r.exit_code == 1 and f"writer: pid {dead.pid}" in r.output and "--break-lock" in r.output
    r = _repair(b, data)
    assert r.exit_code == 2 and "stale writer lock" in r.output and "--break-lock" in r.output
    r = _repair(b, data, "--break-lock")
    assert r.exit_code == 0, r.output
    assert not (b / ".epcache.lock").exists()
    assert store_files(b) == store_files(clean_zarr)


def test_not_a_store_is_a_user_error(tmp_path: Path) -> None:
    r = _verify(tmp_path / "missing.zarr")
    assert r.exit_code == 2 and "does not exist" in r.output and "Traceback" not in r.output
    with pytest.raises(StoreNotFoundError):
        verify_store(tmp_path / "missing.zarr")
    (tmp_path / "plain").mkdir()
    r = _verify(tmp_path / "plain")
    assert r.exit_code == 2 and "not a zarr v3 store" in r.output
    assert os.listdir(tmp_path / "plain") == []
