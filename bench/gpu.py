"""GPU figures: extraction with decode on CPU vs GPU vs forward only; the probe's fused sweep.

Command:
    python bench/gpu.py --json gpu.json                       # the real run: one CUDA GPU, < 6 min
    python bench/gpu.py --device cpu --smoke --json smoke.json  # every section, tiny, on the CPU

Machine for the real run: one H100 (or any CUDA GPU), 16 CPU cores; torch with CUDA, timm, zarr.
Expected runtime: ~4-5 min on an H100 (the default sizes; `--budget-s` skips whatever would start
after that many seconds). The smoke run takes ~1-3 min on 2 CPU cores and only checks that every
section runs; its figures mean nothing.

What it measures, all with a random-init `vit_base_patch16_224` (no weights needed):
  (a) extraction of `--images` generated JPEGs (smooth random images ~256-320 px, 4 classes) at
      `--img-size` px, last layer, float16 store, fp16 autocast on the GPU:
        forward only  the backbone's forward on synthetic tensors already on the GPU (the ceiling);
        decode cpu    `extract_store()`: JPEG decoding in DataLoader workers, forward, store writes;
        decode gpu    `extract_store()` with `ExtractConfig(decode="gpu")` where this build has it.
      images/s of `extract_store()` are its own figure (wall time of the extraction loop, worker start-up
      included, as a user sees it); ratio = images/s / forward-only images/s.
  (b) the probe: fused trainer throughput (one training epoch after a warm-up of a few steps, which
      also compiles) of 1 EP config (queries 32) vs 64 fused EP configs (queries 8 and 32 x 32 lrs)
      in float32 vs `--amp bf16`, and with `--compile` for the 64 configs; tokens of a store of
      `--probe-samples` generated ViT-B samples (197 x 768 float16, class-structured noise written
      with the store API), held in RAM in float16 and copied to the GPU batch by batch (pinned,
      one batch ahead) as `epcache probe --in-memory` does. images/s counts batch samples through
      all configs at once; config-images/s = images/s x configs; ratios: vs the same case in
      float32, and (64 configs) config-images/s vs the 1-config case of the same precision.
  (c) peak GPU memory of every case (torch.cuda.max_memory_allocated, reset before each case).

Every case runs in its own try/except: a failure prints its error and the script goes on; the
table (also written as JSON with `--json`) marks it. Nothing is written outside a temp directory
(`--tmp`), which is removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import multiprocessing as mp
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

MODEL = "vit_base_patch16_224"
Row = dict[str, Any]


def main() -> int:
    args = parse_args()
    import torch

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device; use --device cpu --smoke for a dry check")
        return 2
    t_start = time.perf_counter()
    info = machine_info(torch, device)
    print(info["line"])
    work = Path(tempfile.mkdtemp(prefix="epcache-gpu-bench-", dir=args.tmp))
    rows: list[Row] = []
    try:
        budget = Budget(t_start, args.budget_s)
        run_case(rows, budget, "setup", "JPEGs", lambda: make_images(work / "data", args.images, args.img_size))
        for case, fn in extraction_cases(args, device, work):
            run_case(rows, budget, "extract", case, fn)
        probe_cases(rows, budget, args, device, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    try:  # the rows are already printed one by one; the summary must not lose them
        add_ratios(rows)
        print("\n" + format_table(rows))
    except Exception:
        traceback.print_exc(limit=4)
    total = time.perf_counter() - t_start
    print(f"total {total:.0f} s")
    if args.json is not None:
        doc = {"machine": info, "args": {k: str(v) for k, v in vars(args).items()}, "seconds": total, "rows": rows}
        args.json.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        print(f"table as JSON: {args.json}")
    return 0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (the real run) or cpu (with --smoke)")
    p.add_argument("--smoke", action="store_true", help="every section tiny (checks that it runs, nothing more)")
    p.add_argument("--json", type=Path, default=None, help="also write the table here as JSON")
    p.add_argument("--images", type=int, default=None, help="generated JPEGs (default 8192; smoke 32)")
    p.add_argument("--img-size", type=int, default=None, help="backbone input size (default 224; smoke 32)")
    p.add_argument("--batch-size", type=int, default=None, help="extraction batch (default 256; smoke 8)")
    p.add_argument("--workers", type=int, default=None, help="decoding workers (default: the CPU cores; smoke 2)")
    p.add_argument("--probe-samples", type=int, default=None, help="token store size (default 16384; smoke 256)")
    p.add_argument("--probe-batch", type=int, default=None, help="probe batch (default 1024; smoke 32)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile cases")
    p.add_argument("--budget-s", type=float, default=330.0, help="cases that would start later are skipped")
    p.add_argument("--tmp", type=Path, default=None, help="where the JPEGs and stores go (removed at the end)")
    a = p.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    small = a.smoke
    a.images = a.images or (32 if small else 8192)
    a.img_size = a.img_size or (32 if small else 224)
    a.batch_size = a.batch_size or (8 if small else 256)
    a.workers = a.workers if a.workers is not None else (2 if small else cores)
    a.probe_samples = a.probe_samples or (256 if small else 16384)
    a.probe_batch = a.probe_batch or (32 if small else 1024)
    return a


# ---------------------------------------------------------------------------------------------- bookkeeping


@dataclasses.dataclass
class Budget:
    t0: float
    seconds: float

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.t0)


def run_case(rows: list[Row], budget: Budget, section: str, case: str, fn: Callable[[], Row | None]) -> None:
    """Run one case; a failure (or no time left) becomes a row with an error, never an exit."""
    row: Row = {"section": section, "case": case}
    if budget.left() <= 0:
        row["error"] = f"skipped: the {budget.seconds:.0f} s budget is spent"
        print(f"[{section}] {case}: {row['error']}")
        rows.append(row)
        return
    t = time.perf_counter()
    try:
        got = fn() or {}
        row.update(got)
    except Exception as e:  # the bench must get through: report and go on
        row["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        traceback.print_exc(limit=4)
    row["seconds"] = round(time.perf_counter() - t, 2)
    shown = {k: v for k, v in row.items() if k not in ("section", "case")}
    print(f"[{section}] {case}: {shown}", flush=True)
    rows.append(row)


def reset_peak(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mb(device: Any) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None


def sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------- (a) extraction


def make_images(root: Path, n: int, img_size: int) -> Row:
    """ImageFolder ``train/classK/*.jpg``: smooth random JPEGs (noise would inflate decode time)."""
    t = time.perf_counter()
    lo = max(img_size, 32)
    jobs = [(root, i, lo) for i in range(n)]
    with mp.get_context("spawn").Pool(min(len(jobs), os.cpu_count() or 1)) as pool:
        pool.map(_one_image, jobs, chunksize=max(1, n // 64))
    return {"images": n, "note": f"generated in {time.perf_counter() - t:.1f} s"}


def _one_image(job: tuple[Path, int, int]) -> None:
    from PIL import Image

    root, i, lo = job
    rng = np.random.default_rng(i)
    h, w = int(rng.integers(lo, lo * 10 // 7 + 1)), int(rng.integers(lo, lo * 10 // 7 + 1))
    small = rng.integers(0, 256, size=(h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    path = root / "train" / f"class{i % 4}" / f"{i:06d}.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR).save(path, quality=90)


def extraction_cases(args: argparse.Namespace, device: Any, work: Path) -> list[tuple[str, Callable[[], Row]]]:
    return [
        ("forward only", lambda: forward_only(args, device)),
        ("decode cpu", lambda: extract_pass(args, device, work, decode="cpu")),
        ("decode gpu", lambda: extract_pass(args, device, work, decode="gpu")),
    ]


def forward_only(args: argparse.Namespace, device: Any) -> Row:
    """The backbone alone on tensors already on the device, as the extractor calls it (last layer)."""
    import timm
    import torch

    reset_peak(device)
    model = timm.create_model(MODEL, pretrained=False, img_size=args.img_size).to(device).eval()
    last = len(model.blocks) - 1
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
    amp = torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else contextlib.nullcontext()

    def step() -> None:
        with torch.inference_mode(), amp:
            out = model.forward_intermediates(x, indices=[last], return_prefix_tokens=True, stop_early=True,
                                              output_fmt="NLC", intermediates_only=True)
            torch.cat([out[0][1], out[0][0]], dim=1).half()

    for _ in range(3):
        step()
    sync(device)
    steps = max(2, args.images // args.batch_size)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    dt = time.perf_counter() - t
    return {"images_per_s": round(steps * args.batch_size / dt, 1), "peak_gpu_mb": peak_mb(device),
            "note": f"{steps} batches of {args.batch_size}, fp16 autocast" if device.type == "cuda" else "fp32"}


def extract_pass(args: argparse.Namespace, device: Any, work: Path, *, decode: str) -> Row:
    """One ``extract_store()`` into a fresh zarr store (last layer, float16)."""
    from epcache.extract import ExtractConfig, extract_store

    fields = {f.name for f in dataclasses.fields(ExtractConfig)}
    extra: dict[str, Any] = {}
    if decode == "gpu":
        if "decode" not in fields:
            return {"error": "decode gpu: not in this build (ExtractConfig has no decode field)"}
        extra["decode"] = "gpu"
    out = work / f"extract-{decode}.zarr"
    cfg = ExtractConfig(model=MODEL, data=work / "data", out=out, splits={"train": "train"}, layers="last",
                        random_init=True, batch_size=args.batch_size, workers=args.workers, img_size=args.img_size,
                        dtype="float16", device=str(device), amp="fp16" if device.type == "cuda" else None,
                        overwrite=True, allow_duplicate=True, **extra)
    reset_peak(device)
    result = extract_store(cfg, progress=False)
    shutil.rmtree(out, ignore_errors=True)
    return {"images_per_s": round(result.images_per_s, 1), "peak_gpu_mb": peak_mb(device),
            "note": f"{sum(result.samples.values())} images, {args.workers} workers, writer stall "
                    f"{result.writer_wait_s:.1f} s"}


# ---------------------------------------------------------------------------------------------- (b) probe


def probe_cases(rows: list[Row], budget: Budget, args: argparse.Namespace, device: Any, work: Path) -> None:
    state: dict[str, Any] = {}
    run_case(rows, budget, "setup", "token store", lambda: token_store(args, device, work, state))
    if "source" not in state:
        return
    cases: list[tuple[int, str, bool] | None] = [(1, "none", False), (1, "bf16", False), (64, "none", False),
                                                 (64, "bf16", False), None]  # None: probe_store() end to end
    if not args.no_compile:  # last: the slowest to start and the most likely to fail
        cases += [(64, "none", True), (64, "bf16", True)]
    for case in cases:
        if case is None:  # the whole `probe_store()` path once (rows, holdout and eval passes, amp=auto)
            run_case(rows, budget, "e2e", "probe(), amp auto", lambda: probe_end_to_end(args, device, state))
            continue
        k, amp, comp = case
        name = f"{k} config{'s' if k > 1 else ''}, {'fp32' if amp == 'none' else amp}{', compile' if comp else ''}"
        run_case(rows, budget, "probe", name, lambda k=k, amp=amp, comp=comp: probe_case(args, device, state,
                                                                                         k, amp, comp))


def token_store(args: argparse.Namespace, device: Any, work: Path, state: dict[str, Any]) -> Row:
    """A store of ViT-B-shaped tokens (class direction + shared noise bank), then held in RAM."""
    import torch

    from epcache.probe.config.probe_config import ProbeConfig
    from epcache.probe.data.layers import make_read_spec
    from epcache.probe.data.stream import MemorySource
    from epcache.probe.sweep.grid import expand_sweep
    from epcache.store import BackboneMeta, SplitSpec, StoreMeta, TokenLayout, create_store, open_store

    t = time.perf_counter()
    side = args.img_size // 16
    n, dim, classes = args.probe_samples, 768, 100
    meta = StoreMeta(
        backbone=BackboneMeta(MODEL, "random-init", "bench", "random-init", None, 12),
        layout=TokenLayout(num_prefix=1, cls_index=0, num_registers=0, grid=(side, side)),
        layers=(11,), final_norm=False, dtype="float16", dim=dim, num_tokens=1 + side * side,
        preprocessing={"input_size": [3, args.img_size, args.img_size]},
    )
    rng = np.random.default_rng(0)
    bank = rng.standard_normal((64, meta.num_tokens, dim), dtype=np.float32).astype(np.float16)
    dirs = (2.0 * rng.standard_normal((classes, dim))).astype(np.float16)
    path = work / "tokens.zarr"
    names = [f"c{i}" for i in range(classes)]
    with create_store(path, meta, overwrite=True) as st:
        for split, size in (("train", n), ("val", max(classes, n // 16))):
            y = np.arange(size) % classes
            st.add_split(SplitSpec(split, y, [f"{split}/{i}" for i in range(size)], names), chunk_samples=16)
            y = y[st.read_order(split)]
            for b in range(st.split(split).num_blocks):
                lo, hi = st.block_range(split, b)
                x = bank[rng.integers(len(bank), size=hi - lo)]
                x += 0.5 * dirs[y[lo:hi]][:, None, :]  # every token leans towards its class
                st.write_block(split, 11, b, x[:, None])
    written = time.perf_counter() - t
    st = open_store(path)
    cfg = ProbeConfig(store=str(path), head="ep", queries=32, lr=1e-3, device=str(device), holdout=0)
    runs = expand_sweep(cfg, st.meta, num_classes=classes, store_provenance=st.provenance,
                        eval_provenance=st.provenance, n_train=n)
    plan = make_read_spec(runs, st.meta.layout, torch.float32)
    rows = np.arange(n)
    convert = torch.float32 if device.type == "cpu" else None  # as `probe --in-memory`: fp16 travels to a GPU
    state.update(store=st, path=path, plan=plan, rows=rows, labels=st.read_labels("train"), classes=classes,
                 source=MemorySource.load(st, "train", 11, plan, rows, all_views=True, dtype=convert))
    return {"images": n, "note": f"{n} x {meta.num_tokens} x {dim} fp16 written in {written:.1f} s, "
                                 f"held in RAM after {time.perf_counter() - t:.1f} s"}


def probe_case(args: argparse.Namespace, device: Any, state: dict[str, Any], k: int, amp: str, comp: bool) -> Row:
    """One fused-trainer epoch of ``k`` EP configs, timed after a few warm-up steps."""
    import torch

    from epcache.probe.config.probe_config import ProbeConfig
    from epcache.probe.data.stream import BatchStream
    from epcache.probe.sweep.geometry import HeadGeometry
    from epcache.probe.sweep.grid import expand_sweep
    from epcache.probe.train.trainer import GroupTrainer

    st, B = state["store"], args.probe_batch
    lrs = (1e-3,) if k == 1 else tuple(float(x) for x in np.geomspace(1e-4, 1e-1, 32))
    cfg = ProbeConfig(store=st.location, head="ep", queries=(32,) if k == 1 else (8, 32), lr=lrs, optimizer="lars",
                      batch_size=B, epochs=2, warmup=0.5, min_steps=0, holdout=0, device=str(device), amp=amp,
                      compile=comp)
    runs = expand_sweep(cfg, st.meta, num_classes=state["classes"], store_provenance=st.provenance,
                        eval_provenance=st.provenance, n_train=len(state["rows"]))
    assert len(runs) == k, (len(runs), k)
    lay = st.meta.layout
    geometry = HeadGeometry(st.meta.dim, state["classes"], st.meta.num_tokens, lay.num_patches, lay.num_prefix)

    def stream(rows: np.ndarray) -> BatchStream:
        return BatchStream(state["source"], rows, state["labels"], batch_size=B, device=device,
                           dtype=torch.float32, data_seed=0)

    reset_peak(device)
    trainer = GroupTrainer(runs, geometry, state["plan"], device=device, dtype=torch.float32,
                           amp=runs[0].settings.amp, compile=comp)
    full = stream(state["rows"])
    steps = full.steps_per_epoch()
    total = 4 * steps
    t = time.perf_counter()
    trainer.train_epoch(stream(state["rows"][: 3 * B]), 0, warmup_steps=steps, total_steps=total)  # warm-up
    sync(device)
    warm = time.perf_counter() - t
    t = time.perf_counter()
    trainer.train_epoch(full, 1, warmup_steps=steps, total_steps=total)
    sync(device)
    dt = time.perf_counter() - t
    loss = trainer.train_loss[0][-1]
    ips = steps * B / dt
    del trainer
    if comp:
        torch._dynamo.reset()
    return {"configs": k, "amp": amp, "compile": comp, "images_per_s": round(ips, 1),
            "config_images_per_s": round(ips * k, 1), "peak_gpu_mb": peak_mb(device),
            "note": f"{steps} steps of {B}, warm-up {warm:.1f} s, reader wait {full.wait_seconds:.2f} s, "
                    f"loss {loss:.3f}" + ("" if math.isfinite(loss) else " (diverged)")}


def probe_end_to_end(args: argparse.Namespace, device: Any, state: dict[str, Any]) -> Row:
    """``probe_store()`` itself, 2 EP configs x 1 epoch, amp auto, in memory: the CUDA path a user runs."""
    from epcache.probe import ProbeConfig, probe_store

    cfg = ProbeConfig(store=str(state["path"]), head="ep", queries=8, lr=(1e-3, 3e-3), optimizer="lars",
                      batch_size=args.probe_batch, epochs=1, min_steps=0, holdout=0.1, device=str(device),
                      in_memory=True)
    reset_peak(device)
    result = probe_store(cfg, progress=False)
    row = result.rows[0]
    t = row["timing"]
    return {"configs": len(result.rows), "amp": row["protocol"]["amp"], "compile": False,
            "images_per_s": round(t["steps_run"] * args.probe_batch / t["train_seconds"], 1),
            "peak_gpu_mb": peak_mb(device),
            "note": f"amp {row['protocol']['amp']} ({row['protocol']['amp_rule']}); group {t['group_seconds']:.1f} s "
                    f"incl. loading and scoring; eval top-1 {row['metrics']['eval']['top1']:.3f}"}


# ---------------------------------------------------------------------------------------------- the table


def add_ratios(rows: list[Row]) -> None:
    """Extraction: vs forward only. Probe: vs the same case in fp32; 64 configs: vs 1 config, same precision."""
    by = {(r["section"], r["case"]): r for r in rows}
    fwd = by.get(("extract", "forward only"), {}).get("images_per_s")
    for r in rows:
        ips = r.get("images_per_s")
        if ips is None:
            continue
        if r["section"] == "extract" and r["case"] != "forward only" and fwd:
            r["ratio"] = f"{ips / fwd:.2f} x forward only"
        if r["section"] == "probe":
            parts: list[str] = []
            twin = by.get(("probe", r["case"].replace("bf16", "fp32")), {}).get("images_per_s")
            if r.get("amp") == "bf16" and twin:
                parts.append(f"{ips / twin:.2f} x fp32")
            one = by.get(("probe", f"1 config, {'fp32' if r.get('amp') == 'none' else 'bf16'}"), {})
            if r.get("configs", 1) > 1 and one.get("images_per_s") and r.get("config_images_per_s"):
                parts.append(f"{r['config_images_per_s'] / one['images_per_s']:.1f} x 1-config config-img/s")
            r["ratio"] = "; ".join(parts)


def format_table(rows: list[Row]) -> str:
    head = f"{'section':8} {'case':26} {'images/s':>10} {'config-img/s':>13} {'peak GPU MB':>11}  ratio / note"
    lines = [head, "-" * len(head)]
    for r in rows:
        tail = r.get("error") or "; ".join(x for x in (r.get("ratio"), r.get("note")) if x)
        lines.append(f"{r['section']:8} {r['case']:26} {_num(r, 'images_per_s', 10)} "
                     f"{_num(r, 'config_images_per_s', 13)} {_num(r, 'peak_gpu_mb', 11)}  {tail}")
    return "\n".join(lines)


def _num(row: Row, key: str, width: int) -> str:
    v = row.get(key)
    return f"{v:>{width},.0f}" if isinstance(v, int | float) else " " * (width - 1) + "-"


def machine_info(torch: Any, device: Any) -> dict[str, Any]:
    import timm

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {"gpu": gpu, "cpu_cores": cores, "torch": torch.__version__, "timm": timm.__version__,
            "python": platform.python_version(), "device": str(device)}
    info["line"] = (f"device {device} ({gpu}), {cores} CPU cores; torch {torch.__version__}, timm {timm.__version__}, "
                    f"python {info['python']}")
    return info


if __name__ == "__main__":
    sys.exit(main())
