"""The absent-chunk rule (cache_layout.md §3.3) on object storage: verify and probe's remote reads agree.

The stores of tests/store/test_absent_chunks.py (a format-1.0 store whose all-zero chunk zarr-python
never wrote, and the same layout declared 1.1) are uploaded object for object to moto's S3 server,
then read by byte-range GETs (uncompressed) or through zarr-python (compressed), as probe reads them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

s3fs = pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

from test_absent_chunks import ZERO_CHUNK, read_like_probe, write_store  # noqa: E402

from epcache.errors import CorruptStoreError  # noqa: E402
from epcache.store import verify_store  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.reliability_corruption]


def _upload(local: Path, bucket: str) -> str:
    s3fs.S3FileSystem(skip_instance_cache=True).put(str(local) + "/", f"{bucket}/{local.name}", recursive=True)
    return f"s3://{bucket}/{local.name}"


@pytest.mark.parametrize("kind", ["plain", "zstd", "sharded"])  # byte ranges, zarr-python, ranges in a shard
def test_a_v10_store_with_a_skipped_zero_chunk_reads_remotely(tmp_path: Path, bucket: str, kind: str) -> None:
    url = _upload(write_store(tmp_path / "s.zarr", kind), bucket)
    report = verify_store(url)
    assert report.ok, report.format_text()
    chunks = read_like_probe(url)
    assert not np.any(chunks[ZERO_CHUNK]) and all(np.any(c) for i, c in enumerate(chunks) if i != ZERO_CHUNK)


@pytest.mark.parametrize("kind", ["plain", "zstd"])
def test_a_v11_absent_chunk_fails_both_remotely(tmp_path: Path, bucket: str, kind: str) -> None:
    url = _upload(write_store(tmp_path / "s.zarr", kind, version="1.1"), bucket)
    report = verify_store(url)
    assert [(b.block, b.problem) for b in report.bad_blocks] == [(ZERO_CHUNK, "unreadable")], report.format_text()
    with pytest.raises(CorruptStoreError, match=r"is absent although block 1 is recorded written \(format 1.1"):
        read_like_probe(url)
