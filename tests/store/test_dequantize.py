"""The fast decode (read/dequant.py) gives the bits of the definition (numpy, float32 product rounded once)."""

from __future__ import annotations

import warnings
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from epcache.store import BackboneMeta, SplitSpec, StoreMeta, TokenLayout, create_store, open_store
from epcache.store.layout.quant import QUANTIZATIONS, dequantize_reference, quantize_chunk
from epcache.store.read import dequant as _dequant

OUTS = [np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16), np.dtype(np.float32)]
# scales: zero, ordinary, products that are float32/float16 subnormals, and scales too large to fold 2^8 into
SCALES = [0.0, 1.0, 3.3e-3, 1e-38, 1e-44, 7e35, 3e38]


def assert_same_bits(got: np.ndarray, want: np.ndarray) -> None:
    """Equal bit patterns, except that any NaN matches any NaN (payloads are not part of the definition)."""
    assert got.dtype == want.dtype and got.shape == want.shape
    g, w = got.astype(np.float32), want.astype(np.float32)
    np.testing.assert_array_equal(np.isnan(g), np.isnan(w))
    keep = ~np.isnan(w)
    np.testing.assert_array_equal(got[keep].view(np.uint8), want[keep].view(np.uint8))


def reference(spec_name: str, codes: np.ndarray, scales: np.ndarray, dt: np.dtype) -> np.ndarray:
    with warnings.catch_warnings():  # numpy warns where a product overflows float16: the value is inf either way
        warnings.simplefilter("ignore", RuntimeWarning)
        return dequantize_reference(QUANTIZATIONS[spec_name], codes, scales, dt)


@pytest.mark.parametrize("dt", OUTS, ids=str)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("scheme", list(QUANTIZATIONS))
def test_every_code_decodes_to_the_definition(scheme: str, scale: float, dt: np.dtype) -> None:
    spec = QUANTIZATIONS[scheme]
    codes = np.arange(256, dtype=np.uint8).view(spec.code_dtype).reshape(2, 1, 1, 128)  # fp8: NaN codes too
    scales = np.full((128,) if spec.scales == "channel" else (2, 1, 1), scale, np.float32)
    got = _dequant.dequantize_blocked(spec, codes, scales, dt)
    assert_same_bits(got, reference(scheme, codes, scales, dt))
    if spec.codes_are == "float8_e4m3fn":  # 0x7F and 0xFF are e4m3fn's NaN: they must not decode to a number
        assert np.isnan(got.astype(np.float32).reshape(-1)[[0x7F, 0xFF]]).all()


@pytest.mark.parametrize("dt", OUTS, ids=str)
@pytest.mark.parametrize("scheme", list(QUANTIZATIONS))
def test_a_chunk_of_many_blocks_with_a_remainder(monkeypatch: pytest.MonkeyPatch, scheme: str, dt: np.dtype) -> None:
    monkeypatch.setattr(_dequant, "BLOCK_ELEMENTS", 7 * 48)  # 7 rows a block; 3 * 2 * 9 = 54 rows: 7 full + 5
    spec = QUANTIZATIONS[scheme]
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((3, 2, 9, 48)) * np.r_[np.ones(46), 100, 100]).astype(np.float16)
    codes, scales = quantize_chunk(spec, x)
    assert_same_bits(_dequant.dequantize_blocked(spec, codes, scales, dt), reference(scheme, codes, scales, dt))
    view = codes[::-1]  # not contiguous, and read-only (as a cache or a memory map may hand codes over)
    view.flags.writeable = False
    scales_view = scales if spec.scales == "channel" else scales[::-1]
    assert_same_bits(_dequant.dequantize_blocked(spec, view, scales_view, dt), reference(scheme, view, scales_view, dt))


def test_small_chunks_and_other_dtypes_take_the_definition(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = QUANTIZATIONS["int8-channel"]
    codes, scales = quantize_chunk(spec, np.ones((2, 1, 3, 8), np.float32))
    calls: list[int] = []
    monkeypatch.setattr(_dequant, "dequantize_blocked", lambda *a: calls.append(1))
    assert _dequant.dequantize(spec, codes, scales, np.dtype(np.float16)).dtype == np.float16  # 48 values: numpy
    assert _dequant.dequantize(spec, codes, scales, np.dtype(np.float64)).dtype == np.float64  # torch has no path
    big = np.zeros((4, 1, 64, 64), np.int8)
    _dequant.dequantize(spec, big, np.ones(64, np.float32), np.dtype(np.float16))
    assert calls == [1]


@pytest.mark.parametrize("scheme", list(QUANTIZATIONS))
@pytest.mark.parametrize("fmt", ["zarr", "h5"])
def test_read_chunk_decodes_through_the_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scheme: str,
                                               fmt: str) -> None:
    """Every chunk, in the logical dtype and into float32 (the probe's decode_to), is the definition of its parts."""
    monkeypatch.setattr(_dequant, "_TORCH_FROM", {dt: 0 for dt in OUTS})  # the test store's chunks are small
    used: list[int] = []
    blocked = _dequant.dequantize_blocked
    monkeypatch.setattr(_dequant, "dequantize_blocked", lambda *a: used.append(1) or blocked(*a))
    meta = StoreMeta(
        backbone=BackboneMeta("synthetic", "random-init", "1", "ab", None, 1),
        layout=TokenLayout(1, 0, 0, (2, 2)), layers=(0,), final_norm=False, dtype="float16",
        dim=24, num_tokens=5, quantization=scheme,
    )
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((11, 2, 5, 24)) * np.r_[np.ones(22), 100, 100]).astype(np.float16)
    path = tmp_path / f"s.{fmt}"
    with create_store(path, meta) as st:
        st.add_split(SplitSpec("train", np.arange(11) % 2, [f"a/{i}" for i in range(11)], ["a", "b"], views=2),
                     chunk_samples=4)
        for b in range(st.split("train").num_blocks):
            lo, hi = st.block_range("train", b)
            st.write_block("train", 0, b, x[lo:hi])
    st = open_store(path)
    for c in range(st.split("train").num_chunks):
        codes, scales = st.stored_parts("train", 0, c, c + 1)
        scales = scales.reshape(-1) if QUANTIZATIONS[scheme].scales == "channel" else scales
        for decode_to, dt in [(None, np.dtype(np.float16)), (np.float32, np.dtype(np.float32))]:
            assert_same_bits(st.read_chunk("train", 0, c, decode_to=decode_to), reference(scheme, codes, scales, dt))
    assert used
