"""A quantised store on S3 (moto's server on 127.0.0.1) reads exactly as the same store on disk.

Needs the ``s3`` extra (s3fs) and ``moto[server]``; skipped without them. The fixtures are those of
test_scale_s3.py (a loopback S3 server, a fresh bucket, credentials from the environment).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scale_helpers import make_imagefolder, store_files, tiny_config

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

from test_scale_s3 import _objects, bucket, endpoint  # noqa: F401  (fixtures)

from epcache.extract import extract
from epcache.store import open_store, verify_store

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("imgs"), splits={"train": 24, "val": 9})


@pytest.mark.parametrize("scheme", ["int8-channel", "int8-token", "fp8"])
def test_quantized_remote_reads_equal_local_reads(bucket: str, data: Path, tmp_path: Path, scheme: str) -> None:  # noqa: F811
    url = f"s3://{bucket}/stores/q.zarr"
    extract(tiny_config(data, url, views=1, shard_samples=8, quantize=scheme), progress=False)
    local = tiny_config(data, tmp_path / "q.zarr", views=1, shard_samples=8, quantize=scheme)
    extract(local, progress=False)
    assert _objects(bucket, "stores/q.zarr") == store_files(Path(local.out))  # the same objects, scales included
    with open_store(url) as remote, open_store(local.out) as disk:
        assert remote.meta.quantization == disk.meta.quantization is not None
        remote.verify_reads = disk.verify_reads = True
        for split in disk.splits:
            for layer in disk.meta.layers:
                np.testing.assert_array_equal(remote.read_tokens(split, layer), disk.read_tokens(split, layer))
                for c in range(disk.split(split).num_chunks):
                    assert remote.read_chunk(split, layer, c).tobytes() == disk.read_chunk(split, layer, c).tobytes()
    assert verify_store(url).ok
