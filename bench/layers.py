"""Layers: reading k layers as ONE group vs k single-layer passes (read); ALF vs last vs concat-all (heads).

Mode ``heads`` (``python bench/layers.py heads [--quick] [--cache DIR]``) is described after this mode's.

Command:   python bench/layers.py [read] [--samples 1024] [--layers 4] [--dir /tmp/epcache-bench-layers]
Machine:   the shared 2-core CPU dev box (no GPU); numbers in the closing note come from it.
Runtime:   ~1-3 minutes (writes one zarr store of samples x layers x 197 x 768 float16: 1.2 GB at
           the defaults; needs that much free disk and RAM for the page cache).
Expected:  a group of mean-of-layers configs >= 2x faster than 4 single-layer passes (target);
           measured 2026-11-27 on the shared 2-core box, --samples 1024, load average ~3, two runs:
             singles/group(mean)  = 2.42x, 2.23x
             singles/group(all k) = 0.52x, 1.01x   (its rounds vary 1.9-6.7 s: page faults of the
                                                    k-times larger buffers on a busy machine)
           A mean group is averaged on the reader side (in the compute dtype, straight from the
           chunk views), so k times fewer values go through the shuffle buffer, the batch copies
           and the consumer. When all k layers must travel (concat, tokens, or a mean mixed with
           those in one group) every byte goes through the same copies as in k passes, in k times
           larger buffers: about the same time at best. Such mixes cannot be served by
           single-layer passes at all, and single-layer configs still form single-layer groups,
           so no existing sweep gets slower.

What is timed: one training epoch of device batches (float32 on the CPU "device", batch 256,
the trainer's shuffle buffer and prefetch thread) as `epcache probe` streams them, with the
store opened as `probe` opens it (crc32c verified on every chunk read):

  (a) group  : one BatchStream over MultiLayerSource: every chunk's k layers read together, in
               parallel threads, each batch carrying (B, k, P, D) patch tokens;
  (b) singles: k BatchStreams over StoreSource, one layer each (what k single-layer groups do).

Both read the same bytes; the difference is the number of passes (k shuffle buffers, k prefetch
threads run one after the other, k x the per-batch overhead) and the parallel layer reads. A
warm-up pass pulls the files into the page cache; then the two are timed in interleaved rounds
and the best round of each counts. The machine is shared: the load average is printed, and the
ratio, not the absolute time, is the result.

Mode heads: does fusing every layer (ALF) beat the last layer, and the plain concatenation of all?

Command:   python bench/layers.py heads --cache ~/.cache/epq      # recipe auto as is (12 lrs)
           python bench/layers.py heads --quick --cache ~/.cache/epq  # 3 lrs, 8 epochs, >= 200 steps
Runtime:   on the shared 2-core box (2026-12-07): --quick 52 s (load ~2), full 664 s
           (load 2-5.5: the test suite ran alongside; ALF's sweeps take 360 + 163 s of it); plus ~4-9 min once
           when --cache holds no checkpoint yet (bench/_pretrain.py pretrains it).
Stores:    (a) the store `epcache demo` extracts (generated shapes, random-init ViT-Tiny layout, 4 blocks,
           every block); (b) real sklearn digits (1,000 train / 500 eval) through the ViT pretrained here
           on generated drawings (bench/_pretrain.py; never a digit), every block, via --weights.
What runs: on each store, three sweeps at the package's defaults otherwise (bench/_layers_compare.py):
           last-layer linear (--linear-fit sgd, CLS and GAP: the ranking picks), concat-all linear
           (--layers all --layer-mix concat --tokens cls+gap, sgd) and ALF (--head alf --layers all).
           Each reports its selected row (ProbeResult.best: the holdout chooses, never eval): eval top-1
           with its Wilson 95% interval, params, the sweep's wall seconds; then ALF - last, ALF - concat.
Measured:  2026-12-07, shared 2-core box, torch 2.14.1, 2 threads; eval top-1 % [95% interval]:
             full     last           concat         alf            ALF-last  ALF-concat
             demo     68.75 [61-75]  63.12 [55-70]  69.38 [62-76]  +0.62     +6.25
             digits   87.80 [85-90]  89.00 [86-92]  91.40 [89-94]  +3.60     +2.40
             --quick  demo 62.50 / 57.50 / 67.50 (+5.00, +10.00); digits 86.00 / 88.00 / 88.20 (+2.20, +0.20)
           params last / concat / alf: demo 772 / 3,844 / 151,108, digits 970 / 4,810 / 39,274. Last
           picked GAP everywhere. ALF leads both on each store in both runs, but the 95% intervals of
           every pair overlap (160 and 500 eval images): a direction, not a significant result. Concat
           (every layer's CLS + the last GAP) trails the last layer alone on the random-init demo and
           beats it on the pretrained digits. ALF costs 5-17x the sweep time of the linear variants.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from epcache.probe.data.layers import LayersRead, MultiLayerSource
from epcache.probe.data.stream import BatchStream, InputRead, StoreSource
from epcache.store import BackboneMeta, SplitSpec, StoreMeta, TokenLayout, create_store, open_store

T, D, BATCH = 197, 768, 256


def write_store(path: Path, n: int, layers: tuple[int, ...]) -> None:
    meta = StoreMeta(
        backbone=BackboneMeta("vit_base_patch16_224.bench", "random-init", "-", "random-init", None, 12),
        layout=TokenLayout(num_prefix=1, cls_index=0, num_registers=0, grid=(14, 14)),
        layers=layers,
        final_norm=False,
        dtype="float16",
        dim=D,
        num_tokens=T,
    )
    rng = np.random.default_rng(0)
    spec = SplitSpec("train", rng.integers(0, 10, n), [f"{i}" for i in range(n)], [f"c{i}" for i in range(10)])
    with create_store(path, meta, overwrite=True) as st:
        s = st.add_split(spec)
        for b in range(s.num_blocks):
            lo, hi = st.block_range("train", b)
            for layer in layers:
                x = rng.standard_normal((hi - lo, 1, T, D), np.float32).astype(np.float16)
                st.write_block("train", layer, b, x)


def epoch_seconds(streams: list[BatchStream]) -> float:
    start = time.perf_counter()
    for stream in streams:
        for batch in stream.train_epoch(0):
            batch.x.sum()  # touch the batch, as a head would
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", choices=("read", "heads"), default="read",
                        help="read: one group vs k single-layer passes (default); heads: ALF vs last vs concat-all")
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/epcache-bench-layers"))
    parser.add_argument("--quick", action="store_true", help="heads: 3 lrs, 8 epochs, >= 200 steps (recipe auto else)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="heads: directory keeping the pretrained checkpoint between runs (bench/_pretrain.py)")
    args = parser.parse_args()
    if args.what == "heads":
        compare_heads(args.quick, args.cache)
        return
    read_groups(args)


def compare_heads(quick: bool, cache: Path | None) -> None:
    """Mode ``heads``: both stores in a temp dir, the three variants on each, one table."""
    import _layers_compare as lc  # only this mode needs the extractors and timm

    t0 = time.perf_counter()
    load_before = os.getloadavg()[0]
    results: dict[str, dict[str, lc.Entry]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, build in (("demo", lambda: lc.demo_store(root / "demo")),
                            ("digits", lambda: lc.digits_store(root / "digits", cache or root / "pretrain"))):
            store, what = build()
            print(what, flush=True)
            results[name] = {}
            for v in lc.VARIANTS:
                results[name][v] = lc.run_variant(store, v, quick)
                print(f"  {v}: {100 * results[name][v].top1:.2f} in {results[name][v].seconds:.0f} s", flush=True)
    grid = "--quick: lr 1e-3,1e-2,1e-1, 8 epochs, >= 200 steps" if quick else "recipe auto as is (12 lrs)"
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, CPU; {grid}; eval top-1 in %, "
          "its Wilson 95% interval; train s: the variant's whole sweep, wall clock")
    print("\n".join(lc.table(results)))
    print(f"load average before/after: {load_before:.2f} / {os.getloadavg()[0]:.2f} (shared machine); "
          f"{time.perf_counter() - t0:.0f} s in all")


def read_groups(args: argparse.Namespace) -> None:
    """Mode ``read`` (the default): one layer group vs k single-layer passes."""
    layers = tuple(range(args.layers))
    args.dir.mkdir(parents=True, exist_ok=True)
    path = args.dir / "layers.zarr"
    write_store(path, args.samples, layers)
    load_before = os.getloadavg()[0]
    cpu = torch.device("cpu")
    with open_store(path, verify_reads=True) as st:
        rows, labels = np.arange(args.samples), st.read_labels("train")
        layout = st.meta.layout

        def stream(source: object) -> BatchStream:
            return BatchStream(source, rows, labels, batch_size=BATCH, device=cpu,  # type: ignore[arg-type]
                               dtype=torch.float32, data_seed=0)

        sources = {
            "mean": MultiLayerSource(st, "train", layers, LayersRead(frozenset({"mean:patch"}), layout, len(layers))),
            "all k": MultiLayerSource(st, "train", layers,
                                      LayersRead(frozenset({"mean:patch", "concat:patch"}), layout, len(layers))),
        }
        runs = {name: [stream(src)] for name, src in sources.items()}
        runs["singles"] = [stream(StoreSource(st, "train", layer, InputRead(frozenset({"patch"}), layout)))
                           for layer in layers]
        for streams in runs.values():  # warm-up: page cache, allocator, threads
            epoch_seconds(streams)
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.rounds):  # interleaved: a burst of load elsewhere hits every variant
            for name, streams in runs.items():
                times[name].append(epoch_seconds(streams))
        for src in sources.values():
            src.close()
    gb = args.samples * len(layers) * (T - 1) * D * 2 / 1e9
    best = {name: min(t) for name, t in times.items()}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.samples} samples x {len(layers)} "
          f"layers x {T - 1} patches x {D} float16 = {gb:.2f} GB read per epoch, batch {BATCH}")
    print(f"load average before/after: {load_before:.2f} / {os.getloadavg()[0]:.2f} (shared machine)")
    labels_ = {
        "mean": f"group, mean of {len(layers)} layers (reader averages)",
        "all k": f"group, all {len(layers)} layers travel (concat/tokens)",
        "singles": f"{len(layers)} single-layer passes",
    }
    for name, t in times.items():
        print(f"{labels_[name]:<46} {best[name]:7.3f} s/epoch  rounds {[round(x, 3) for x in t]}")
    print(f"ratio singles / group(mean)  = {best['singles'] / best['mean']:.2f}x")
    print(f"ratio singles / group(all k) = {best['singles'] / best['all k']:.2f}x")
    shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    main()
