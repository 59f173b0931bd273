"""Probing from the feature store: cache speed-up, fused-sweep speed-up, and how much is I/O.

Command (from the repository root)::

    python bench/probe_sweep.py            # ~75 s on 2 idle CPU cores
    python bench/probe_sweep.py --quick    # ~25 s, smaller store and fewer epochs

Machine: the project's 2-core AMD EPYC VM (AVX2, no GPU), torch 2.14.1, one torch thread (see
THREADS below). Expected runtime 75 s idle, up to 2.5 min while other jobs share the cores.

What it does, all on one store written at the start (a random-init timm ``vit_tiny_patch16_224``
at 64x64 px: 16 patch tokens + CLS, D=192, fp16, layer 11, synthetic class-dependent images):

(a) cache speed-up: one EP probe (queries=8) trained from the store with ``probe_store()`` vs the same
    head trained with the backbone running on every batch (images already decoded in RAM, so the
    real-world gap, which adds JPEG decoding and augmentation, is larger). Both evaluate on val
    every epoch. Ratio = seconds per epoch, backbone in the loop / from the store.
(b) fused speed-up: a 32-config grid (EP queries 4,8 and linear cls/gap; 4 lrs; 2 wds) in ONE
    ``probe_store()`` call vs the 32 configs run one ``probe_store()`` call at a time. Ratio = total seconds.
(c) I/O share: seconds of one streamed training epoch of the 32-config sweep (fused trainer, no
    evaluation) vs iterating the same epoch's batches with the reader alone (store read, shuffle,
    batching; then also the host-to-device copy and fp16->fp32 conversion), same stream.

Expected result (this machine, idle): (a) ~135x (80-90x while other jobs share the cores);
(b) ~3.2x overall (2.1-3.1x under load), split as ~7x for the 16 linear configs (their cost is
the shared read, evaluation and per-run overhead) and ~2x for the 16 EP configs, whose FLOPs are
per config and compute-bound on 2 CPU cores (stacking only makes the matmuls larger); on a GPU,
or with a store read from disk instead of the page cache, the shared read dominates and the
fused gain grows with the number of configs; (c) the reader is ~2% of a fused training epoch
(the store sits in the page cache), i.e. training here is compute-bound, not I/O-bound.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

# Resource note: with torch's default of 2 OpenMP threads on this 2-core VM, OpenMP spin-waiting
# makes every small op ~100x slower (7.6 ms vs 23 us for a 32x8x16 matmul; a 512^3 matmul is no
# faster with 2 threads than with 1). Set before torch is imported; override with OMP_NUM_THREADS.
THREADS = int(os.environ.setdefault("OMP_NUM_THREADS", "1"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from epcache.probe import ProbeConfig, expand_sweep, probe_store  # noqa: E402
from epcache.probe.data.stream import BatchStream, InputRead, StoreSource  # noqa: E402
from epcache.probe.heads import create_head  # noqa: E402
from epcache.probe.sweep.geometry import HeadGeometry  # noqa: E402
from epcache.probe.train.optim import build_optimizer, lr_at  # noqa: E402
from epcache.probe.train.trainer import GroupTrainer  # noqa: E402
from epcache.store import BackboneMeta, SplitSpec, StoreMeta, TokenLayout, create_store, open_store  # noqa: E402

IMG = 64
CLASSES = 10
LAYER = 11
A_LR = 2.0  # LARS lr of the single probe in (a); 0.1·B/256 barely moves a head in a few hundred steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller store, fewer epochs")
    parser.add_argument("--workdir", type=Path, default=None, help="where the store and runs go (default: a temp dir)")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    n_train, n_val = (1024, 256) if args.quick else (4096, 512)
    epochs = 2 if args.quick else 3
    work = args.workdir or Path(tempfile.mkdtemp(prefix="epcache-bench-"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {os.cpu_count()} cpus; work dir {work}")

    model, images, labels = backbone_and_images(n_train + n_val)
    t0 = time.perf_counter()
    store = write_store(work / "vit_tiny.zarr", model, images, labels, n_train)
    t_extract = time.perf_counter() - t0
    print(f"extracted {n_train + n_val} images once in {t_extract:.1f} s -> {store}")

    # ------------------------------------------------------------------ (a) cache speed-up
    base = {"store": str(store), "epochs": epochs, "warmup": 1, "batch_size": 256, "holdout": 0.1, "device": "cpu",
            "optimizer": "lars", "train_split": "train", "eval_split": "val"}
    single = probe_store(ProbeConfig(head="ep", queries=8, lr=A_LR, **base), progress=False)  # type: ignore[arg-type]
    row = single.rows[0]
    store_epoch = row["timing"]["seconds_per_epoch"]
    online_epoch, online_top1 = backbone_in_the_loop(model, images, labels, n_train, epochs=epochs)
    print("\n(a) one EP probe (queries=8): seconds per epoch (train + val eval)")
    print(f"    from the store       {store_epoch:8.3f} s   eval top-1 {100 * row['metrics']['eval']['top1']:.1f}%")
    print(f"    backbone in the loop {online_epoch:8.3f} s   eval top-1 {100 * online_top1:.1f}% (last epoch)")
    print(f"    cache speed-up       {online_epoch / store_epoch:8.1f}x")

    # ------------------------------------------------------------------ (b) fused speed-up
    grid = {"head": ("linear", "ep"), "tokens": ("cls", "gap", "patch"), "queries": (4, 8),
            "lr": (0.25, 0.5, 1.0, 2.0), "wd": (0.0, 1e-4)}
    t0 = time.perf_counter()
    fused = probe_store(ProbeConfig(**grid, **base), progress=False)  # type: ignore[arg-type]
    t_fused = time.perf_counter() - t0
    assert len(fused.rows) == 32, len(fused.rows)
    alone_rows = []
    alone_by_kind = {"linear": 0.0, "ep": 0.0}
    for r in fused.rows:
        c = r["config"]
        one = {"head": c["kind"], "tokens": c["tokens"], "lr": c["lr"], "wd": c["wd"]}
        if c["kind"] == "ep":
            one["queries"] = c["head_options"]["queries"]
        t0 = time.perf_counter()
        alone_rows.append(probe_store(ProbeConfig(**one, **base), progress=False).rows[0])  # type: ignore[arg-type]
        alone_by_kind[c["kind"]] += time.perf_counter() - t0
    t_alone = sum(alone_by_kind.values())
    same = sum(a["id"] == b["id"] and a["selected_epoch"] == b["selected_epoch"] for a, b in
               zip(fused.rows, alone_rows, strict=True))
    fused_by_kind = {}
    for kind, sub_grid in (("linear", {"tokens": ("cls", "gap")}), ("ep", {"queries": (4, 8)})):
        t0 = time.perf_counter()
        probe_store(ProbeConfig(head=kind, lr=grid["lr"], wd=grid["wd"], **sub_grid, **base), progress=False)  # type: ignore[arg-type]
        fused_by_kind[kind] = time.perf_counter() - t0
    print("\n(b) 32-config grid (linear cls/gap + EP q=4/8, 4 lr, 2 wd), total seconds")
    print(f"    fused, one pass      {t_fused:8.2f} s")
    print(f"    one config at a time {t_alone:8.2f} s   ({same}/32 configs: same id and selected epoch)")
    print(f"    fused speed-up       {t_alone / t_fused:8.1f}x")
    for kind, t in fused_by_kind.items():
        print(f"      {kind:6s} half alone: {t:6.2f} s fused vs {alone_by_kind[kind]:6.2f} s one by one "
              f"= {alone_by_kind[kind] / t:4.1f}x")
    print(f"    best: {fused.best['name'] if fused.best else '-'}")

    # ------------------------------------------------------------------ (c) how much of an epoch is I/O
    cfg = ProbeConfig(**grid, **base)  # type: ignore[arg-type]
    train, reader, to_device = train_vs_reader(cfg, store, epochs)
    print("\n(c) 32-config sweep, one training epoch from the store (streamed, no eval): seconds")
    print(f"    training all 32 heads                {train:8.3f} s")
    print(f"    reader alone (read, shuffle, batch)  {reader:8.3f} s   ({100 * reader / train:.0f}% of training)")
    print(f"    reader + device copy + fp16->fp32    {to_device:8.3f} s   ({100 * to_device / train:.0f}% of training)")
    print(f"    training / reader                    {train / to_device:8.1f}x")


def backbone_and_images(n: int) -> tuple[torch.nn.Module, torch.Tensor, np.ndarray]:
    """Random-init ViT-Tiny at 64 px, and synthetic images: a class template plus noise, uint8."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=IMG, num_classes=0).eval()
    rng = np.random.default_rng(0)
    templates = rng.uniform(0, 255, (CLASSES, 3, IMG // 8, IMG // 8))
    templates = np.kron(templates, np.ones((1, 1, 8, 8)))  # blocky class patterns
    labels = np.arange(n) % CLASSES
    imgs = 0.6 * templates[labels] + 0.4 * rng.uniform(0, 255, (n, 3, IMG, IMG))
    return model, torch.from_numpy(imgs.astype(np.uint8)), labels


def features(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Tokens ``(B, 17, 192)``: what the store holds for these images."""
    x = images.float().div_(255).sub_(0.5).div_(0.5)
    with torch.no_grad():
        return model.forward_features(x)


def write_store(path: Path, model: torch.nn.Module, images: torch.Tensor, labels: np.ndarray, n_train: int) -> Path:
    dim = model.embed_dim
    meta = StoreMeta(
        backbone=BackboneMeta("vit_tiny_patch16_224", "random-init", "bench", "random-init", None, 12),
        layout=TokenLayout(num_prefix=1, cls_index=0, num_registers=0, grid=(IMG // 16, IMG // 16)),
        layers=(LAYER,),
        final_norm=True,
        dtype="float16",
        dim=dim,
        num_tokens=1 + (IMG // 16) ** 2,
        preprocessing={"input_size": [3, IMG, IMG]},
    )
    classes = [f"class{i}" for i in range(CLASSES)]
    with create_store(path, meta, overwrite=True) as st:
        for split, lo, hi in (("train", 0, n_train), ("val", n_train, len(labels))):
            y = labels[lo:hi]
            st.add_split(SplitSpec(split, y, [f"{split}/{i}" for i in range(len(y))], classes), chunk_samples=64)
            order = st.read_order(split)
            for b in range(st.split(split).num_blocks):
                s, e = st.block_range(split, b)
                tok = features(model, images[lo:hi][torch.from_numpy(order[s:e])])
                st.write_block(split, LAYER, b, tok.unsqueeze(1).numpy().astype(np.float16))
    return path


def backbone_in_the_loop(
    model: torch.nn.Module, images: torch.Tensor, labels: np.ndarray, n_train: int, *, epochs: int
) -> tuple[float, float]:
    """The same EP probe and recipe, with the backbone's forward on every batch; seconds per epoch."""
    B, n_val = 256, len(labels) - n_train
    torch.manual_seed(0)
    head = create_head("ep", in_dim=model.embed_dim, num_classes=CLASSES, queries=8)
    opt = build_optimizer("lars", head.parameters(), lr=A_LR)
    y_all = torch.from_numpy(labels)
    steps = n_train // B
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    top1 = 0.0
    for epoch in range(epochs):
        head.train()
        perm = torch.from_numpy(rng.permutation(n_train))
        for i in range(steps):
            idx = perm[i * B : (i + 1) * B]
            tokens = features(model, images[idx])[:, 1:]
            for g in opt.param_groups:
                g["lr"] = lr_at(epoch * steps + i, base_lr=A_LR, warmup_steps=steps, total_steps=epochs * steps)
            loss = torch.nn.functional.cross_entropy(head(tokens), y_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        head.eval()
        correct = 0
        with torch.no_grad():
            for s in range(n_train, n_train + n_val, B):
                idx = torch.arange(s, min(s + B, n_train + n_val))
                correct += int((head(features(model, images[idx])[:, 1:]).argmax(-1) == y_all[idx]).sum())
        top1 = correct / n_val
    return (time.perf_counter() - t0) / epochs, top1


def train_vs_reader(cfg: ProbeConfig, store_path: Path, epochs: int) -> tuple[float, float, float]:
    """Median seconds per epoch: fused training of every config, the host reader, the reader + device copy."""
    st = open_store(store_path)
    split = st.split("train")
    runs = expand_sweep(cfg, st.meta, num_classes=len(split.classes), store_provenance=st.provenance,
                        eval_provenance=st.provenance)
    layout = st.meta.layout
    geometry = HeadGeometry(st.meta.dim, len(split.classes), st.meta.num_tokens, layout.num_patches, layout.num_prefix)
    plan = InputRead(frozenset(r.tokens for r in runs), layout)
    rows = np.arange(int(split.num_samples * 0.9))  # about the training subset left by a 10% holdout
    stream = BatchStream(StoreSource(st, "train", LAYER, plan), rows, st.read_labels("train"),
                         batch_size=cfg.optim.batch_size, device=torch.device("cpu"), dtype=torch.float32, data_seed=0)
    trainer = GroupTrainer(runs, geometry, plan, device=torch.device("cpu"), dtype=torch.float32)
    spe = stream.steps_per_epoch()
    train, host, dev = [], [], []
    for epoch in range(epochs + 1):  # epoch 0 warms up caches and allocators; not counted
        t0 = time.perf_counter()
        trainer.train_epoch(stream, epoch, warmup_steps=spe, total_steps=(epochs + 1) * spe)
        t1 = time.perf_counter()
        for _ in stream.host_train_epoch(epoch):
            pass
        t2 = time.perf_counter()
        for _ in stream.train_epoch(epoch):
            pass
        t3 = time.perf_counter()
        if epoch:
            train.append(t1 - t0)
            host.append(t2 - t1)
            dev.append(t3 - t2)
    st.close()
    return float(np.median(train)), float(np.median(host)), float(np.median(dev))


if __name__ == "__main__":
    sys.exit(main())
