"""The chunk cache (--cache-dir) serves only bytes whose sha256 was recorded from a verified store read.

crc32c is no MAC: an entry forged to keep its crc32c (here: XOR with the Castagnoli polynomial,
which no crc can see) must not be served, and a probe through such a cache must give the rows
of an uncached run. The directory is private to its user (0700); one that others own or may
write is refused with one line, exit 2.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

s3fs = pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

from solver_helpers import class_store  # noqa: E402

from epcache.cli import app  # noqa: E402
from epcache.errors import ConfigError  # noqa: E402
from epcache.probe import ProbeConfig, probe_store  # noqa: E402
from epcache.store import ChunkCache, open_store  # noqa: E402
from epcache.store.layout.crc import block_checksum  # noqa: E402

pytestmark = pytest.mark.slow
runner = CliRunner()
_CRC_BLIND = np.frombuffer((1 | (0x82F63B78 << 1)).to_bytes(5, "little"), np.uint8)  # x^32 + ... + 1, reflected


def _upload(local: Path, bucket: str, name: str) -> str:
    s3fs.S3FileSystem(skip_instance_cache=True).put(str(local) + "/", f"{bucket}/{name}", recursive=True)
    return f"s3://{bucket}/{name}"


def _forge(path: Path) -> bytes:
    """Other bytes with the same crc32c, written over the entry; returns the original bytes."""
    original = path.read_bytes()
    forged = np.frombuffer(original, np.uint8).copy()
    at = len(forged) // 2
    forged[at : at + 5] ^= _CRC_BLIND
    assert forged.tobytes() != original and block_checksum(forged) == block_checksum(np.frombuffer(original, np.uint8))
    path.write_bytes(forged.tobytes())
    return original


def _solver_config(store: str, **kw: object) -> ProbeConfig:
    return ProbeConfig(store=store, head=("ridge", "ncm"), tokens=("cls", "gap"), holdout=0.25, device="cpu",
                       **kw)  # type: ignore[arg-type]


@pytest.mark.reliability_corruption
def test_forged_entry_with_matching_crc32c_is_not_served_and_rows_equal_uncached(
    bucket: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    local = class_store(tmp_path / "s.zarr", n_train=64, n_val=32)
    url = _upload(local, bucket, "s.zarr")
    cache = tmp_path / "chunk-cache"
    uncached = probe_store(_solver_config(url), progress=False)
    first = probe_store(_solver_config(url, cache_dir=str(cache)), progress=False)
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700  # private to its user
    entries = sorted(cache.rglob("*.bin"))
    assert entries and all(p.with_suffix(".sha256").is_file() for p in entries)
    originals = {p: _forge(p) for p in entries}  # every entry forged, its crc32c kept
    capsys.readouterr()
    second = probe_store(_solver_config(url, cache_dir=str(cache)), progress=True)
    err = capsys.readouterr().err
    for rows in (first.rows, second.rows):
        assert [(r["id"], r["metrics"]) for r in rows] == [(r["id"], r["metrics"]) for r in uncached.rows]
    assert sum("fails its sha256" in line for line in err.splitlines()) == 1  # one note, not one per entry
    assert all(p.read_bytes() == original for p, original in originals.items())  # fetched again, rewritten


@pytest.mark.reliability_corruption
def test_entry_without_its_sha256_or_changed_during_a_run_is_not_served(bucket: str, tmp_path: Path) -> None:
    local = class_store(tmp_path / "s.zarr", n_train=64, n_val=16)
    url = _upload(local, bucket, "s.zarr")
    with open_store(local) as disk:
        n = disk.split("train").num_chunks
        truth = [disk.read_chunk("train", 0, c).tobytes() for c in range(n)]
    cache = ChunkCache(tmp_path / "cache")
    with open_store(url, verify_reads=True) as store:
        store.chunk_cache = cache
        assert [x.tobytes() for _, x in store.read_chunks("train", 0, range(n))] == truth
        files = {int(p.name.split("-")[0]): p for p in (tmp_path / "cache").rglob("*.bin")}
        files[0].with_suffix(".sha256").unlink()  # a planted entry: bytes without the verified path's record
        _forge(files[1])  # forged, and its .sha256 rewritten to match: this run still holds the verified sha256
        files[1].with_suffix(".sha256").write_text(hashlib.sha256(files[1].read_bytes()).hexdigest() + "\n")
        assert [x.tobytes() for _, x in store.read_chunks("train", 0, range(n))] == truth
    assert (cache.stats.hits, cache.stats.rejected) == (n - 1, 1)  # entry 0: this run's memory vouches for it
    fresh = ChunkCache(tmp_path / "cache")  # a new run: entry 0 still has no record; entry 1 was rewritten
    with open_store(url, verify_reads=True) as store:
        store.chunk_cache = fresh
        assert [x.tobytes() for _, x in store.read_chunks("train", 0, range(n))] == truth
    assert (fresh.stats.hits, fresh.stats.misses, fresh.stats.rejected) == (n - 1, 1, 1)
    assert files[0].with_suffix(".sha256").is_file() and files[1].read_bytes() == truth[1]


@pytest.mark.reliability_bad_input
def test_cache_dir_others_may_write_is_refused_with_one_line(tmp_path: Path) -> None:
    store = class_store(tmp_path / "s.zarr", n_train=32, n_val=16)
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    r = runner.invoke(app, ["probe", "--store", str(store), "--head", "ridge", "--tokens", "gap", "--cache-dir",
                            str(shared), "--device", "cpu", "--no-progress"])
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and str(shared) in lines[0] and "chmod 700" in lines[0] and "Traceback" not in r.output
    os.chmod(shared, 0o700)
    ChunkCache(shared)  # private now: accepted


@pytest.mark.reliability_bad_input
def test_cache_dir_of_another_user_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    monkeypatch.setattr(os, "getuid", lambda: theirs.stat().st_uid + 1)  # as if another user made it
    with pytest.raises(ConfigError, match="belongs to another user.*directory of your own"):
        ChunkCache(theirs)
    (tmp_path / "file").write_text("x")
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="a part of that path is a regular file"):
        ChunkCache(tmp_path / "file" / "cache")
