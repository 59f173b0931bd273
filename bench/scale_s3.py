"""Store reads from object storage: requests in flight vs one by one, vs local disk (bench/scale.py's S3 section).

Command:
    python bench/scale_s3.py                          # a synthetic store, moto's S3 server on 127.0.0.1
    python bench/scale_s3.py --s3-url s3://bucket/tmp # your own bucket (credentials as for s3fs)
    python bench/scale.py                             # the same section, on the store the extraction bench made

Machine: 2 CPU cores (AMD EPYC VM, shared host), no GPU, local disk; zarr 3.1.6, s3fs 2026.9.0,
moto 5.2.1 (needs the `s3` extra and `moto[server]`).
Expected runtime: about 1-2 minutes with the defaults (192 images x 4 layers x 197 x 192 float16 = 58 MB
per store, one unsharded store with chunks of 16 and one sharded store with shards of 64).
Expected result (measured on the machine above, load 5-7 from other jobs; moto is a Python server
on the same 2 cores): reading every chunk of every layer in random order with crc32c checks (as
`epcache probe` streams), moto as is: one by one as before (through zarr) 59-92 MB/s, 16 in flight
128-215 MB/s, i.e. 2.2-2.6x; with 20 ms added per GET: 18-34 vs 92-127 MB/s, 3.6-5.0x (sharded
stores gain more: zarr made two requests per chunk). The target of >= 10x is missed here: the reader
reaches what bare concurrent GETs get from this server, which is CPU-bound (per 1.2 MB GET ~4 ms of
client and ~3 ms of moto CPU), not waiting. Local disk 4-8.5 GB/s; a second epoch through
--cache-dir 1.5-2.6 GB/s. Writes, 4 layers in flight vs one by one: 1.1-2.0x (noisy). Against real
S3 a GET mostly waits on the network: measure your bucket with --s3-url.

What is compared (MB/s of token bytes; the reader checks every chunk's crc32c, as probe does):
  local         read_chunk one by one from local disk (page cache warm)
  S3 before     read_chunk one by one through zarr's FsspecStore (the code path before in-flight reads;
                sharded: two requests per chunk, the shard index and the chunk)
  S3 direct     read_chunk one by one with one byte-range GET per chunk (shard index read once per shard)
  S3 in flight  store.read_chunks(order, inflight=16): 16 requests in flight, yielded in order
  cache         read_chunks through a ChunkCache (--cache-dir): epoch 1 fills it, epoch 2 reads it
  writes        write_block of every block and layer one by one (as the extraction writer) vs 4 in flight

Resource warning: two stores of ~58 MB under --tmp (default: the system temp dir), their copies in the
moto server's memory, and the chunk cache (~58 MB) under --tmp; all deleted at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

MODES = ("before", "direct", "inflight")


def synthetic_store(path: Path, images: int, *, chunk_samples: int, shard_samples: int | None) -> Path:
    """A store shaped like bench/scale.py's extraction: ViT-Ti tokens (197 x 192), 4 layers, float16."""
    from epcache.store import BackboneMeta, SplitSpec, StoreMeta, TokenLayout, create_store

    meta = StoreMeta(
        backbone=BackboneMeta("vit_tiny_patch16_224", "random-init", "1.0", "random-init", None, 12),
        layout=TokenLayout(num_prefix=1, cls_index=0, num_registers=0, grid=(14, 14)),
        layers=(8, 9, 10, 11), final_norm=False, dtype="float16", dim=192, num_tokens=197,
        preprocessing={"input_size": [3, 224, 224]},
    )
    rng = np.random.default_rng(0)
    with create_store(path, meta) as st:
        spec = SplitSpec("train", np.arange(images) % 4, [f"c{i % 4}/{i}.jpg" for i in range(images)],
                         ["c0", "c1", "c2", "c3"], views=1, permutation_seed=0)
        st.add_split(spec, chunk_samples=chunk_samples, shard_samples=shard_samples)
        for layer in meta.layers:
            x = rng.standard_normal((images, 1, 197, 192)).astype(np.float16)
            for b in range(st.split("train").num_blocks):
                lo, hi = st.block_range("train", b)
                st.write_block("train", layer, b, x[lo:hi])
    return path


def read_rate(location: str, mode: str, *, cache_dir: Path | None = None) -> float:
    """MB/s reading every chunk of every layer of split train in a seeded random order, checked."""
    import epcache.store.backends.zarr_direct as zarr_backend
    from epcache.store import ChunkCache, open_store

    direct = zarr_backend.remote_chunks
    if mode == "before":  # the remote path before in-flight reads: every chunk through zarr
        zarr_backend.remote_chunks = lambda *a: None  # type: ignore[assignment]
    try:
        with open_store(location, verify_reads=True) as store:
            if cache_dir is not None:
                store.chunk_cache = ChunkCache(cache_dir)
            n = store.split("train").num_chunks
            s = store.split("train")
            for layer in store.meta.layers:  # the records are read once per run, not per chunk: not timed
                store.block_records("train", layer)
                if s.block_samples != s.chunk_samples:
                    store._read_checks.chunk_records[("train", layer)] = store._read_chunk_records("train", layer, 0, n)
            nbytes = 0
            t0 = time.perf_counter()
            for layer in store.meta.layers:
                order = np.random.default_rng(layer).permutation(n)
                if mode == "inflight":
                    chunks = (x for _, x in store.read_chunks("train", layer, order, inflight=16))
                else:
                    chunks = (store.read_chunk("train", layer, c) for c in order.tolist())
                nbytes += sum(x.nbytes for x in chunks)
            return nbytes / (time.perf_counter() - t0) / 1e6
    finally:
        zarr_backend.remote_chunks = direct


def write_rate(location: str, source: Path, workers: int) -> float:
    """MB/s of write_block for every block and layer of `source` into a new store at `location`."""
    from epcache.store import SplitSpec, create_store, open_store

    with open_store(source) as src, create_store(location, src.meta, overwrite=True) as dst:
        s = src.split("train")
        spec = SplitSpec("train", src.read_labels("train"), src.read_ids("train"), list(s.classes), views=s.views,
                         permutation_seed=s.permutation_seed)
        dst.add_split(spec, chunk_samples=s.chunk_samples, shard_samples=s.block_samples)
        blocks = {(ly, b): src.read_tokens("train", ly, *src.block_range("train", b))
                  for ly in src.meta.layers for b in range(s.num_blocks)}

        def write(key: tuple[int, int]) -> None:
            dst.write_block("train", key[0], key[1], blocks[key])

        t0 = time.perf_counter()
        if workers == 1:
            for key in blocks:
                write(key)
        else:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(write, blocks))
        return sum(x.nbytes for x in blocks.values()) / (time.perf_counter() - t0) / 1e6


def bare_rate(url: str, inflight: int = 16) -> float:
    """MB/s of bare concurrent GETs of every chunk object of an unsharded store: this server's ceiling."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    keys = [k for k in fs.find(f"{root}/splits/train/layers") if "/c/" in k]
    keys = [keys[i] for i in np.random.default_rng(0).permutation(len(keys))]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(inflight) as pool:
        nbytes = sum(len(b) for b in pool.map(fs.cat_file, keys))
    return nbytes / (time.perf_counter() - t0) / 1e6


def s3_section(stores: dict[str, Path], *, s3_url: str | None, reads: int, tmp: Path, latencies: tuple[float, ...],
               say: Callable[[str], None] = print) -> dict[str, float]:
    """Upload each store, then print and return MB/s of every read mode (best of `reads`) and the ratios.

    With moto, once per added latency (0: moto as it is); with ``s3_url``, once against that bucket.
    """
    server = None
    if s3_url is None:
        server, endpoint = start_s3()
        os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                          AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=endpoint)
    figures: dict[str, float] = {}
    try:
        for i, latency in enumerate(latencies if s3_url is None else (0.0,)):
            if server is not None:
                set_latency(endpoint, latency)
                say(f"moto S3 server on 127.0.0.1, {latency:g} ms added to every GET")
            figures.update(_one_server(stores, s3_url=s3_url, reads=reads, tmp=tmp, say=say,
                                       tag=f"{latency:g}ms", first=i == 0))
    finally:
        if server is not None:
            server.terminate()
            server.wait()
    return figures


def _one_server(stores: dict[str, Path], *, s3_url: str | None, reads: int, tmp: Path, say: Callable[[str], None],
                tag: str, first: bool) -> dict[str, float]:
    import s3fs

    fs = s3fs.S3FileSystem()
    prefix = s3_url.rstrip("/") if s3_url else "s3://epcache-bench"
    if s3_url is None and first:
        fs.mkdir("epcache-bench")
    figures: dict[str, float] = {}
    for label, store in stores.items():
        url = f"{prefix}/bench-{label}.zarr"
        if first:
            fs.put(str(store) + "/", url.removeprefix("s3://"), recursive=True)
        local = max(read_rate(str(store), "direct") for _ in range(reads))
        remote = {m: max(read_rate(url, m) for _ in range(reads)) for m in MODES}
        cache = tmp / f"cache-{label}"
        fill = read_rate(url, "inflight", cache_dir=cache)
        cached = max(read_rate(url, "inflight", cache_dir=cache) for _ in range(reads))
        shutil.rmtree(cache, ignore_errors=True)
        bare = f", bare GETs 16 in flight {bare_rate(url):6.1f}" if label == "unsharded" else ""
        say(f"  {label}: local {local:7.1f} MB/s | S3 one by one before {remote['before']:6.1f}, direct "
            f"{remote['direct']:6.1f}, 16 in flight {remote['inflight']:6.1f}{bare} MB/s | --cache-dir epoch 1 "
            f"{fill:6.1f}, epoch 2 {cached:7.1f} MB/s")
        say(f"  {label}: 16 in flight / one by one before {remote['inflight'] / remote['before']:.1f}x; "
            f"S3 / local: before {remote['before'] / local:.3f}x, in flight {remote['inflight'] / local:.3f}x, "
            f"cached epoch {cached / local:.2f}x")
        figures.update({f"{tag}.{label}.{k}": v for k, v in {**remote, "local": local, "cached": cached}.items()})
        if first and label == "unsharded":
            one, four = (write_rate(f"{prefix}/bench-write-{w}.zarr", store, w) for w in (1, 4))
            say(f"  {label}: writes to S3, write_block one by one {one:6.1f} MB/s, 4 in flight {four:6.1f} MB/s "
                f"({four / one:.1f}x)")
        if s3_url is not None:  # one pass against a real bucket: remove what it wrote
            for name in (f"bench-{label}.zarr", "bench-write-1.zarr", "bench-write-4.zarr"):
                if fs.exists(f"{prefix.removeprefix('s3://')}/{name}"):
                    fs.rm(f"{prefix.removeprefix('s3://')}/{name}", recursive=True)
    return figures


_SERVER = """
import sys, time, logging
from moto.server import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple
logging.getLogger("werkzeug").setLevel(logging.ERROR)
app = DomainDispatcherApplication(create_backend_app)
delay = [0.0]
def delayed(environ, start_response):  # the time a request spends on the network, in its own thread: no CPU
    path = environ.get("PATH_INFO", "")
    if path.startswith("/__latency_ms/"):  # the bench sets the added latency between its sections
        delay[0] = float(path.rsplit("/", 1)[1]) / 1000
        start_response("200 OK", [("Content-Length", "0")])
        return [b""]
    if delay[0] and environ.get("REQUEST_METHOD") == "GET":
        time.sleep(delay[0])
    return app(environ, start_response)
run_simple("127.0.0.1", int(sys.argv[1]), delayed, threaded=True)
"""


def start_s3() -> tuple[subprocess.Popen[bytes], str]:
    """moto's S3 server as a separate process on 127.0.0.1 (in-process it would share our GIL).

    :func:`set_latency` delays every GET by that long before moto answers (a stand-in for the network
    between a client and a real bucket; sleeping threads use no CPU).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-c", _SERVER, str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return server, f"http://127.0.0.1:{port}"
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise SystemExit("the moto S3 server did not start (pip install 'moto[server]')") from None
            time.sleep(0.1)


def set_latency(endpoint: str, ms: float) -> None:
    import urllib.request

    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, never a proxy
    no_proxy.open(f"{endpoint}/__latency_ms/{ms:g}", timeout=10).read()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--reads", type=int, default=2, help="passes per read mode (best is kept)")
    p.add_argument("--latency-ms", default="0,20", help="moto only: ms added to every GET, comma list")
    p.add_argument("--s3-url", default=None, help="an s3:// prefix of your own instead of moto")
    p.add_argument("--tmp", type=Path, default=None, help="where the stores and the chunk cache go")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="epcache-bench-s3-", dir=args.tmp))
    t0 = time.perf_counter()
    try:
        stores = {
            "unsharded": synthetic_store(work / "unsharded.zarr", args.images, chunk_samples=16, shard_samples=None),
            "sharded": synthetic_store(work / "sharded.zarr", args.images, chunk_samples=16, shard_samples=64),
        }
        latencies = tuple(float(x) for x in args.latency_ms.split(","))
        s3_section(stores, s3_url=args.s3_url, reads=args.reads, tmp=work, latencies=latencies)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
