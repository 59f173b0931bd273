"""`epcache convert` throughput vs its floor (a checked read plus a store write of the same bytes), one run.

Command:   python bench/convert.py [--gb 0.25] [--dir /tmp/epcache-bench-convert]
Machine:   any; the numbers in the closing note are from the 2-core CI machine.
Runtime:   ~1 minute for 0.25 GB (writes ~3x --gb: the source, the floor's store, two copies).
Expected:  copy / floor <= ~1 (convert's background writer overlaps its reads with its writes);
           pool2 is bound by numpy's float16 <-> float32 casts (~0.3-0.5 GB/s of source on 2 loaded
           cores), not by the disk: it writes ~1/4 of the bytes.

What it measures: a zarr split of float16 tokens shaped [N, 1, 197, 768] (ViT-B/16) is written
once. Then, with a warm page cache: the floor = (a) every chunk read through `read_chunk` with
`verify_reads` (what convert does to its source) + (b) the same blocks, already in memory, written
to a new store with `write_block`; then `convert` copies the store and `convert --pool-patches 2`
derives the pooled one. Each is timed twice (best counts; outputs deleted between runs, outside
the timing); the ratios are measured in this one run so machine noise hits all alike.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np

from epcache.convert import ConvertConfig, convert_store
from epcache.store import BackboneMeta, SplitSpec, StoreMeta, TokenLayout, create_store, open_store

T, D = 197, 768


def make_source(path: Path, n: int) -> None:
    meta = StoreMeta(
        backbone=BackboneMeta("vit_base_patch16_224.bench", "random-init", "-", "random-init", None, 12),
        layout=TokenLayout(num_prefix=1, cls_index=0, num_registers=0, grid=(14, 14)),
        layers=(0,), final_norm=False, dtype="float16", dim=D, num_tokens=T,
    )
    rng = np.random.default_rng(0)
    with create_store(path, meta, overwrite=True) as st:
        spec = SplitSpec("train", rng.integers(0, 10, n), [f"{i:07d}" for i in range(n)], [str(c) for c in range(10)])
        s = st.add_split(spec)
        for b in range(s.num_blocks):
            start, stop = st.block_range("train", b)
            st.write_block("train", 0, b, rng.standard_normal((stop - start, 1, T, D), np.float32).astype(np.float16))


def read_all(path: Path) -> None:
    with open_store(path, verify_reads=True) as st:
        for c in range(st.split("train").num_chunks):
            st.read_chunk("train", 0, c)


def load_blocks(path: Path) -> list[np.ndarray]:
    with open_store(path) as st:
        return [st.read_tokens("train", 0, *st.block_range("train", b)) for b in range(st.split("train").num_blocks)]


def write_blocks(src: Path, dst: Path, blocks: list[np.ndarray]) -> None:
    """The write half of the floor: a new store with the source's metadata and split, every block written."""
    with open_store(src) as s, create_store(dst, s.meta) as st:
        sm = s.split("train")
        order, labels, ids = s.read_order("train"), s.read_labels("train"), s.read_ids("train")
        ds_labels, ds_ids = np.empty_like(labels), [""] * len(ids)
        ds_labels[order] = labels
        for row, i in enumerate(order.tolist()):
            ds_ids[i] = ids[row]
        st.add_split(SplitSpec("train", ds_labels, ds_ids, sm.classes, permutation_seed=sm.permutation_seed))
        for b, x in enumerate(blocks):
            st.write_block("train", 0, b, x)


def best_of(fn: object, out: Path | None, runs: int = 2) -> float:
    times = []
    for _ in range(runs):
        if out is not None:
            shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=0.25)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/epcache-bench-convert"))
    args = ap.parse_args()
    n = max(64, int(args.gb * 1e9 / (T * D * 2)))
    root = args.dir
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    src = root / "src.zarr"
    make_source(src, n)
    gb = n * T * D * 2 / 1e9
    read_all(src)  # warm the page cache
    blocks = load_blocks(src)
    t_read = best_of(lambda: read_all(src), None)
    t_write = best_of(lambda: write_blocks(src, root / "floor.zarr", blocks), root / "floor.zarr")
    blocks.clear()
    floor = t_read + t_write
    t_copy = best_of(lambda: convert_store(ConvertConfig(src=src, dst=root / "copy.zarr"), progress=False),
                     root / "copy.zarr")
    t_pool = best_of(lambda: convert_store(ConvertConfig(src=src, dst=root / "pool.zarr", pool_patches=2),
                                           progress=False),
                     root / "pool.zarr")
    print(f"source: {n} samples x {T} x {D} float16 = {gb:.2f} GB (zarr)")
    print(f"floor: checked read {t_read:.2f} s + write_block {t_write:.2f} s = {floor:.2f} s  ({gb / floor:.2f} GB/s)")
    print(f"convert copy   {t_copy:6.2f} s  {gb / t_copy:6.2f} GB/s   {t_copy / floor:.2f}x the floor")
    print(f"convert pool2  {t_pool:6.2f} s  {gb / t_pool:6.2f} GB/s   {t_pool / floor:.2f}x the floor "
          f"(writes {50 / 197:.2f} of the bytes)")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
