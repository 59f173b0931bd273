"""Reads from object storage: chunks in flight (store.read_chunks) and the local chunk cache (--cache-dir).

Against moto's S3 server on 127.0.0.1 with the real s3fs client, as tests/campaigns/scale/test_scale_s3.py.
The stores are written locally with the store API and uploaded object for object, so the remote
store holds exactly the local bytes and every remote read can be compared with a local one.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

s3fs = pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

from probe_helpers import config, write_store  # noqa: E402

from epcache.cli import app  # noqa: E402
from epcache.errors import CorruptStoreError  # noqa: E402
from epcache.probe import probe_store  # noqa: E402
from epcache.store import ChunkCache, FeatureStore, SplitSpec, create_store, open_store  # noqa: E402

pytestmark = pytest.mark.slow
runner = CliRunner()


def _fs() -> s3fs.S3FileSystem:
    return s3fs.S3FileSystem(skip_instance_cache=True)


def _upload(local: Path, bucket: str, name: str) -> str:
    _fs().put(str(local) + "/", f"{bucket}/{name}", recursive=True)
    return f"s3://{bucket}/{name}"


def _tiny_store(path: Path, *, shard: int | None) -> Path:
    """23 samples x 2 views, chunks of 4 (the last one partial), sharded by 8 or not."""
    from test_store_contract import fill, make_meta, random_tokens

    with create_store(path, make_meta()) as st:
        spec = SplitSpec("train", np.arange(23) % 4, [f"c/{i}.png" for i in range(23)], ["a", "b", "c", "d"],
                         views=2, permutation_seed=7)
        st.add_split(spec, chunk_samples=4, shard_samples=shard)
        fill(st, "train", {layer: random_tokens(23, 2, "float16", seed=layer) for layer in st.meta.layers})
    return path


def _chunk_object(store: FeatureStore, chunk: int) -> tuple[str, int, int]:
    """(key in the bucket, offset, nbytes) of chunk ``chunk`` of train layer 0 (the test stores' layout)."""
    s = store.split("train")
    root = store.location.removeprefix("s3://")
    nbytes = s.chunk_samples * s.views * 8 * 8 * 2
    per_shard = s.block_samples // s.chunk_samples
    if per_shard == 1:
        return f"{root}/splits/train/layers/0/c/{chunk}/0/0/0", 0, nbytes
    index = np.frombuffer(_fs().cat_file(f"{root}/splits/train/layers/0/c/{chunk // per_shard}/0/0/0",
                                         start=-(16 * per_shard + 4))[:-4], "<u8").reshape(per_shard, 2)
    return f"{root}/splits/train/layers/0/c/{chunk // per_shard}/0/0/0", int(index[chunk % per_shard, 0]), nbytes


@pytest.mark.parametrize("shard", [None, 8], ids=["unsharded", "sharded"])
def test_read_chunks_equal_read_chunk_local_and_remote(bucket: str, tmp_path: Path, shard: int | None) -> None:
    local = _tiny_store(tmp_path / "s.zarr", shard=shard)
    url = _upload(local, bucket, "s.zarr")
    with open_store(local, verify_reads=True) as disk, open_store(url, verify_reads=True) as remote:
        n = disk.split("train").num_chunks
        order = np.random.default_rng(1).permutation(n).tolist()
        for layer in disk.meta.layers:
            truth = {c: disk.read_chunk("train", layer, c) for c in range(n)}
            for st, inflight in ((disk, None), (disk, 3), (remote, None), (remote, 3)):
                got = list(st.read_chunks("train", layer, order, inflight=inflight))
                assert [c for c, _ in got] == order
                for c, x in got:
                    assert x.dtype == truth[c].dtype and x.tobytes() == truth[c].tobytes()
            for c in range(n):  # one by one, through the remote direct path (incl. the partial last chunk)
                assert remote.read_chunk("train", layer, c).tobytes() == truth[c].tobytes()
            np.testing.assert_array_equal(remote.read_tokens("train", layer), disk.read_tokens("train", layer))
        with pytest.raises(IndexError):
            next(remote.read_chunks("train", 0, [0, n]))  # every index checked before the first request


def test_requests_in_flight_and_bytes_read_ahead_are_bounded(bucket: str, tmp_path: Path) -> None:
    url = _upload(_tiny_store(tmp_path / "s.zarr", shard=None), bucket, "s.zarr")
    with open_store(url) as store:
        n = store.split("train").num_chunks
        fetch = store._read_chunk_array
        lock = threading.Lock()
        state = {"running": 0, "peak": 0, "done": 0}

        def counting(*args: object) -> np.ndarray:
            with lock:
                state["running"] += 1
                state["peak"] = max(state["peak"], state["running"])
            try:
                time.sleep(0.05)  # a slow link: requests overlap if the reader lets them
                return fetch(*args)  # type: ignore[arg-type]
            finally:
                with lock:
                    state["running"] -= 1
                    state["done"] += 1

        store._read_chunk_array = counting  # type: ignore[method-assign]
        chunk_bytes = 4 * 2 * 8 * 8 * 2
        for inflight, max_bytes, window in ((3, None, 3), (16, 2 * chunk_bytes, 2), (1, None, 1)):
            state.update(peak=0, done=0)
            ahead = []
            for consumed, (_, _) in enumerate(store.read_chunks("train", 0, range(n), inflight=inflight,
                                                                   max_bytes=max_bytes), start=1):
                time.sleep(0.02)  # a slow consumer: fetched-but-unconsumed chunks pile up to the window
                ahead.append(state["done"] - consumed)
            assert state["peak"] == window  # as many in flight as allowed, never more
            assert max(ahead) <= window
        state.update(peak=0)
        reads = store.read_chunks("train", 0, range(n), inflight=3)
        next(reads)
        reads.close()  # closing early waits for the running fetches: nothing runs afterwards
        assert state["running"] == 0


@pytest.mark.parametrize("shard", [None, 8], ids=["unsharded", "sharded"])
def test_corrupt_or_lost_remote_chunk_is_detected_through_read_ahead(bucket: str, tmp_path: Path,
                                                                     shard: int | None) -> None:
    url = _upload(_tiny_store(tmp_path / "s.zarr", shard=shard), bucket, "s.zarr")
    with open_store(url) as store:
        key, offset, nbytes = _chunk_object(store, 2)
    fs = _fs()
    blob = bytearray(fs.cat_file(key))
    blob[offset + nbytes // 2] ^= 0xFF  # one flipped byte, same size
    fs.pipe_file(key, bytes(blob))
    failure = r"chunk 2 \(rows 8-12\) of 'train' layer 0 fails its crc32c"
    with open_store(url, verify_reads=True) as store, pytest.raises(CorruptStoreError, match=failure) as one:
        store.read_chunk("train", 0, 2)
    with open_store(url, verify_reads=True) as store:
        seen = []
        with pytest.raises(CorruptStoreError) as ahead:
            for c, _ in store.read_chunks("train", 0, [0, 1, 2, 3], inflight=4):
                seen.append(c)
        assert seen == [0, 1] and str(ahead.value) == str(one.value)  # same error, at the same chunk
    fs.pipe_file(key, bytes(blob[: offset + nbytes // 2]))  # a truncated object: the local path's message
    with open_store(url, verify_reads=True) as store, pytest.raises(CorruptStoreError, match="cannot read chunk"):
        list(store.read_chunks("train", 0, [0, 1, 2], inflight=3))
    if shard is None:  # a lost chunk object: the same message as on local disk
        fs.rm(key)
        with open_store(url, verify_reads=True) as store, pytest.raises(CorruptStoreError, match="is absent although"):
            list(store.read_chunks("train", 0, [0, 1, 2], inflight=3))


def test_probe_from_s3_with_cache_dir_matches_local(bucket: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    local = write_store(tmp_path / "needle.zarr", n_train=96, n_val=40, chunk_samples=8)
    url = _upload(local, bucket, "needle.zarr")
    cache = tmp_path / "chunk-cache"
    kw = {"head": ("linear", "ep"), "epochs": 2, "eval_cache_mb": 0, "layers": ("all",), "dtype": "float64"}
    ref = probe_store(config(local, **kw), progress=False)

    from aiobotocore.client import AioBaseClient

    requests: list[str] = []
    real = AioBaseClient._make_api_call

    async def counted(self: AioBaseClient, operation: str, params: dict) -> object:
        key = str(params.get("Key", ""))
        if operation == "GetObject" and "/layers/" in key and "/c/" in key:  # chunk objects, not metadata
            requests.append(key)
        return await real(self, operation, params)

    monkeypatch.setattr(AioBaseClient, "_make_api_call", counted)  # every S3 request, whichever client
    first = probe_store(config(url, cache_dir=str(cache), **kw), progress=False)
    assert requests  # the first run read the chunks from S3
    entries = sorted(p.relative_to(cache) for p in cache.rglob("*.bin"))
    assert entries and not list(cache.rglob("*.tmp-*"))
    requests.clear()
    second = probe_store(config(url, cache_dir=str(cache), **kw), progress=False)
    assert requests == []  # every chunk came from the cache
    for rows in (first.rows, second.rows):
        assert [r["id"] for r in rows] == [r["id"] for r in ref.rows]
        assert [r["metrics"] for r in rows] == [r["metrics"] for r in ref.rows]  # the cache changes no number
    assert sorted(p.relative_to(cache) for p in cache.rglob("*.bin")) == entries


def test_tampered_or_torn_cache_entries_are_never_served(bucket: str, tmp_path: Path) -> None:
    local = _tiny_store(tmp_path / "s.zarr", shard=8)
    url = _upload(local, bucket, "s.zarr")
    cache = ChunkCache(tmp_path / "cache")
    with open_store(local) as disk:
        n = disk.split("train").num_chunks
        truth = [disk.read_chunk("train", 0, c).tobytes() for c in range(n)]
        disk.chunk_cache = cache
        disk.read_chunk("train", 0, 0)
        assert not (tmp_path / "cache").exists()  # local stores read the disk itself
    with open_store(url, verify_reads=True) as store:
        store.chunk_cache = cache
        assert [x.tobytes() for _, x in store.read_chunks("train", 0, range(n))] == truth
        assert (cache.stats.hits, cache.stats.misses) == (0, n)
        files = {int(p.name.split("-")[0]): p for p in (tmp_path / "cache").rglob("*.bin")}
        assert sorted(files) == list(range(n))
        blob = bytearray(files[1].read_bytes())
        blob[5] ^= 0x01
        files[1].write_bytes(bytes(blob))  # tampered
        files[3].write_bytes(files[3].read_bytes()[:-7])  # torn
        files[4].write_bytes(files[4].read_bytes() + b"x")  # grown
    with open_store(url, verify_reads=True) as store:
        store.chunk_cache = cache
        assert [x.tobytes() for _, x in store.read_chunks("train", 0, range(n))] == truth
    assert (cache.stats.hits, cache.stats.misses, cache.stats.rejected) == (n - 3, n + 3, 3)
    assert files[1].read_bytes() == truth[1]  # fetched again and rewritten


def test_cache_size_limit_evicts_least_recently_used(bucket: str, tmp_path: Path) -> None:
    url = _upload(_tiny_store(tmp_path / "s.zarr", shard=None), bucket, "s.zarr")
    chunk_bytes = 4 * 2 * 8 * 8 * 2
    cache = ChunkCache(tmp_path / "cache", max_bytes=3 * chunk_bytes)
    with open_store(url) as store:
        store.chunk_cache = cache
        list(store.read_chunks("train", 0, range(store.split("train").num_chunks)))
    held = sum(p.stat().st_size for p in (tmp_path / "cache").rglob("*.bin"))
    assert cache.stats.evicted > 0 and 0 < held <= 3 * chunk_bytes


def test_cache_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    store = write_store(tmp_path / "needle.zarr", n_train=32, n_val=16)
    (tmp_path / "file").write_text("x")
    result = runner.invoke(app, ["probe", "--store", str(store), "--head", "linear", "--cache-dir",
                                 str(tmp_path / "file"), "--device", "cpu", "--no-progress"])
    assert result.exit_code == 2 and "--cache-dir" in result.output and "is a file" in result.output


def test_extraction_writer_writes_layers_of_a_block_concurrently_to_s3(bucket: str, tmp_path: Path) -> None:
    from epcache.extract._writer import BlockWriter

    local = _tiny_store(tmp_path / "s.zarr", shard=None)
    with open_store(local) as src:
        spec = SplitSpec("train", src.read_labels("train"), src.read_ids("train"), ["a", "b", "c", "d"], views=2,
                         permutation_seed=7)
        blocks = {b: {ly: src.read_tokens("train", ly, *src.block_range("train", b)) for ly in src.meta.layers}
                  for b in range(src.split("train").num_blocks)}
        meta = src.meta
    for url, concurrent in ((f"s3://{bucket}/w.zarr", True), (str(tmp_path / "w.zarr"), False)):
        with create_store(url, meta) as dst:
            dst.add_split(spec, chunk_samples=4)
            write = dst.write_block
            lock = threading.Lock()
            state = {"running": 0, "peak": 0}

            def counting(*args: object, write=write, lock=lock, state=state) -> None:  # type: ignore[no-untyped-def]
                with lock:
                    state["running"] += 1
                    state["peak"] = max(state["peak"], state["running"])
                time.sleep(0.05)
                write(*args)  # type: ignore[arg-type]
                with lock:
                    state["running"] -= 1

            dst.write_block = counting  # type: ignore[method-assign]
            writer = BlockWriter(dst)
            for b, arrays in blocks.items():
                writer.submit("train", b, arrays)
            writer.close()
            assert state["peak"] == (len(meta.layers) if concurrent else 1)
        with open_store(url) as back, open_store(local) as src:
            assert back.is_complete()
            for ly in meta.layers:
                assert back.read_tokens("train", ly).tobytes() == src.read_tokens("train", ly).tobytes()


def test_convert_from_s3_reads_ahead_and_equals_convert_from_disk(bucket: str, tmp_path: Path) -> None:
    from epcache.convert import ConvertConfig, convert_store

    local = _tiny_store(tmp_path / "s.zarr", shard=8)
    url = _upload(local, bucket, "s.zarr")
    convert_store(ConvertConfig(local, tmp_path / "from-disk.zarr", chunk_samples=8), progress=False)
    real = FeatureStore.read_chunks
    calls: list[bool] = []

    def spy(self: FeatureStore, *args: object, **kw: object) -> object:
        calls.append(self.is_remote)
        return real(self, *args, **kw)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(FeatureStore, "read_chunks", spy)
        convert_store(ConvertConfig(url, tmp_path / "from-s3.zarr", chunk_samples=8), progress=False)
    assert calls and all(calls)  # every layer's chunks came through read_chunks, from the remote store
    with open_store(tmp_path / "from-disk.zarr") as a, open_store(tmp_path / "from-s3.zarr") as b:
        for layer in a.meta.layers:
            assert a.read_tokens("train", layer).tobytes() == b.read_tokens("train", layer).tobytes()
