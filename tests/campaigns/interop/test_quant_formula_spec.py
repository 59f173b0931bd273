"""The quantisation formula of cache_layout.md §3.5, implemented from the text with numpy alone.

A writer that follows the text must store the very codes and scales epcache stores, byte for byte:
two stores with the same provenance key hold the same tokens (§2.3). ``spec_quantize`` and
``spec_decode`` below use numpy only (no ml_dtypes, no epcache): e4m3fn is encoded and decoded from
its bit layout as the text gives it. They are checked against epcache's quantiser and reader on random
tokens in every store dtype and on the edge cases the text names (zero and negative-zero channels,
ties, subnormal scales whose reciprocal overflows, the largest values), and against a store epcache
wrote, read with plain zarr and h5py.
"""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from epcache.errors import NonFiniteFeaturesError
from epcache.store import BackboneMeta, SplitSpec, StoreMeta, TokenLayout, create_store, open_store
from epcache.store.layout.quant import QUANTIZATIONS, quantize_chunk
from epcache.store.read.dequant import dequantize

SCHEMES = ["int8-channel", "int8-token", "fp8-e4m3"]
DTYPES = ["float16", "bfloat16", "float32"]
BF16 = np.dtype(ml_dtypes.bfloat16)


# ---------------------------------------------------------------- the text, in numpy only
def e4m3fn_bits(y: np.ndarray) -> np.ndarray:
    """§3.5: the e4m3fn bits of float32 ``y`` (|y| <= 448), one rounding to nearest, ties to even, sign kept."""
    a = np.abs(y).astype(np.float64)  # exact
    _, k = np.frexp(a)  # a = f * 2^k, f in [0.5, 1): the exponent of a is k - 1
    e = np.maximum(np.where(a > 0, k - 1, -6), -6)  # below 2^-6: the subnormal step 2^-9
    step = np.ldexp(1.0, e - 3)  # 3 mantissa bits
    r = np.rint(a / step)  # exact quotient, rounded half to even; r = 16 carries into the next exponent
    bits = (e + 6) * 8 + r.astype(np.int64)  # normal: exponent field e + 7, mantissa r - 8; subnormal: r
    return (bits | np.where(np.signbit(y), 0x80, 0)).astype(np.uint8)


def e4m3fn_value(bits: np.ndarray) -> np.ndarray:
    """§3.5: ``s eeee mmm`` -> (-1)^s 2^(e-7) (1 + m/8), or (-1)^s 2^-6 m/8 for e = 0; 0x7F, 0xFF are nan."""
    b = bits.astype(np.int64)
    s, e, m = b >> 7, (b >> 3) & 15, b & 7
    mag = np.where(e > 0, np.ldexp(1.0 + m / 8.0, e - 7), np.ldexp(m / 8.0, -6))
    out = np.where(s == 1, -mag, mag)
    return np.where((b & 0x7F) == 0x7F, np.nan, out).astype(np.float32)


def spec_quantize(xf: np.ndarray, scheme: str) -> tuple[np.ndarray, np.ndarray]:
    """§3.5 writers: float32 tokens ``xf`` [n, V, T, D] of one chunk -> (codes, scales)."""
    qmax = np.float32(448 if scheme == "fp8-e4m3" else 127)
    per_channel = scheme != "int8-token"
    absmax = np.abs(xf).max(axis=(0, 1, 2) if per_channel else -1)
    if not np.isfinite(absmax).all():
        raise ValueError("inf or nan: refused")
    scale = absmax / qmax
    with np.errstate(divide="ignore", over="ignore"):
        inv = np.float32(1) / scale
    inv = np.where(np.isinf(inv), np.float32(0), inv)
    y = xf * (inv if per_channel else inv[..., None])
    assert y.dtype == np.float32 and scale.dtype == np.float32
    if scheme == "fp8-e4m3":
        return e4m3fn_bits(np.clip(y, np.float32(-448), np.float32(448))), scale
    return np.clip(np.rint(y), -127, 127).astype(np.int8), scale


def round_to(v: np.ndarray, dtype: str) -> np.ndarray:
    """float32 -> the bits of ``dtype``, to nearest even (bfloat16 in integers, §5)."""
    if dtype == "bfloat16":
        u = v.view(np.uint32).astype(np.uint64)
        return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return v.astype(dtype).view(f"u{np.dtype(dtype).itemsize}")


def spec_decode(codes: np.ndarray, scales: np.ndarray, scheme: str, dtype: str) -> np.ndarray:
    """§3.5 readers: dtype(float32(code) * scale), as the bits of ``dtype``."""
    c = e4m3fn_value(codes) if scheme == "fp8-e4m3" else codes.astype(np.float32)
    s = scales.reshape(-1) if scheme != "int8-token" else scales[..., None]
    return round_to(c * s, dtype)


def as_float32(x: np.ndarray) -> np.ndarray:
    """Values of the store dtype in float32 (exact), bfloat16 from its bits."""
    if x.dtype == BF16:
        return (x.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    return x.astype(np.float32)


# ---------------------------------------------------------------- data
def random_chunk(dtype: str, rng: np.random.Generator, shape: tuple[int, ...] = (64, 2, 50, 96)) -> np.ndarray:
    """ViT-like tokens: a few outlier channels, heavy tails, exact zeros."""
    x = rng.standard_normal(shape).astype(np.float32) * rng.lognormal(0, 1.5, shape[-1]).astype(np.float32)
    x[..., :3] *= 100
    x[rng.random(shape) < 0.01] = 0
    return x.astype(BF16 if dtype == "bfloat16" else dtype)


def edge_chunk(dtype: str) -> np.ndarray:
    """One chunk [4, 1, 3, 16] whose channels (and tokens) hit every rule the text states."""
    x = np.zeros((4, 1, 3, 16), np.float32)
    x[..., 1] = -0.0  # a zero channel of negative zeros: fp8 codes 0x80
    x[..., 2] = 127.0  # scale 1: exact ties of rint go to even
    x[0, 0, :, 2] = [0.5, 1.5, 2.5]
    x[1, 0, :, 2] = [-0.5, -1.5, -2.5]
    x[..., 3] = 448.0  # fp8 scale 1: ties of e4m3 (subnormal, normal, top binade) go to even
    x[0, 0, :, 3] = [2.0**-10, 3 * 2.0**-10, 1.0625]
    x[1, 0, :, 3] = [1.1875, 432.0, -(2.0**-11)]
    x[2, 0, :, 3] = [-(2.0**-10), 2.0**-7 * 1.0625, 3.0]
    x[..., 4] = np.linspace(-1, 1, 12).reshape(4, 1, 3)  # a plain channel
    x[0, 0, 0, 5] = 65504.0 if dtype == "float16" else 3.0e38  # the dtype's largest magnitude
    x[1, 0, 1, 5] = -1.0
    x[:, :, :, 6] = 6.0e-8 if dtype == "float16" else 1.0e-38  # the smallest: a subnormal scale
    x[0, 0, 0, 6] = 0.0
    if dtype != "float16":  # float32 and bfloat16 reach scales <= 2^-128: 1/scale overflows, inv = 0
        x[:, :, :, 7] = 0.0
        x[0, 0, 0, 7] = 2.0**-122  # absmax / 127 and absmax / 448 are below 2^-128
        x[1, 0, 0, 7] = -(2.0**-125)
        x[:, :, :, 8] = 2.0**-121  # int8 scale just above 2^-128: inv finite and huge
        x[0, 0, 0, 8] = 0.0
    x[3, 0, 2, :] = 0.0  # an all-zero token (int8-token: scale 0)
    x[3, 0, 1, :] = 2.0**-130 if dtype != "float16" else 2.0**-24  # a tiny token
    x[2, 0, 2, 9:] = -(2.0**-20)  # negative values that round to zero in fp8
    x[2, 0, 2, 9] = 1.0
    return x.astype(BF16 if dtype == "bfloat16" else dtype)


# ---------------------------------------------------------------- the checks
def _check_chunk(x: np.ndarray, scheme: str, dtype: str) -> np.ndarray:
    """Text and epcache agree on codes, scales and decoded values of chunk ``x``; returns the codes."""
    spec = QUANTIZATIONS[scheme]
    codes, scales = quantize_chunk(spec, x)
    want_codes, want_scales = spec_quantize(as_float32(x), scheme)
    assert codes.dtype == np.dtype(spec.code_dtype) and scales.dtype == np.float32
    assert codes.tobytes() == want_codes.tobytes()
    assert scales.tobytes() == want_scales.tobytes()
    out = np.dtype(BF16 if dtype == "bfloat16" else dtype)
    got = dequantize(spec, codes, scales, out).view(f"u{out.itemsize}")
    np.testing.assert_array_equal(got, spec_decode(codes, scales, scheme, dtype))
    return codes


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_the_text_reproduces_epcache_codes_on_random_tokens(scheme: str, dtype: str) -> None:
    x = random_chunk(dtype, np.random.default_rng(SCHEMES.index(scheme) * 3 + DTYPES.index(dtype)))
    codes = _check_chunk(x, scheme, dtype)
    if scheme != "fp8-e4m3" and dtype != "float32":  # few mantissa bits: x / scale often lands by a tie, and
        # the division the text used to say gives other codes there: this check tells the two apart
        xf = as_float32(x)
        _, scales = spec_quantize(xf, scheme)
        s = scales if scheme == "int8-channel" else scales[..., None]
        with np.errstate(divide="ignore", invalid="ignore"):
            divided = np.clip(np.rint(np.where(s > 0, xf / s, 0)), -127, 127).astype(np.int8)
        differ = np.count_nonzero(divided != codes)
        assert 0 < differ < codes.size * 1e-3


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_the_text_reproduces_epcache_codes_on_edge_cases(scheme: str, dtype: str) -> None:
    x = edge_chunk(dtype)
    codes = _check_chunk(x, scheme, dtype)
    xf = as_float32(x)
    if scheme == "int8-channel":
        assert codes[0, 0, :, 2].tolist() == [0, 2, 2] and codes[1, 0, :, 2].tolist() == [0, -2, -2]
        assert not codes[:3, ..., 0].any() and not codes[:3, ..., 1].any()
    if scheme == "fp8-e4m3":
        assert codes[0, 0, :, 3].tolist() == [0x00, 0x02, 0x38]  # 0, 2^-8, 1.0: ties to even
        assert codes[1, 0, :, 3].tolist() == [0x3A, 0x7E, 0x80]  # 1.25, 448, -0
        assert (codes[:3, ..., 1] == 0x80).all() and (codes[:3, ..., 0] == 0x00).all()
        assert not np.isin(codes, [0x7F, 0xFF]).any()  # never a nan code
    if dtype != "float16" and scheme != "int8-token":  # 1/scale overflows: codes 0, scale kept as computed
        assert not (codes[..., 7] & 0x7F).any()
        _, scales = spec_quantize(xf, scheme)
        assert 0 < scales[7] <= 2.0**-128
    assert np.isfinite(xf).all()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_the_text_and_epcache_refuse_non_finite_tokens(scheme: str) -> None:
    x = edge_chunk("float32")
    x[1, 0, 1, 4] = np.inf
    with pytest.raises(ValueError):
        spec_quantize(x, scheme)
    with pytest.raises(NonFiniteFeaturesError):
        quantize_chunk(QUANTIZATIONS[scheme], x)


@pytest.mark.parametrize(("scheme", "dtype", "fmt", "shard"), [
    ("int8-channel", "bfloat16", "zarr", 8),
    ("int8-token", "float16", "h5", None),
    ("fp8-e4m3", "float32", "zarr", None),
])
def test_a_store_holds_the_texts_codes_chunk_by_chunk(
    tmp_path: Path, scheme: str, dtype: str, fmt: str, shard: int | None
) -> None:
    """Chunk k of the stored codes and scales is the text applied to chunk k of the tokens (plain tools read)."""
    n, cs, grid, d = 19, 4, (2, 2), 16
    x = random_chunk(dtype, np.random.default_rng(7), (n, 1, 5, d))
    x[4:8, ..., 3] = 0  # a chunk with a zero channel
    meta = StoreMeta(
        backbone=BackboneMeta("synthetic", "random-init", "1", "ab", None, 1),
        layout=TokenLayout(1, 0, 0, grid), layers=(0,), final_norm=False, dtype=dtype,  # type: ignore[arg-type]
        dim=d, num_tokens=5, quantization=scheme,
    )
    path = tmp_path / f"q.{fmt}"
    with create_store(str(path), meta) as st:
        st.add_split(SplitSpec("val", np.zeros(n, np.int64), [f"a/{i}" for i in range(n)], ["a"]),
                     chunk_samples=cs, shard_samples=shard)
        for b in range(st.split("val").num_blocks):
            lo, hi = st.block_range("val", b)
            st.write_block("val", 0, b, x[lo:hi])
    if fmt == "zarr":
        import zarr

        g = zarr.open_group(str(path), mode="r")
    else:
        import h5py

        g = h5py.File(path, "r")
    codes, scales = g["splits/val/layers/0"][...], g["splits/val/scales/0"][...]
    assert scales.dtype == np.dtype("<f4")
    for k in range(-(-n // cs)):
        want_codes, want_scales = spec_quantize(as_float32(x[k * cs : (k + 1) * cs]), scheme)
        assert codes[k * cs : (k + 1) * cs].tobytes() == want_codes.tobytes()
        got_scales = scales[k] if scheme != "int8-token" else scales[k * cs : (k + 1) * cs]
        assert got_scales.tobytes() == want_scales.tobytes()
    if fmt == "h5":
        g.close()
    with open_store(str(path)) as st:  # and epcache's reader decodes them as the text says
        ok = np.concatenate([spec_decode(codes[k * cs : (k + 1) * cs],
                                         scales[k] if scheme != "int8-token" else scales[k * cs : (k + 1) * cs],
                                         scheme, dtype) for k in range(-(-n // cs))])
        got = st.read_tokens("val", 0)
        np.testing.assert_array_equal(got.view(ok.dtype), ok)
