"""Does writing every layer to the store hide behind the backbone? Full extract vs forward-only.

Command:
    python bench/extract_overhead.py
    python bench/extract_overhead.py --model vit_tiny_patch16_224 --images 128 --pairs 8   # harsher
    python bench/extract_overhead.py --only transfer --images 512 [--device cuda]   # uint8 vs float32 workers

Machine: 2 CPU cores (AMD EPYC VM, shared host), no GPU, local disk; torch 2.14.1, timm 1.0.31,
zarr 3.1.6.
Expected runtime: 60-120 s with the defaults (vit_small_patch16_224 @224, 64 images, 5 pairs).
Expected result: ratio ~0.94, target >= 0.85. Measured: median pair ratio 0.947 (best passes
0.940) in a quiet period; 0.843 (best passes 0.874) while the shared host slowed every pass
2-3x at random, which adjacent pairs only partly cancel. Rerun when the spread is large.
The harsher vit_tiny line writes 0.9 MB per image for a quarter of the compute and measured
0.82 median / 0.87 best-pass on the same machine: on a CPU-only box zarr's write path costs
~3 ms of CPU per MB, which the 2 busy cores have to pay; on a GPU machine it runs on idle cores.

What is compared, on the same generated JPEGs and the same random-init ViT (no weights needed):
  full          `extract_store()` into a zarr store: decode (DataLoader workers) + forward + all
                layers cast to float16 and accumulated per write-block + background writes;
  forward-only  the same `extract_store()` call with the store's `write_block` replaced by a no-op,
                so everything except the disk write runs (decode, forward, cast, copies).
ratio = full throughput / forward-only throughput, per adjacent pair of passes (pairs alternate
their order); the median pair ratio is the headline, because on a shared machine throughput
drifts by 2-3x over tens of seconds and adjacent passes share the conditions. Small write
blocks keep the one write that cannot overlap anything (the last block's) short.

Worker output, measured in the same run: the DataLoader alone (decode, resize, crop in
2 workers, collate, hand-over to the main process, normalise there) with workers sending
  uint8         what extraction does: 1 byte a pixel, normalised in the main process / on the device;
  float32       the previous behaviour: ToTensor + Normalize in the worker, 4 bytes a pixel.
Reported: bytes moved per image (the collated tensor, which crosses process boundaries through
shared memory and then goes to the device) and images/s, each as uint8 / float32, median of
alternating pairs. `--only transfer` runs this part alone. Expected: bytes ratio 0.250 exactly.
Measured here (2 shared cores, --device cpu, 512 images @224): throughput ratio 0.80 (pairs
0.62-0.87): on a CPU-only box the main process now does the normalisation the 2 workers did in
parallel (~2 ms a batch of 16, under 1% of a CPU forward of vit_small, so a full CPU extraction
does not notice); the gain is on a GPU box (`--device cuda`), where the normalisation runs on the
GPU, workers skip it and the host-to-device copy is 4x smaller.

Resource warning: vit_small stores ~1.8 MB per image (12 layers x 197 tokens x 384 x fp16),
written under --tmp (default: the system temp dir) and deleted after each pass.
"""

from __future__ import annotations

import argparse
import platform
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_images(root: Path, n: int, *, seed: int = 0) -> None:
    """ImageFolder with 4 classes of smooth random JPEGs around 256 px (noise would inflate decode time)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = int(rng.integers(224, 320)), int(rng.integers(224, 320))
        small = rng.integers(0, 256, size=(h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR)
        path = root / "train" / f"class{i % 4}" / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, quality=90)


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the DataLoader workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_pass(args: argparse.Namespace, data: Path, out: Path, *, write: bool) -> tuple[float, float]:
    """One extraction pass; returns samples per wall second of the extraction loop and per CPU second."""
    from epcache.extract import ExtractConfig, extract_store
    from epcache.store.core import FeatureStore

    cfg = ExtractConfig(
        model=args.model,
        data=data,
        out=out,
        splits={"train": "train"},
        layers="all",
        random_init=True,
        batch_size=args.batch_size,
        workers=args.workers,
        img_size=args.img_size,
        dtype="float16",
        chunk_samples=args.chunk_samples,
    )
    original = FeatureStore.write_block
    if not write:
        FeatureStore.write_block = lambda self, split, layer, block, data: None  # type: ignore[method-assign]
    cpu0 = cpu_seconds()
    try:
        result = extract_store(cfg, progress=False)
    finally:
        FeatureStore.write_block = original  # type: ignore[method-assign]
    per_cpu_s = args.images / (cpu_seconds() - cpu0)
    kind = "full extract" if write else "forward-only"
    print(
        f"  {kind}: {result.images_per_s:5.1f} img/s wall, {per_cpu_s:5.1f} img/CPU-s"
        + (f", writer stall {result.writer_wait_s:.2f} s of {result.seconds:.1f} s" if write else "")
    )
    shutil.rmtree(out, ignore_errors=True)
    return result.images_per_s, per_cpu_s


def transfer_pass(
    data: Path, *, img_size: int, workers: int, batch_size: int, float32: bool, device: str = "cpu"
) -> tuple[float, float]:
    """One pass of the loader over every image; returns (bytes moved per image, images per second)."""
    from epcache.extract._loader import ViewDataset, make_loader
    from epcache.extract._pixels import Normalizer
    from epcache.extract._transforms import create_eval_transform

    cfg = {"input_size": [3, img_size, img_size], "interpolation": "bicubic", "crop_pct": 0.875,
           "crop_mode": "center", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    paths = sorted(data.rglob("*.jpg"))
    normalize = Normalizer(cfg["mean"], cfg["std"])

    class Float32Views(ViewDataset):
        """The old worker output: normalised float32 views made in the worker."""

        def __getitem__(self, index: int):  # type: ignore[no-untyped-def]
            i, views, err, raw = super().__getitem__(index)
            return i, normalize(views), err, raw

    kind = Float32Views if float32 else ViewDataset
    ds = kind(paths, split="train", eval_transform=create_eval_transform(cfg), input_size=(3, img_size, img_size),
              views=1, augment=None, seed=0)
    batches = [list(range(i, min(len(paths), i + batch_size))) for i in range(0, len(paths), batch_size)]
    moved = 0
    t0 = time.perf_counter()
    cuda = device.startswith("cuda")
    for batch in make_loader(ds, batches, workers=workers, pin_memory=cuda):
        moved += batch.images.nbytes
        x = batch.images.to(device, non_blocking=True)
        x = x if float32 else normalize(x.flatten(0, 1))  # on the device, as extraction does
        assert x.dtype.is_floating_point
    if cuda:
        import torch

        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return moved / len(paths), len(paths) / seconds


def compare_transfer(args: argparse.Namespace, data: Path) -> None:
    """uint8 vs float32 worker output, alternating passes, ratios uint8 / float32."""
    kw = {"img_size": args.img_size, "workers": args.workers, "batch_size": args.batch_size, "device": args.device}
    transfer_pass(data, float32=False, **kw)  # warm-up: page cache, worker start
    speed: dict[bool, list[float]] = {False: [], True: []}
    ratios, moved = [], {}
    for r in range(args.pairs):
        got = {}
        for f32 in ((False, True) if r % 2 == 0 else (True, False)):
            moved[f32], got[f32] = transfer_pass(data, float32=f32, **kw)
            speed[f32].append(got[f32])
        ratios.append(got[False] / got[True])
    print(f"worker output @{args.img_size}px, {args.workers} workers, device {args.device}: bytes moved per image "
          f"uint8 {moved[False]:,.0f} "
          f"vs float32 {moved[True]:,.0f} (ratio {moved[False] / moved[True]:.3f})")
    print(f"  throughput uint8 {statistics.median(speed[False]):.1f} img/s vs float32 "
          f"{statistics.median(speed[True]):.1f} img/s; pair ratios {' '.join(f'{x:.2f}' for x in ratios)}; "
          f"median ratio (uint8 / float32) {statistics.median(ratios):.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--model", default="vit_small_patch16_224")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--chunk-samples", type=int, default=16, help="write-block size (small: short tail write)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--pairs", type=int, default=5, help="(forward-only, full) pass pairs")
    p.add_argument("--tmp", type=Path, default=None, help="where the images and stores go")
    p.add_argument("--device", default="cpu", help="where the transfer part normalises (cuda: as on a GPU box)")
    p.add_argument("--only", choices=["overhead", "transfer"], default=None, help="run one part (default: both)")
    args = p.parse_args()

    import timm
    import torch
    import zarr

    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads; "
        f"torch {torch.__version__}, timm {timm.__version__}, zarr {zarr.__version__}"
    )
    work = Path(tempfile.mkdtemp(prefix="epcache-bench-", dir=args.tmp))
    try:
        t0 = time.perf_counter()
        make_images(work / "data", args.images)
        print(
            f"generated {args.images} JPEGs in {time.perf_counter() - t0:.1f} s; model {args.model} "
            f"@{args.img_size}, all layers, float16, batch {args.batch_size}, blocks of {args.chunk_samples}, "
            f"{args.workers} workers"
        )
        if args.only != "overhead":
            compare_transfer(args, work / "data")
        if args.only == "transfer":
            return
        print("warm-up", end="")
        run_pass(args, work / "data", work / "warmup.zarr", write=True)  # warm caches, oneDNN kernels
        ratios, fwd, full = [], [], []
        for r in range(args.pairs):
            order = (False, True) if r % 2 == 0 else (True, False)  # alternate to cancel drift
            got = {w: run_pass(args, work / "data", work / f"p{r}{w}.zarr", write=w) for w in order}
            fwd.append(got[False][0])
            full.append(got[True][0])
            ratios.append(got[True][0] / got[False][0])
        print(f"pair ratios (full / forward-only): {' '.join(f'{x:.2f}' for x in ratios)}")
        print(
            f"median pair ratio {statistics.median(ratios):.3f}; best passes: forward-only {max(fwd):.1f} img/s, "
            f"full {max(full):.1f} img/s, ratio {max(full) / max(fwd):.3f} (target >= 0.85)"
        )
        print(f"total {time.perf_counter() - t0:.0f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
