"""What does lossy token storage cost? fp16 vs int8 (per channel, per token) vs fp8 vs 2x2 pooling.

Command (from the repository root)::

    python bench/quantize.py          # 30 min on the shared 2-core machine under load (3 head seeds x 7 stores x 2)
    python bench/quantize.py --full   # 2.5x the samples: less noise, ~3x the time
    python bench/quantize.py --datasets synthetic --variants int8-channel,fp16+noise   # a part of it
    python bench/quantize.py --no-probe   # bytes, error and read throughput only: 15 s

From ONE fp16 extraction per dataset it writes the other stores with the store API
(``create_store(..., quantization=...)`` + ``write_block`` of the fp16 blocks, exactly what
`extract --quantize` does per block), so every variant holds the same tokens:

- ``fp16``: the extraction itself;
- ``int8-channel``, ``int8-token``, ``fp8-e4m3``: quantised copies (cache_layout.md §3.5);
- ``2x2-pooled``: the patch grid averaged over 2x2 windows in numpy (prefix tokens kept), fp16;
- ``fp16+noise``: the control, fp16 plus Gaussian noise with the RMS of int8-channel's error per
  (token, channel): what any perturbation of int8's size does to each head (with the ``fp16 seeds
  3-5`` row, the noise floor a difference must clear before it says anything about quantisation).

Datasets: ``demo`` (the demo's generated shapes through a random-init 4-block patch-8 ViT at 64 px,
grid 8x8, last block) and ``synthetic`` (class-structured tokens, D=64, 3x3 grid, 4 outlier channels
with 100x the magnitude of the others, as ViT tokens have). Heads, each trained by the library
(``epcache.probe``) with its defaults and scored once on val: linear on CLS, linear on GAP, EP, and
k-NN (k=20 on CLS). Printed: top-1 per head and store, the difference from fp16 in points, bytes on
disk, the reconstruction error relative to fp16 (RMS / RMS of the tokens), and read throughput of
``read_chunk`` over the whole train split (MB/s of logical fp16 tokens, samples/s), as ratios to fp16.
Target: int8 within 0.3 points of fp16 for every head on both datasets, at half the bytes.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import _stores
import numpy as np

from epcache.probe import ProbeConfig, probe_store
from epcache.store import SplitSpec, TokenLayout, create_store, open_store

VARIANTS = ("fp16", "int8-channel", "int8-token", "fp8-e4m3", "2x2-pooled", "fp16+noise")
HEADS = {"linear-cls": ("linear", "cls"), "linear-gap": ("linear", "gap"), "ep": ("ep", "patch"), "knn": ("knn", "cls")}
SPECS = ("linear(tokens='cls')", "linear(tokens='gap')", "ep", "knn(k=20)")
SEEDS = (0, 1, 2)  # head-init seeds averaged: one seed's spread is larger than what int8 costs
NOISE_SEEDS = (3, 4, 5)  # the same fp16 store with other seeds: the noise floor of the comparison


def demo_store(root: Path, quick: bool) -> Path:
    return _stores.demo_store(root, quick, name="demo-fp16.zarr")


def synthetic_store(root: Path, quick: bool) -> Path:
    return _stores.synthetic_store(root, quick, outlier_scale=100.0, name="synthetic-fp16.zarr")


def copy_store(src: Path, dst: Path, variant: str) -> None:
    """The same tokens, stored as ``variant``: quantised by the store, or 2x2-pooled here in numpy."""
    s = open_store(src)
    meta = s.meta
    pool = variant == "2x2-pooled"
    noisy = variant == "fp16+noise"
    if noisy:  # the control: a perturbation of int8-channel's size that is not quantisation
        int8 = open_store(dst.parent / dst.name.replace("fp16+noise", "int8-channel"))
        rng = np.random.default_rng(7)
    if pool:
        h, w = meta.layout.grid
        layout = dataclasses.replace(meta.layout, grid=(-(-h // 2), -(-w // 2)))
        meta = dataclasses.replace(meta, layout=layout, num_tokens=layout.num_tokens)
    elif not noisy:
        meta = dataclasses.replace(meta, quantization=variant)
    with create_store(dst, meta) as d:
        for split, sm in s.splits.items():
            order = s.read_order(split)
            labels = np.empty(sm.num_samples, np.int64)
            labels[order] = s.read_labels(split)
            ids = [""] * sm.num_samples
            for i, sid in zip(order.tolist(), s.read_ids(split), strict=True):
                ids[i] = sid
            d.add_split(SplitSpec(split, labels, ids, sm.classes, views=sm.views, permutation_seed=sm.permutation_seed),
                        chunk_samples=sm.chunk_samples)
            for layer in meta.layers:
                for b in range(d.split(split).num_blocks):
                    lo, hi = d.block_range(split, b)
                    x = s.read_tokens(split, layer, lo, hi)
                    if noisy:  # Gaussian noise with the RMS of int8-channel's error, per (token, channel)
                        err = x.astype(np.float32) - int8.read_tokens(split, layer, lo, hi).astype(np.float32)
                        x = (x + rng.standard_normal(x.shape) * np.sqrt((err**2).mean(axis=(0, 1)))).astype(x.dtype)
                    d.write_block(split, layer, b, pool_2x2(x, s.meta.layout) if pool else x)


def pool_2x2(x: np.ndarray, layout: TokenLayout) -> np.ndarray:
    """Average the patch grid over 2x2 windows (edge windows of an odd grid average what they cover)."""
    p, (h, w) = layout.num_prefix, layout.grid
    n, v, _, d = x.shape
    g = x[:, :, p:].astype(np.float32).reshape(n, v, h, w, d)
    H, W = -(-h // 2), -(-w // 2)
    padded = np.zeros((n, v, 2 * H, 2 * W, d), np.float32)
    count = np.zeros((2 * H, 2 * W, 1), np.float32)
    padded[:, :, :h, :w] = g
    count[:h, :w] = 1
    pooled = padded.reshape(n, v, H, 2, W, 2, d).sum((3, 5)) / count.reshape(H, 2, W, 2, 1).sum((1, 3))
    return np.concatenate([x[:, :, :p], pooled.reshape(n, v, H * W, d).astype(x.dtype)], axis=2)


def top1(store: Path, seeds: tuple[int, ...] = SEEDS) -> dict[str, float]:
    """Eval top-1 per head: every head of SPECS in one fused pass with the default recipe (its lr sweep),
    for each head-init seed; per head and seed, the eval top-1 of the configs tied for the best holdout
    top-1 (honest selection), averaged; then averaged over the seeds. Other ``seeds`` give the noise floor."""
    res = probe_store(ProbeConfig(store=str(store), head=SPECS, seeds=seeds, device="cpu"), progress=False)
    out: dict[str, float] = {}
    for label, (kind, tokens) in HEADS.items():
        per_seed = []
        mine = [r for r in res.rows if r["config"]["kind"] == kind and r["config"]["tokens"] == tokens]
        for seed in seeds:  # k-NN has no seed: its rows serve every seed
            rows = [r for r in mine if r["config"]["seed"] == seed] or mine
            best = max(r["metrics"]["holdout"]["top1"] for r in rows)
            per_seed.append(np.mean([r["metrics"]["eval"]["top1"] for r in rows
                                     if r["metrics"]["holdout"]["top1"] == best]))
        out[label] = float(np.mean(per_seed))
    return out


def read_speed(store: Path, decode_to: type | None = None) -> tuple[float, float]:
    """(MB/s of logical fp16 tokens, samples/s) of read_chunk over the whole train split, best of 10 passes
    (page-cached: this is the decode cost, not the disk's). ``decode_to=np.float32``: what the probe's
    RAM load and the solvers' pooled pass ask of a quantised store."""
    st = open_store(store)
    layer, sm = st.meta.layers[-1], st.split("train")
    t, d = st.meta.layer_shape(layer)
    best = float("inf")
    for _ in range(10):
        t0 = time.perf_counter()
        for c in range(sm.num_chunks):
            st.read_chunk("train", layer, c, decode_to=decode_to)
        best = min(best, time.perf_counter() - t0)
    return sm.num_samples * sm.views * t * d * 2 / best / 1e6, sm.num_samples / best


def rel_error(ref: Path, other: Path) -> float:
    a, b = open_store(ref), open_store(other)
    layer = a.meta.layers[-1]
    x = a.read_tokens("val", layer).astype(np.float32)
    y = b.read_tokens("val", layer).astype(np.float32)
    return float(np.sqrt(np.mean((x - y) ** 2)) / np.sqrt(np.mean(x**2)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--full", action="store_true", help="2.5x the samples (less noise, ~3x the time)")
    ap.add_argument("--no-probe", action="store_true", help="bytes, error and read throughput only (no heads)")
    ap.add_argument("--datasets", default="demo,synthetic", help="comma list of demo, synthetic")
    ap.add_argument("--variants", default=",".join(VARIANTS[1:]), help="comma list of stores beside fp16")
    args = ap.parse_args()
    variants = [v for v in VARIANTS[1:] if v in args.variants.split(",")]
    if "fp16+noise" in variants and "int8-channel" not in variants:
        variants.insert(0, "int8-channel")  # the control is sized by int8-channel's error
    t0 = time.perf_counter()
    worst = {"int8-channel": 0.0, "int8-token": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, make in (("demo", demo_store), ("synthetic", synthetic_store)):
            if name not in args.datasets.split(","):
                continue
            src = make(root, not args.full)
            stores = {"fp16": src}
            for v in variants:
                stores[v] = root / f"{name}-{v}.zarr"
                copy_store(src, stores[v], v)
            print(f"\n== {name}: {open_store(src).split('train').num_samples} train samples, "
                  f"tokens {open_store(src).meta.num_tokens} x {open_store(src).meta.dim}", flush=True)
            print(f"{'store':<13} " + " ".join(f"{h:>11}" for h in HEADS) + f" {'bytes':>10} {'x fp16':>7} "
                  f"{'rel.err':>8} {'MB/s':>8} {'samples/s':>10} {'x fp16':>7} {'f32 MB/s':>9}")
            ref_bytes = open_store(src).size_bytes()
            ref_mb = 0.0
            base: dict[str, float] = {}
            nothing = dict.fromkeys(HEADS, float("nan"))
            noise = nothing if args.no_probe else top1(src, NOISE_SEEDS)
            for v, path in stores.items():
                accs = nothing if args.no_probe else top1(path)
                if v == "fp16":
                    base = accs
                cells = []
                for h, a in accs.items():
                    diff = 100 * (a - base[h])
                    cells.append(f"{100 * a:6.2f}" + (f"{diff:+5.1f}" if v != "fp16" else "     "))
                    if v in worst:
                        worst[v] = min(worst[v], diff)
                size = open_store(path).size_bytes()
                mb, sps = read_speed(path)
                mb32, _ = read_speed(path, np.float32)
                ref_mb = ref_mb or mb
                err = rel_error(src, path) if v != "2x2-pooled" else float("nan")
                print(f"{v:<13} " + " ".join(f"{c:>11}" for c in cells) + f" {size:>10} {size / ref_bytes:7.2f} "
                      f"{err:8.4f} {mb:8.0f} {sps:10.0f} {mb / ref_mb:7.2f} {mb32:9.0f}", flush=True)
                if v == "fp16":
                    spread = [f"{100 * noise[h]:6.2f}{100 * (noise[h] - base[h]):+5.1f}" for h in HEADS]
                    print(f"{'fp16 seeds 3-5':<13} " + " ".join(f"{c:>11}" for c in spread), flush=True)
    print("\ncells: top-1 % (mean of head seeds 0-2) and its difference from fp16 in points ('fp16 seeds 3-5': the "
          "same store, other head seeds; 'fp16+noise': fp16 plus Gaussian noise of int8-channel's error RMS: "
          "together, the noise floor); bytes: the whole store on disk; "
          "rel.err: RMS(decoded - fp16) / RMS(fp16) on val; "
          "MB/s: read_chunk in logical fp16 bytes (pooled: of its fewer tokens); f32 MB/s: decode_to=float32")
    if args.no_probe:
        return
    print(f"worst int8 difference from fp16 over heads and datasets: per channel {worst['int8-channel']:+.2f}, "
          f"per token {worst['int8-token']:+.2f} points (target >= -0.30); {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
