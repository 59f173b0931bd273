"""epcache's probe vs the loop a user writes by hand: 1 config, and K = 8 and 32 configs fused.

Command (from the repository root)::

    python bench/vs_hand_loop.py           # ~6 min on 2 idle CPU cores
    python bench/vs_hand_loop.py --quick   # smaller store and K = 1, 8 only, ~2 min

Setup: one store of 2,048 train + 512 val samples of 197 x 384 fp16 tokens (a ViT-S/16
layer; synthetic class-structured tokens), EP with 8 queries, LARS, batch 256, 3 epochs, holdout
(10%) and val scored every epoch on both sides, one torch thread.

- hand loop: the same epcache EP head (``create_head``), the tokens loaded ONCE per run from an
  ``.npy`` into RAM as float32 (the load is in its time, as the store read is in epcache's), a
  seeded permutation per epoch, the same number of batches per epoch,
  LARS with epcache's warm-up + cosine schedule; holdout and val scored every epoch. K configs =
  K such loops one after another (as a user sweeping lrs would run them).
- epcache: ``probe_store(ProbeConfig(..., in_memory=True))`` with the K configs in one sweep (fused),
  and once more streaming from the store (``in_memory=False``) for reference.

Printed: seconds, the ratio hand / epcache for each K, and the fixed / marginal split (the
slope of epcache's time over K = marginal seconds per config; the intercept = the fixed cost of
reading, converting and scoring that every config shares). Targets: 1 config <= 1.05x the hand
loop's time; 8 configs >= 5x faster than 8 hand loops; 32 configs >= 12x.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch
import torch.nn.functional as F

from epcache.probe import ProbeConfig, probe_store
from epcache.probe.data.select import split_train
from epcache.probe.heads import create_head
from epcache.probe.train.optim import LARS, lr_at
from epcache.store import BackboneMeta, SplitSpec, StoreMeta, TokenLayout, create_store, open_store

D, GRID, C = 384, (14, 14), 10
BATCH, EPOCHS, WARMUP, QUERIES = 256, 3, 1, 8
LRS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0)
WDS = (0.0, 1e-4, 1e-3, 1e-2)


def build_store(root: Path, n_train: int, n_val: int) -> Path:
    meta = StoreMeta(
        backbone=BackboneMeta("synthetic_vits16", "random-init", "1.0", "random-init", None, 12),
        layout=TokenLayout(num_prefix=1, cls_index=0, num_registers=0, grid=GRID), layers=(11,), final_norm=False,
        dtype="float16", dim=D, num_tokens=1 + GRID[0] * GRID[1], preprocessing={"input_size": [3, 224, 224]},
    )
    rng = np.random.default_rng(0)
    means = rng.standard_normal((C, D)).astype(np.float32) * 0.3
    path = root / "s.zarr"
    with create_store(path, meta) as st:
        for split, n in (("train", n_train), ("val", n_val)):
            y = np.arange(n) % C
            st.add_split(SplitSpec(split, y, [f"{split}/{i}" for i in range(n)], [f"c{i}" for i in range(C)], views=1,
                                   permutation_seed=1))
            ys = y[st.read_order(split)]
            for b in range(st.split(split).num_blocks):
                lo, hi = st.block_range(split, b)
                x = rng.standard_normal((hi - lo, 1, meta.num_tokens, D), dtype=np.float32)
                x += means[ys[lo:hi]][:, None, None, :]
                st.write_block(split, 11, b, x.astype(np.float16))
    return path


def hand_loop(root: Path, rows: tuple[np.ndarray, np.ndarray], y_all: np.ndarray, y_val: np.ndarray, lr: float,
              wd: float) -> float:
    """One config, written the way a user would (its data loaded from .npy as float32, included in its
    time as epcache's reading of the store is in epcache's); returns its last-epoch val top-1."""
    x_all = np.load(root / "train.npy").astype(np.float32)
    x_val = np.load(root / "val.npy").astype(np.float32)
    train, hold = rows
    x_train, y_train, x_hold, y_hold = x_all[train], y_all[train], x_all[hold], y_all[hold]
    torch.manual_seed(0)
    head = create_head("ep", in_dim=D, num_classes=C, queries=QUERIES)
    opt = LARS(head.parameters(), lr=lr, weight_decay=wd)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    steps = len(yt) // BATCH
    total, warm = EPOCHS * steps, WARMUP * steps
    rng = np.random.default_rng(0)
    acc = 0.0
    for epoch in range(EPOCHS):
        head.train()
        perm = torch.from_numpy(rng.permutation(len(yt)))
        for s in range(steps):
            idx = perm[s * BATCH:(s + 1) * BATCH]
            for g in opt.param_groups:
                g["lr"] = lr_at(epoch * steps + s, base_lr=lr, warmup_steps=warm, total_steps=total)
            loss = F.cross_entropy(head(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        head.eval()
        with torch.inference_mode():
            for xs, ys in ((x_hold, y_hold), (x_val, y_val)):
                xs_t, ys_t = torch.from_numpy(xs), torch.from_numpy(ys)
                hits = sum(int((head(xs_t[i:i + 1024]).argmax(1) == ys_t[i:i + 1024]).sum())
                           for i in range(0, len(ys_t), 1024))
                acc = hits / len(ys_t)
    return acc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    n_train, n_val = (1024, 256) if args.quick else (2048, 512)
    ks = (1, 8) if args.quick else (1, 8, 32)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = build_store(root, n_train, n_val)
        st = open_store(store)
        # the hand loop's data: one .npy per split, loaded once as float32 patch tokens
        ytr, yva = st.read_labels("train").astype(np.int64), st.read_labels("val").astype(np.int64)
        sub = split_train(ytr, ytr >= 0, classes=st.split("train").classes, holdout=0.1, seed=0)
        for split in ("train", "val"):
            np.save(root / f"{split}.npy", st.read_tokens(split, 11)[:, 0, 1:])
        data = (root, (sub.train, sub.holdout), ytr, yva)
        configs = [(lr, wd) for wd in WDS for lr in LRS]
        print(f"store: {n_train} train / {n_val} val x 197 x {D} fp16; EP q={QUERIES}, LARS, batch {BATCH}, "
              f"{EPOCHS} epochs, holdout + val scored every epoch; torch threads {torch.get_num_threads()}")
        t0 = time.perf_counter()
        hand_loop(*data, *configs[0])
        t_hand = time.perf_counter() - t0
        t0 = time.perf_counter()
        hand_loop(*data, *configs[1])
        t_hand = (t_hand + time.perf_counter() - t0) / 2  # one config's loop (mean of two runs)
        base = {"store": str(store), "head": ("ep",), "queries": (QUERIES,), "recipe": "ep-paper", "epochs": EPOCHS,
                "warmup": WARMUP, "batch_size": BATCH, "holdout": 0.1, "device": "cpu", "save_heads": False}
        header = f"{'K':>3} {'hand loops':>11} {'epcache RAM':>15} {'ratio':>7} {'epcache streamed':>17} {'ratio':>7}"
        print("\n" + header)
        times: dict[int, float] = {}
        wait: dict[int, float] = {}
        for k in ks:
            lrs = tuple(sorted({lr for lr, _ in configs[:k]}))
            wds = tuple(sorted({wd for _, wd in configs[:k]}))
            cfg = ProbeConfig(**base, lr=lrs, wd=wds, in_memory=True)  # type: ignore[arg-type]
            t0 = time.perf_counter()
            res = probe_store(cfg, progress=False)
            times[k] = time.perf_counter() - t0
            assert len(res.rows) == k, len(res.rows)
            wait[k] = res.rows[0]["timing"]["data_wait_seconds"]
            t0 = time.perf_counter()
            probe_store(ProbeConfig(**base, lr=lrs, wd=wds), progress=False)  # type: ignore[arg-type]
            t_stream = time.perf_counter() - t0
            hand = k * t_hand
            print(f"{k:>3} {hand:>10.2f}s {times[k]:>14.2f}s {hand / times[k]:>6.2f}x {t_stream:>16.2f}s "
                  f"{hand / t_stream:>6.2f}x", flush=True)
        kmax = max(ks)
        marginal = (times[kmax] - times[1]) / (kmax - 1)
        fixed = times[1] - marginal
        print(f"\nepcache fixed cost (read, convert, score; shared) ~{fixed:.2f} s; marginal ~{marginal:.3f} s per "
              f"config (slope over K = 1..{kmax}); the hand loop costs {t_hand:.2f} s per config")
        waits = ", ".join(f"K={k}: {w:.3f} s" for k, w in wait.items())
        print(f"reader queue empty (training waited for data): {waits}")
        print("targets: K=1 ratio >= 0.95 (epcache <= 1.05x the hand loop), K=8 >= 5x, K=32 >= 12x")


if __name__ == "__main__":
    sys.exit(main())
