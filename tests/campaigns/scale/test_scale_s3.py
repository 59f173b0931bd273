"""Remote stores: extract, info, ls, probe and report against an S3 server on 127.0.0.1.

The server is moto's standalone S3 (a real HTTP server in a thread); the client is the real
s3fs/aiobotocore stack, configured the standard way: credentials and endpoint from the
environment (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``), nothing passed by epcache. Needs the
``s3`` extra (s3fs) and ``moto[server]``; skipped without them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scale_helpers import LOCK_NAME, S3_KEY_ID, S3_SECRET, make_imagefolder, store_files, tiny_config
from typer.testing import CliRunner

s3fs = pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

from epcache.cli import app  # noqa: E402
from epcache.errors import ConfigError, StoreExistsError  # noqa: E402
from epcache.extract import extract_store  # noqa: E402
from epcache.store import (  # noqa: E402
    StoreLockedError,
    create_store,
    describe_store,
    list_stores,
    open_store,
    verify_store,
)
from epcache.store.ops.lock import acquire_store_lock, read_store_lock  # noqa: E402

pytestmark = pytest.mark.slow
runner = CliRunner()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("imgs"), splits={"train": 24, "val": 9})


def _objects(bucket: str, prefix: str) -> dict[str, bytes]:
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    root = f"{bucket}/{prefix}"
    return {k[len(root) + 1:]: fs.cat_file(k) for k in fs.find(root)}


def test_extract_info_ls_probe_report_on_s3(bucket: str, data: Path, tmp_path: Path) -> None:
    url = f"s3://{bucket}/stores/tiny.zarr"
    # absolute data roots on both sides: by default a local store records its root relative to
    # itself and an S3 store records none, the one intended difference between their documents
    cfg = tiny_config(data, url, views=1, shard_samples=8, record_paths=True)
    result = extract_store(cfg, progress=False)
    assert result.status == "complete" and sum(result.samples.values()) == 33

    # the same bytes as a local extraction, object for object
    local = tiny_config(data, tmp_path / "local" / "tiny.zarr", views=1, shard_samples=8, record_paths=True)
    extract_store(local, progress=False)
    remote_files = _objects(bucket, "stores/tiny.zarr")
    assert LOCK_NAME not in remote_files  # released at the end
    assert remote_files == store_files(Path(local.out))
    with open_store(url) as remote, open_store(local.out) as disk:
        assert remote.is_complete() and remote.provenance == disk.provenance
        for split in disk.splits:
            assert remote.read_ids(split) == disk.read_ids(split)
            for layer in disk.meta.layers:
                np.testing.assert_array_equal(remote.read_tokens(split, layer), disk.read_tokens(split, layer))
                c = disk.split(split).num_chunks - 1  # the last, partial chunk goes through zarr, not preadv
                assert remote.read_chunk(split, layer, c).tobytes() == disk.read_chunk(split, layer, c).tobytes()

    # info and ls read the remote store; size comes from the object listing
    info = runner.invoke(app, ["info", url, "--json"])
    assert info.exit_code == 0, info.output
    doc = json.loads(info.output)
    assert doc["complete"] and doc["size_bytes"] == sum(len(v) for v in remote_files.values())
    listed = runner.invoke(app, ["ls", f"s3://{bucket}", "--json"])
    assert listed.exit_code == 0, listed.output
    (entry,) = json.loads(listed.output)
    assert entry["location"] == url and entry["complete"] and entry["provenance"] == doc["provenance"]

    # a second run finds it complete; the same extraction next to it is pointed at it
    assert extract_store(cfg, progress=False).status == "already-complete"
    with pytest.raises(StoreExistsError, match=rf"{url} already holds these tokens"):
        extract_store(tiny_config(data, f"s3://{bucket}/stores/again.zarr", views=1), progress=False)

    # probe streams the remote store; report reads the run directory
    run = tmp_path / "run"
    probed = runner.invoke(app, ["probe", "--store", url, "--head", "linear", "--epochs", "2", "--warmup", "0",
                                 "--batch-size", "8", "--optimizer", "adamw", "--lr", "1e-3", "--device", "cpu",
                                 "--out", str(run), "--no-progress", "--linear-fit", "sgd"])
    assert probed.exit_code == 0, probed.output
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    assert rows and all(r["config"]["kind"] == "linear" for r in rows)
    reported = runner.invoke(app, ["report", str(run), "--no-figures"])
    assert reported.exit_code == 0, reported.output
    assert (run / "report" / "report.md").is_file()

    # credentials come from the environment and are written nowhere
    texts = [info.output, listed.output, probed.output, reported.output, result.format_text()]
    blobs = [*remote_files.values(), *(p.read_bytes() for p in run.rglob("*") if p.is_file())]
    for secret in (S3_SECRET, S3_KEY_ID):
        assert not any(secret in t for t in texts)
        assert not any(secret.encode() in b for b in blobs)


def test_a_killed_remote_extraction_resumes(bucket: str, data: Path, tmp_path: Path) -> None:
    url = f"s3://{bucket}/resume.zarr"
    cfg = tiny_config(data, url, splits={"val": "val"}, record_paths=True)  # comparable documents (above)
    extract_store(cfg, progress=False)
    with open_store(url, "a") as store:  # lose two blocks, as a crash between writes would
        for layer in store.meta.layers:
            for block in (0, 2):  # val: 9 samples in blocks of 4, 4 and 1
                store._write_record("val", layer, block, -1)
    assert not describe_store(url).complete
    again = extract_store(cfg, progress=False)
    assert again.resumed and again.samples == {"val": 5}  # only blocks 0 and 2 were extracted again
    local = tiny_config(data, tmp_path / "resume.zarr", splits={"val": "val"}, record_paths=True)
    extract_store(local, progress=False)
    assert _objects(bucket, "resume.zarr") == store_files(Path(local.out))


def test_remote_writer_lock_is_exclusive(bucket: str) -> None:
    url = f"s3://{bucket}/locked.zarr"
    with acquire_store_lock(url) as lock:
        holder = read_store_lock(url)
        assert holder == lock.info
        with pytest.raises(StoreLockedError, match=rf"pid {lock.info.pid}"):  # conditional put refused
            acquire_store_lock(url)
    assert read_store_lock(url) is None


def test_remote_prefix_that_is_not_a_store_is_never_overwritten(bucket: str, data: Path) -> None:
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.pipe_file(f"{bucket}/notes/readme.txt", b"keep me")
    meta_store = tiny_config(data, f"s3://{bucket}/notes", splits={"val": "val"})
    with pytest.raises(ConfigError, match="no zarr store"):
        extract_store(meta_store, progress=False)
    assert fs.cat_file(f"{bucket}/notes/readme.txt") == b"keep me"
    with pytest.raises(ConfigError, match="HDF5 store is one local file"):
        create_store(f"s3://{bucket}/x.h5", None)  # type: ignore[arg-type]
    assert list_stores(f"s3://{bucket}") == []


@pytest.mark.parametrize("scheme", ["int8-channel", "int8-token", "fp8"])
def test_quantized_remote_reads_equal_local_reads(bucket: str, data: Path, tmp_path: Path, scheme: str) -> None:
    """A quantised store (cache_layout.md §3.5) on S3: the same objects as on disk, codes and scales
    included, and every read (decoded, with the crc32c checks on) equal to the local one."""
    url = f"s3://{bucket}/stores/q.zarr"
    extract_store(tiny_config(data, url, views=1, shard_samples=8, quantize=scheme, record_paths=True), progress=False)
    local = tiny_config(data, tmp_path / "q.zarr", views=1, shard_samples=8, quantize=scheme, record_paths=True)
    extract_store(local, progress=False)
    assert _objects(bucket, "stores/q.zarr") == store_files(Path(local.out))
    with open_store(url) as remote, open_store(local.out) as disk:
        assert remote.meta.quantization == disk.meta.quantization is not None
        remote.verify_reads = disk.verify_reads = True
        for split in disk.splits:
            for layer in disk.meta.layers:
                np.testing.assert_array_equal(remote.read_tokens(split, layer), disk.read_tokens(split, layer))
                for c in range(disk.split(split).num_chunks):
                    assert remote.read_chunk(split, layer, c).tobytes() == disk.read_chunk(split, layer, c).tobytes()
    assert verify_store(url).ok
