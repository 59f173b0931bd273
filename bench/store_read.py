"""Store read throughput vs np.memmap of the same bytes, both backends, one run.

Command:   python bench/store_read.py [--gb 1.0] [--dir /tmp/epcache-bench]
Machine:   any; numbers in the README/closing note are from the 2-core, 24 GB CI machine.
Runtime:   ~1-2 minutes for 1 GB (writes ~3 GB: one zarr store, one HDF5 store, one raw file).
Expected:  store / memmap >= 0.6 for both backends with a warm page cache.

What it measures: a split of float16 tokens shaped [N, 1, 197, 768] (ViT-B/16) is written once
through the store API (zarr v3 and HDF5) and as one raw file. Then, after a warm-up pass that
pulls every file into the page cache, every chunk is read in the same seeded shuffled order
(a) through `FeatureStore.read_chunk` and (b) by copying the same rows out of an `np.memmap`.
Each reader is timed 3 times and the best pass counts; the ratio is throughput(store) /
throughput(memmap), measured in this one run so machine noise hits both sides alike.
Resource warning: needs ~3x --gb of free disk and enough RAM to cache it for a warm read.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np

from epcache.store import BackboneMeta, SplitSpec, StoreMeta, TokenLayout, create_store, open_store

T, D = 197, 768


def make_meta() -> StoreMeta:
    return StoreMeta(
        backbone=BackboneMeta("vit_base_patch16_224.bench", "random-init", "-", "random-init", None, 12),
        layout=TokenLayout(num_prefix=1, cls_index=0, num_registers=0, grid=(14, 14)),
        layers=(0,),
        final_norm=False,
        dtype="float16",
        dim=D,
        num_tokens=T,
    )


def write_all(root: Path, n: int) -> tuple[Path, Path, Path]:
    raw = root / "raw.f16"
    paths = (root / "bench.zarr", root / "bench.h5")
    rng = np.random.default_rng(0)
    spec = SplitSpec("train", np.zeros(n, np.int64), [f"{i}" for i in range(n)], ["x"], views=1)
    stores = [create_store(p, make_meta(), overwrite=True) for p in paths]
    metas = [s.add_split(spec) for s in stores]
    mm = np.lib.format.open_memmap(raw, mode="w+", dtype=np.float16, shape=(n, 1, T, D))
    block = metas[0].block_samples
    for start in range(0, n, block):
        stop = min(n, start + block)
        x = rng.standard_normal((stop - start, 1, T, D), dtype=np.float32).astype(np.float16)
        mm[start:stop] = x
        for st, m in zip(stores, metas, strict=True):
            for b in range(start // m.block_samples, -(-stop // m.block_samples)):
                s, e = st.block_range("train", b)
                st.write_block("train", 0, b, x[s - start : e - start])
    mm.flush()
    del mm
    for st in stores:
        st.close()
    return paths[0], paths[1], raw


def time_store(path: Path, order: np.ndarray) -> float:
    best = float("inf")
    with open_store(path) as st:
        for _ in range(3):
            t0 = time.perf_counter()
            total = 0
            for c in order:
                total += st.read_chunk("train", 0, int(c)).nbytes
            best = min(best, time.perf_counter() - t0)
    return total / best


def time_memmap(raw: Path, order: np.ndarray, chunk: int, n: int) -> float:
    mm = np.load(raw, mmap_mode="r")
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        total = 0
        for c in order:
            total += np.array(mm[c * chunk : min(n, (c + 1) * chunk)]).nbytes
        best = min(best, time.perf_counter() - t0)
    return total / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/epcache-bench-store"))
    ap.add_argument("--keep", action="store_true", help="keep the files afterwards")
    args = ap.parse_args()
    n = int(args.gb * 1e9 / (T * D * 2))
    args.dir.mkdir(parents=True, exist_ok=True)
    print(f"writing {n} samples x [1, {T}, {D}] float16 = {n * T * D * 2 / 1e9:.2f} GB per copy ...")
    zpath, hpath, raw = write_all(args.dir, n)
    with open_store(zpath) as st:
        chunk = st.split("train").chunk_samples
        nchunks = st.split("train").num_chunks
    order = np.random.default_rng(0).permutation(nchunks)
    for p in (zpath, hpath):  # warm the page cache
        time_store(p, order[:1])
        with open_store(p) as st:
            for c in range(nchunks):
                st.read_chunk("train", 0, c)
    time_memmap(raw, order[:1], chunk, n)
    mm_bps = time_memmap(raw, order, chunk, n)
    z_bps = time_store(zpath, order)
    h_bps = time_store(hpath, order)
    print(f"chunk = {chunk} samples ({chunk * T * D * 2 / 1e6:.1f} MB), {nchunks} chunks, shuffled order")
    print(f"memmap        {mm_bps / 1e9:6.2f} GB/s")
    print(f"zarr store    {z_bps / 1e9:6.2f} GB/s   ratio zarr/memmap = {z_bps / mm_bps:.2f}")
    print(f"hdf5 store    {h_bps / 1e9:6.2f} GB/s   ratio hdf5/memmap = {h_bps / mm_bps:.2f}")
    if not args.keep:
        shutil.rmtree(args.dir)


if __name__ == "__main__":
    main()
