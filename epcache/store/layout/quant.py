"""Quantised token storage: int8 or fp8 codes plus float32 scales (cache_layout.md §3.5).

fp16 activations compress by less than 10% losslessly, so real savings are lossy. A quantised
store keeps codes in the token array and the scales that turn them back into values in a
sibling array, chunked like the codes along N, so every chunk is self-contained: a writer
quantises block by block (extraction streams), and a reader needs one chunk of codes and the
scales of that chunk, nothing global. Three schemes:

- ``int8-channel``: one absmax scale per channel per chunk (``scales`` ``[num_chunks, D]``).
  ViT tokens have outlier channels (100x the typical magnitude); a scale per channel keeps
  them from flattening the others.
- ``int8-token``: one absmax scale per (sample, view, token) (``scales`` ``[N, V, T]``).
- ``fp8-e4m3``: float8 e4m3fn bits (stored as uint8) with a per-channel, per-chunk scale that
  maps each channel's absmax to 448, the format's largest finite value.

Codes are written from float32 arithmetic; reads multiply codes by scales in float32 and round
once into the logical dtype (``read/dequant.py`` does it blockwise in torch, at memory speed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import ml_dtypes
import numpy as np

from epcache.errors import ConfigError, NonFiniteFeaturesError

__all__ = [
    "DEFAULT_INT8",
    "QUANTIZATIONS",
    "QUANT_FORMAT_VERSION",
    "QuantSpec",
    "dequantize_reference",
    "parse_quantization",
    "quant_spec",
    "quantize_chunk",
    "resolve_quantization",
    "token_attributes",
]

QUANT_FORMAT_VERSION = "1.2"  # quantised stores only, so unquantised ones stay readable by 1.1 readers
DEFAULT_INT8 = "int8-channel"  # what `--quantize int8` means: measured by bench/quantize.py (README)
SCALE_DTYPE = "float32"


@dataclass(frozen=True)
class QuantSpec:
    """One quantisation scheme: the codes' storage dtype and where its scales live."""

    name: str
    code_dtype: str  # numpy dtype of the stored codes ("int8", or "uint8" holding float8_e4m3fn bits)
    codes_are: str  # what the code bytes mean: "int8" or "float8_e4m3fn" (the `epcache_codes` attribute)
    scales: Literal["channel", "token"]  # per (chunk, channel) or per (sample, view, token)
    qmax: float  # the largest code magnitude the absmax maps to

    @property
    def code_bytes(self) -> int:
        return 1


QUANTIZATIONS: dict[str, QuantSpec] = {
    "int8-channel": QuantSpec("int8-channel", "int8", "int8", "channel", 127.0),
    "int8-token": QuantSpec("int8-token", "int8", "int8", "token", 127.0),
    "fp8-e4m3": QuantSpec("fp8-e4m3", "uint8", "float8_e4m3fn", "channel", 448.0),
}
_ALIASES = {"int8": DEFAULT_INT8, "fp8": "fp8-e4m3", "none": None}
_FP8 = np.dtype(ml_dtypes.float8_e4m3fn)


def resolve_quantization(value: str | None) -> str | None:
    """A user's ``--quantize`` value -> a stored scheme name (None: no quantisation).

    Raises:
        ConfigError: an unknown value, naming the accepted ones.
    """
    if value is None:
        return None
    key = value.strip().lower()
    if key in _ALIASES:
        return _ALIASES[key]
    if key in QUANTIZATIONS:
        return key
    known = ", ".join(["int8", *QUANTIZATIONS, "fp8", "none"])
    raise ConfigError(f"unknown quantisation {value!r}; use one of {known}")


def parse_quantization(data: Any) -> str | None:
    """The optional ``quantization`` key of a root document; only a 1.2 document may carry one."""
    q = data.get("quantization")
    if q is None:
        return None
    if not isinstance(q, str):
        raise TypeError("quantization must be a string or null")
    if data.get("format_version") != QUANT_FORMAT_VERSION:
        raise ValueError(f"quantization {q!r} in a format {data.get('format_version')!r} document (needs 1.2)")
    return q


def quant_spec(name: str) -> QuantSpec:
    try:
        return QUANTIZATIONS[name]
    except KeyError:
        raise ConfigError(f"unknown quantisation {name!r}; known: {', '.join(QUANTIZATIONS)}") from None


def token_attributes(meta: Any) -> dict[str, str]:
    """Attributes of a token array (format 1.1+): its logical dtype, and for codes what they are."""
    if meta.quantization is None:
        return {"epcache_dtype": meta.dtype}
    spec = QUANTIZATIONS[meta.quantization]
    return {"epcache_dtype": meta.dtype, "epcache_codes": spec.codes_are, "epcache_quantization": spec.name}


def scales_shape(
    spec: QuantSpec, *, rows: int, chunk_samples: int, views: int, tokens: int, dim: int
) -> tuple[int, ...]:
    """Shape of the scales of ``rows`` samples (a whole split, or one block starting on a chunk)."""
    if spec.scales == "channel":
        return (-(-rows // chunk_samples), dim)
    return (rows, views, tokens)


def quantize_chunk(spec: QuantSpec, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes and scales of one chunk ``x`` ``[n, V, T, D]`` (any float dtype).

    int8: ``code = rint(x * (1 / scale))`` with ``scale = absmax / 127``, so ``|x - code * scale| <= scale / 2``.
    fp8: ``code = e4m3(x * (1 / scale))`` with ``scale = absmax / 448`` (round to nearest even).
    Every step in float32 (cache_layout.md §3.5 spells each one out). A zero absmax gives scale 0 and
    codes 0 (decoded exactly as 0).

    Raises:
        NonFiniteFeaturesError: inf or nan in ``x`` (a scale cannot represent them).
    """
    xf = np.asarray(x, dtype=np.float32)
    if spec.scales == "channel":
        absmax = np.abs(xf).max(axis=(0, 1, 2)) if xf.size else np.zeros(xf.shape[-1], np.float32)  # (D,)
        scale = (absmax / np.float32(spec.qmax)).astype(np.float32)
        bcast = scale
    else:
        absmax = np.abs(xf).max(axis=-1) if xf.shape[-1] else np.zeros(xf.shape[:-1], np.float32)  # (n, V, T)
        scale = (absmax / np.float32(spec.qmax)).astype(np.float32)
        bcast = scale[..., None]
    if not np.isfinite(absmax).all():
        raise NonFiniteFeaturesError(
            "tokens contain inf or nan, which a quantised store cannot hold; extract with --dtype float32 "
            "(or bfloat16) to find where they come from, or without --quantize"
        )
    # the reciprocal, then a product (cache_layout.md §3.5 states this order: x / scale differs by one code in a
    # few values); 0 where it is not finite: a zero scale, or one so small that 1 / scale overflows float32,
    # whose codes are then 0 rather than nan (x * inf with x = 0) or a clipped inf
    with np.errstate(divide="ignore", over="ignore"):
        inv = np.float32(1.0) / bcast
    inv[~np.isfinite(inv)] = 0
    y = xf * inv
    if spec.code_dtype == "int8":
        codes = np.clip(np.rint(y), -127, 127).astype(np.int8)
    else:
        codes = np.clip(y, -spec.qmax, spec.qmax).astype(_FP8).view(np.uint8)
    return codes, scale


def dequantize_reference(spec: QuantSpec, codes: np.ndarray, scales: np.ndarray, out_dtype: np.dtype) -> np.ndarray:
    """``codes`` ``[n, V, T, D]`` times their scales in float32, rounded once into ``out_dtype``: the definition.

    ``scales`` are those of the chunk (``[D]`` per channel, ``[n, V, T]`` per token). Plain numpy,
    slow for float16 (no SIMD conversions): readers use ``_dequant.dequantize``, which gives the same
    bits and falls back to this for dtypes torch does not map.
    """
    out = np.empty(codes.shape, out_dtype)
    s = scales.reshape(-1) if spec.scales == "channel" else scales[..., None]
    if spec.code_dtype == "int8":
        np.multiply(codes, s, out=out, casting="unsafe")
    else:  # every e4m3 value is exact in float16, bfloat16 and float32: decode by table, then scale in place
        np.take(_fp8_table(np.dtype(out_dtype)), codes.view(np.uint8), out=out)
        np.multiply(out, s, out=out, casting="unsafe")
    return out


_TABLES: dict[str, np.ndarray] = {}


def _fp8_table(dtype: np.dtype) -> np.ndarray:
    if dtype.str not in _TABLES:
        _TABLES[dtype.str] = np.arange(256, dtype=np.uint8).view(_FP8).astype(np.float32).astype(dtype)
    return _TABLES[dtype.str]
