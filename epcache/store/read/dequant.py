"""Decoding quantised chunks at memory speed on CPUs (cache_layout.md §3.5, the read side).

numpy has no vector instructions for float16: ``np.multiply(codes, scales, out=<float16>)``
converts every float32 product to float16 one element at a time, which made an int8 chunk read
30x slower than an fp16 one, and a table lookup (``np.take``) widens its uint8 indices to int64
first. So decoding runs in torch, whose CPU kernels convert int8, float16 and bfloat16 to and from
float32 with SIMD instructions, over blocks of rows that stay in the CPU's cache: codes -> a float32
block -> times the scales -> cast once into the output. The output is allocated by numpy and written
through ``torch.from_numpy`` (no copy in or out); no float32 copy of the whole chunk exists.

The values are bit-for-bit those of the definition (:func:`dequantize_reference`): each is
``code * scale`` rounded once to float32 (the product of two floats, as in numpy), then once to the
output dtype with round-to-nearest-even (torch and numpy/ml_dtypes round alike). fp8 codes are
decoded without a table: the e4m3fn bits ``s eeee mmm`` shifted left by 7 in an int16 are the float16
``s 0eeee mmm0000000``, which is the e4m3 value times 2^-8 exactly, subnormals included (both formats'
subnormals have exponent field 0, and float16's bias is 15 against e4m3's 7). The 2^8 goes into the
scales (exact while ``scale * 2^8`` is finite, as every writer's ``absmax / 448`` is) or else into the
values (exact: ``|value| <= 448``), so the product is the same real number, rounded the same way.
e4m3fn's two NaN codes (0x7F, 0xFF), which writers never store (§3.5 refuses non-finite tokens and
clips to ±448), are mapped to NaN as the definition says.
"""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np

from epcache.store.layout.quant import QuantSpec, dequantize_reference
from epcache.store.layout.tokens import to_torch

__all__ = ["BLOCK_ELEMENTS", "dequantize", "dequantize_blocked"]

BLOCK_ELEMENTS = 1 << 19  # float32 working block: 2 MiB, stays in L2 (bench/dequantize.py)
_MAX_TIMES_256 = float(np.finfo(np.float32).max) / 256  # scales up to this times 2^8 stay finite
_FP8_MAX_OVER_256 = 448.0 / 256  # e4m3fn's largest finite value, times 2^-8
# output dtype -> the smallest chunk (values) decoded by torch: below it torch's per-call cost (~20 us) loses
# to numpy, which has SIMD float32 arithmetic but no SIMD float16 (bench/dequantize.py --small)
_TORCH_FROM = {np.dtype(np.float16): 1 << 13, np.dtype(ml_dtypes.bfloat16): 1 << 13, np.dtype(np.float32): 1 << 17}


def dequantize(spec: QuantSpec, codes: np.ndarray, scales: np.ndarray, out_dtype: np.dtype) -> np.ndarray:
    """``codes`` ``[n, V, T, D]`` times their scales, written once into ``out_dtype``.

    ``scales`` are those of the chunk (``[D]`` per channel, ``[n, V, T]`` per token). float16,
    bfloat16 and float32 outputs of chunks that are not tiny take the blocked torch path; the rest the
    numpy definition (same bits).
    """
    out_dtype = np.dtype(out_dtype)
    if codes.ndim == 0 or codes.size < _TORCH_FROM.get(out_dtype, codes.size + 1):
        return dequantize_reference(spec, codes, scales, out_dtype)
    return dequantize_blocked(spec, codes, scales, out_dtype)


def dequantize_blocked(spec: QuantSpec, codes: np.ndarray, scales: np.ndarray, out_dtype: np.dtype) -> np.ndarray:
    """The torch kernel of :func:`dequantize` (float16, bfloat16 or float32 ``out_dtype``), at any size."""
    import torch

    out = np.empty(codes.shape, out_dtype)
    d = codes.shape[-1]
    flat_codes = codes.reshape(-1, d)
    if not flat_codes.flags.c_contiguous or not flat_codes.flags.writeable:  # torch.from_numpy needs both
        flat_codes = np.array(flat_codes, order="C")  # 1 byte per value: cheap next to the decode
    c = torch.from_numpy(flat_codes.view(np.int8))
    scale = np.ascontiguousarray(scales, np.float32)
    fp8 = spec.code_dtype != "int8"
    unscaled = fp8 and not np.abs(scale).max(initial=0.0) <= _MAX_TIMES_256  # 2^8 folds into the scales exactly
    if fp8 and not unscaled:
        scale = scale * np.float32(256.0)
    s = torch.from_numpy(scale.reshape((1, d) if spec.scales == "channel" else (-1, 1)))
    o = to_torch(out).view(-1, d)
    rows = max(1, BLOCK_ELEMENTS // d)
    direct = out_dtype == np.float32  # decode in place in the output: no block buffer
    buf = None if direct else torch.empty((min(rows, len(c)), d), dtype=torch.float32)
    bits = torch.empty((min(rows, len(c)), d), dtype=torch.int16) if fp8 else None
    for i in range(0, len(c), rows):
        n = min(rows, len(c) - i)
        b = o[i : i + n] if direct else buf[:n]  # type: ignore[index]
        if bits is None:
            b.copy_(c[i : i + n])
        else:
            _fp8_over_256(c[i : i + n], bits[:n], b)
            if unscaled:
                b.mul_(256.0)
        b.mul_(s if spec.scales == "channel" else s[i : i + n])
        if not direct:
            o[i : i + n].copy_(b)
    return out



def _fp8_over_256(codes: Any, bits: Any, out: Any) -> None:
    """float32 ``out`` = e4m3fn ``codes`` (an int8 tensor of their bits) times 2^-8, via float16 bits."""
    import torch

    bits.copy_(codes)  # sign-extended: after the shift bits 15 and 14 both hold the sign; clear 14
    bits.bitwise_left_shift_(7).bitwise_and_(~0x4000)
    out.copy_(bits.view(torch.float16))
    lo, hi = (float(v) for v in out.aminmax())  # one pass; only the NaN codes land beyond ±448 / 2^8
    if lo < -_FP8_MAX_OVER_256 or hi > _FP8_MAX_OVER_256:
        out.masked_fill_(out.abs() > _FP8_MAX_OVER_256, float("nan"))
