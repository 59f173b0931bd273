"""Launchers: the same extraction and sweep run plainly, and as units through local, submitit-local and Ray-local.

Command:
    python bench/cluster.py
    python bench/cluster.py --images 256 --units 8      # more work per unit: the overhead's share drops

Machine: 2 CPU cores (shared host), no GPU, local disk; torch (CPU), timm, submitit 1.5, ray 2.x
(extras `slurm` and `ray`; a launcher whose package is missing is skipped with the reason).
Expected runtime: about 2-3 minutes with the defaults.
Measured (load ~4-5 from other jobs): extraction plain 1.46 s; local 1.19x (0.07 s per unit),
submitit-local 28.6x (10.1 s per unit: one Python + torch process per array task), ray-local 11.0x
(3.7 s per unit); sweep plain 0.67 s; local 1.56x (0.09 s), submitit-local 45.9x (7.5 s), ray-local
11.9x (1.8 s). Stores byte-identical and rows identical in every case.

What is compared (wall time of the whole call, planning and gathering included):
  plain           `extract_store(config)` / `probe_store(config)` in this process: the reference;
  local           `submit(..., launcher="local")`: the units one after the other in this process;
  submitit-local  `launcher="slurm"` with submitit's LocalExecutor: one process per array task, all
                  started at once (what a SLURM array costs minus the queue wait);
  ray-local       `launcher="ray"` on `ray.init(num_cpus=2)`: two CPU actors, units dealt round-robin.
The plain run is timed after an untimed warm-up run (imports, first calls). Printed per
launcher: seconds, ratio to the plain run, and the overhead per unit,
(launcher seconds - plain seconds) / units. Stores are checked byte-identical to the plain store and
rows identical to the plain sweep's (timings aside).

The extraction: random-init ViT-Tiny (12 blocks) at 32 px, last 2 layers, float16 zarr, shards of
8 samples; the sweep: linear + EP, 2 lrs, 4 layers of a synthetic store, float64, 2 epochs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "probe"))  # the probe tests' synthetic store writer


def _images(root: Path, n_train: int, n_val: int) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            path = root / split / f"c{i % 3}" / f"img_{i:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, size=(40, 40, 3), dtype=np.uint8)).save(path)
    return root


def _files(path: Path) -> dict[str, bytes]:
    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*"))
            if f.is_file() and f.name != ".epcache.lock"}


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _launchers() -> list[tuple[str, str | None]]:
    """(name, why it is skipped or None)."""
    out: list[tuple[str, str | None]] = [("local", None)]
    for name, package, extra in (("submitit-local", "submitit", "slurm"), ("ray-local", "ray", "ray")):
        try:
            __import__(package)
            out.append((name, None))
        except ImportError:
            out.append((name, f"{package} is not installed (pip install 'epcache[{extra}]')"))
    return out


def _options(name: str, units: int) -> Any:
    from epcache.launch import LaunchOptions

    if name == "local":
        return LaunchOptions(units=units, progress=False)
    if name == "submitit-local":
        from epcache.launch.submitit_backend import SlurmOptions

        slurm = SlurmOptions(cluster="local", gpus_per_task=0, cpus_per_task=1, time_min=30)
        return LaunchOptions(launcher="slurm", units=units, slurm=slurm, progress=False)
    from epcache.launch.ray_backend import RayOptions

    return LaunchOptions(launcher="ray", units=units, ray=RayOptions(gpus_per_actor=0, cpus_per_actor=1),
                         progress=False)


def _report(kind: str, plain_s: float, rows: list[tuple[str, float | None, int, str]]) -> None:
    print(f"\n{kind}: plain run {plain_s:.2f} s")
    print(f"  {'launcher':<16}{'seconds':>9}{'ratio':>8}{'overhead/unit s':>17}  check")
    for name, secs, units, check in rows:
        if secs is None:
            print(f"  {name:<16}{'-':>9}{'-':>8}{'-':>17}  {check}")
            continue
        print(f"  {name:<16}{secs:>9.2f}{secs / plain_s:>7.2f}x{(secs - plain_s) / units:>17.2f}  {check}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=96, help="training images (validation: a quarter)")
    ap.add_argument("--units", type=int, default=4)
    ap.add_argument("--tmp", default=None)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from epcache.extract import ExtractConfig, extract_store
    from epcache.launch import submit
    from epcache.probe import ProbeConfig, probe_store

    launchers = _launchers()
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp_name:
        tmp = Path(tmp_name)
        data = _images(tmp / "imgs", args.images, max(8, args.images // 4))

        def ecfg(out: Path) -> Any:
            return ExtractConfig(model="vit_tiny_patch16_224", data=data, out=out, random_init=True, img_size=32,
                                 layers="-2:", batch_size=8, workers=0, chunk_samples=4, shard_samples=8,
                                 allow_duplicate=True)

        extract_store(ecfg(tmp / "warm.zarr"), progress=False)  # imports and first-call costs land here, untimed
        plain_s, _ = _timed(lambda: extract_store(ecfg(tmp / "plain.zarr"), progress=False))
        ref = _files(tmp / "plain.zarr")
        rows: list[tuple[str, float | None, int, str]] = []
        ray_started = False
        for name, skip in launchers:
            if skip:
                rows.append((name, None, args.units, f"skipped: {skip}"))
                continue
            if name == "ray-local" and not ray_started:
                import ray

                ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
                ray_started = True
            out = tmp / f"{name}.zarr"
            secs, res = _timed(lambda n=name, o=out: submit(tmp / f"run-{n}", ecfg(o), _options(n, args.units)))
            same = "byte-identical" if _files(out) == ref else "STORE DIFFERS"
            rows.append((name, secs, len(res.plan.units), same))
        _report("extraction", plain_s, rows)

        from probe_helpers import write_store

        store = write_store(tmp / "s.zarr", n_train=192, n_val=64, layers=(0, 1, 2, 3))

        def pcfg(out: Path | None) -> Any:
            return ProbeConfig(store=str(store), head=("linear", "ep"), queries=(2,), lr=(1e-3, 3e-3),
                               layers=("all",), optimizer=("adamw",), epochs=2, warmup=1, batch_size=32,
                               dtype="float64", out=None if out is None else str(out))

        def strip(rs: Any) -> dict[str, Any]:
            return {r["id"]: {k: v for k, v in r.items() if k != "timing"} for r in rs}

        probe_store(pcfg(tmp / "warm-sweep"), progress=False)
        plain_s, single = _timed(lambda: probe_store(pcfg(tmp / "plain-sweep"), progress=False))
        rows = []
        for name, skip in launchers:
            if skip:
                rows.append((name, None, 4, f"skipped: {skip}"))
                continue
            secs, res = _timed(lambda n=name: submit(tmp / f"sweep-{n}", pcfg(None), _options(n, args.units)))
            same = "rows identical" if strip(res.gathered.rows) == strip(single.rows) else "ROWS DIFFER"
            rows.append((name, secs, len(res.plan.units), same))
        _report("sweep", plain_s, rows)
        if ray_started:
            import ray

            ray.shutdown()


if __name__ == "__main__":
    main()
