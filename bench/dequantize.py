"""Decoding one quantised chunk: the blocked torch kernel vs the numpy definition, side by side.

Command (from the repository root)::

    python bench/dequantize.py              # ~20 s; --threads N for torch's intra-op threads (default 1)
    python bench/dequantize.py --blocks     # also sweep _dequant.BLOCK_ELEMENTS (2^16 .. 2^22)
    python bench/dequantize.py --small      # also numpy vs kernel on small chunks (where _TORCH_FROM comes from)

Machine: any CPU; the README's figures are from the shared 2-core machine (under load, so the ratios,
measured in one run, are what to read). Expected: the kernel >= 5x the numpy definition into float16
(numpy converts float32 -> float16 one element at a time) and >= 1.5x into float32; every output
bit-identical to the definition (checked here on the benchmarked chunk, and on every code value in
tests/store/test_dequantize.py).

What it measures: a ViT-B/16-shaped chunk, ``[16, 1, 197, 768]`` float16 tokens with 4 outlier
channels (100x), quantised by ``quantize_chunk`` with each scheme; then best-of-7 wall time of
``dequantize_reference`` (numpy) and ``dequantize`` (the reader's path) into float16, bfloat16 and
float32, and of a plain copy of the fp16 chunk (the floor: reading an fp16 store copies at least this).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

os.environ.setdefault("OMP_NUM_THREADS", "1")

import ml_dtypes
import numpy as np

from epcache.store.layout.quant import QUANTIZATIONS, dequantize_reference, quantize_chunk
from epcache.store.read import dequant as _dequant

SHAPE = (16, 1, 197, 768)
OUTS = {"float16": np.dtype(np.float16), "bfloat16": np.dtype(ml_dtypes.bfloat16), "float32": np.dtype(np.float32)}


def best_ms(fn: Callable[[], object], reps: int = 7) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the readers use torch's default)")
    ap.add_argument("--blocks", action="store_true", help="also sweep BLOCK_ELEMENTS")
    ap.add_argument("--small", action="store_true", help="also numpy vs kernel on chunks of 2^11 .. 2^19 values")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(SHAPE, np.float32) * np.r_[np.full(4, 100.0), np.ones(SHAPE[-1] - 4)]).astype(np.float16)
    floor = best_ms(lambda: x.copy())
    print(f"chunk {SHAPE}, fp16 copy {floor:.2f} ms, torch threads {args.threads}")
    print(f"{'scheme':<13} {'into':<9} {'numpy ms':>9} {'kernel ms':>9} {'speed-up':>8} {'x copy':>7}  identical")
    for name, spec in QUANTIZATIONS.items():
        codes, scales = quantize_chunk(spec, x)
        for label, dt in OUTS.items():
            ref = dequantize_reference(spec, codes, scales, dt)
            new = _dequant.dequantize(spec, codes, scales, dt)
            same = np.array_equal(ref.view(np.uint8), new.view(np.uint8))
            t_ref = best_ms(lambda s=spec, c=codes, sc=scales, d=dt: dequantize_reference(s, c, sc, d), reps=3)
            t_new = best_ms(lambda s=spec, c=codes, sc=scales, d=dt: _dequant.dequantize(s, c, sc, d))
            ratios = f"{t_ref / t_new:7.1f}x {floor / t_new:6.2f}x"
            print(f"{name:<13} {label:<9} {t_ref:9.2f} {t_new:9.2f} {ratios}  {same}")
    if args.blocks:
        default = _dequant.BLOCK_ELEMENTS
        print("\nBLOCK_ELEMENTS sweep (kernel ms into float16; * = the default)")
        for log2 in range(16, 23):
            _dequant.BLOCK_ELEMENTS = 1 << log2
            cells = []
            for spec in QUANTIZATIONS.values():
                codes, scales = quantize_chunk(spec, x)
                ms = best_ms(lambda: _dequant.dequantize(spec, codes, scales, np.float16))  # noqa: B023
                cells.append(f"{spec.name} {ms:6.2f}")
            print(f"2^{log2}{'*' if 1 << log2 == default else ' '}  " + "   ".join(cells))
        _dequant.BLOCK_ELEMENTS = default
    if args.small:
        print("\nsmall chunks [n, 1, 10, 64] (numpy ms / kernel ms; dequantize takes the kernel from 2^13 values into")
        print("float16/bfloat16 and from 2^17 into float32)")
        for log2 in range(11, 20, 2):
            xs = rng.standard_normal(((1 << log2) // 640 or 1, 1, 10, 64), np.float32).astype(np.float16)
            cells = []
            for spec in QUANTIZATIONS.values():
                codes, scales = quantize_chunk(spec, xs)
                for dt in (np.dtype(np.float16), np.dtype(np.float32)):
                    t_ref = best_ms(lambda: dequantize_reference(spec, codes, scales, dt), reps=20)  # noqa: B023
                    t_new = best_ms(lambda: _dequant.dequantize_blocked(spec, codes, scales, dt), reps=20)  # noqa: B023
                    cells.append(f"{spec.name[:6]}>{dt.name[:2]}{dt.itemsize * 8} {t_ref:.3f}/{t_new:.3f}")
            print(f"{xs.size:>7} " + "  ".join(cells))


if __name__ == "__main__":
    main()
