"""Cost of probe's integrity checks: chunk reads with and without crc32c checks, and the store checks.

Command:   python bench/integrity.py [--mb 256] [--ids 200000] [--dir /tmp/epcache-bench-integrity]
Machine:   any; numbers in the closing note are from the shared 2-core CI machine (noisy: ratios only).
Runtime:   ~1 minute for 256 MB.
Expected:  first-read ratio (checked / unchecked) >= 0.8 for every layout; later reads ~1.0 (a chunk
           that passed is not hashed again); store checks well under a second per 100k samples.

What it measures: one split of float16 tokens [N, 1, 197, 768] written three ways: zarr unsharded
(chunk = block: checked against the block record), zarr sharded in format 1.1 (each inner chunk
against its `chunk_records` entry) and zarr sharded as format 1.0 (block records only: chunk
crc32c values combined once the shard's last chunk is read). Every chunk is read in one seeded
shuffled order (a) through `read_chunk` on a store opened with `verify_reads=False` and (b) with
`verify_reads=True` (what `epcache probe` does), page cache warm, best of 3, side by side in one
run; then a second pass over (b)'s handle (chunks already checked). Separately, the store-level
checks of `check_store_integrity` (provenance, array metadata, labels/ids/order fingerprints) are
timed on a store of `--ids` samples.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np

from epcache.store import BackboneMeta, SplitSpec, StoreMeta, TokenLayout, create_store, open_store
from epcache.store.verify.integrity import check_store_integrity

T, D = 197, 768


def make_meta(dim: int = D, grid: tuple[int, int] = (14, 14)) -> StoreMeta:
    return StoreMeta(
        backbone=BackboneMeta("vit_base_patch16_224.bench", "random-init", "-", "0" * 64, None, 12),
        layout=TokenLayout(num_prefix=1, cls_index=0, num_registers=0, grid=grid),
        layers=(0,),
        final_norm=False,
        dtype="float16",
        dim=dim,
        num_tokens=1 + grid[0] * grid[1],
    )


def write(path: Path, n: int, *, shard: int | None, version: str) -> Path:
    rng = np.random.default_rng(0)
    with create_store(path, make_meta(), overwrite=True) as st:
        if version == "1.0":  # the 1.0 writer's layout: no chunk records (bench only)
            st.format_version = "1.0"
            st._store_doc()
        st.add_split(SplitSpec("train", np.zeros(n, np.int64), [f"{i}" for i in range(n)], ["x"]),
                     chunk_samples=16, shard_samples=shard)
        s = st.split("train")
        for b in range(s.num_blocks):
            lo, hi = st.block_range("train", b)
            x = rng.standard_normal((hi - lo, 1, T, D), dtype=np.float32).astype(np.float16)
            st.write_block("train", 0, b, x)
    return path


def read_pass(store: object, order: list[int]) -> float:
    t0 = time.perf_counter()
    for c in order:
        store.read_chunk("train", 0, c)  # type: ignore[attr-defined]
    return time.perf_counter() - t0


def bench_reads(path: Path) -> tuple[float, float, float]:
    with open_store(path) as plain:
        order = np.random.default_rng(1).permutation(plain.split("train").num_chunks).tolist()
        read_pass(plain, order)  # warm the page cache
        unchecked = min(read_pass(plain, order) for _ in range(3))
    first = []
    for _ in range(3):
        with open_store(path, verify_reads=True) as checked:
            first.append(read_pass(checked, order))
    with open_store(path, verify_reads=True) as checked:
        read_pass(checked, order)
        again = min(read_pass(checked, order) for _ in range(3))
    return unchecked, min(first), again


def bench_store_checks(root: Path, n: int) -> float:
    meta = make_meta(dim=8, grid=(1, 1))
    path = root / "ids.zarr"
    labels = np.arange(n) % 1000
    with create_store(path, meta, overwrite=True) as st:
        st.add_split(SplitSpec("train", labels, [f"train/n{y:08d}/img_{i:07d}.JPEG" for i, y in enumerate(labels)],
                               [str(i) for i in range(1000)]), chunk_samples=4096)
    with open_store(path) as st:
        t0 = time.perf_counter()
        check_store_integrity(st, ["train"])
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=256.0)
    ap.add_argument("--ids", type=int, default=200_000)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/epcache-bench-integrity"))
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    n = max(64, int(args.mb * 2**20 // (T * D * 2)) // 64 * 64)
    layouts = {
        "zarr unsharded": write(args.dir / "plain.zarr", n, shard=None, version="1.1"),
        "zarr sharded 1.1": write(args.dir / "sharded11.zarr", n, shard=64, version="1.1"),
        "zarr sharded 1.0": write(args.dir / "sharded10.zarr", n, shard=64, version="1.0"),
    }
    gb = n * T * D * 2 / 1e9
    print(f"{n} samples of {T}x{D} float16 ({gb:.2f} GB), chunks of 16, shards of 64; shared machine, best of 3")
    print(f"{'layout':<18} {'unchecked GB/s':>15} {'checked GB/s':>13} {'first/unchecked':>16} {'again/unchecked':>16}")
    for name, path in layouts.items():
        plain, first, again = bench_reads(path)
        print(f"{name:<18} {gb / plain:>15.2f} {gb / first:>13.2f} {plain / first:>16.2f} {plain / again:>16.2f}")
    secs = bench_store_checks(args.dir, args.ids)
    print(f"check_store_integrity on {args.ids} samples (labels, ids, order, provenance, array metadata): "
          f"{secs:.2f} s ({secs / args.ids * 1e6:.2f} us/sample)")
    shutil.rmtree(args.dir)


if __name__ == "__main__":
    main()
