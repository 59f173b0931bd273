"""Quantised stores (cache_layout.md §3.5): error bounds, backends agree, records cover codes and scales."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from epcache.errors import ConfigError, CorruptStoreError, NonFiniteFeaturesError
from epcache.store import BackboneMeta, SplitSpec, StoreMeta, TokenLayout, create_store, open_store, verify_store
from epcache.store.layout.quant import QUANTIZATIONS, resolve_quantization

N, V, GRID, D = 37, 2, (2, 2), 16


def make(path: Path, quantization: str | None, *, dtype: str = "float32", shard: int | None = None) -> np.ndarray:
    """A store of random tokens with two 100x outlier channels; returns the tokens written (stored order)."""
    meta = StoreMeta(
        backbone=BackboneMeta("synthetic", "random-init", "1", "ab", None, 1),
        layout=TokenLayout(1, 0, 0, GRID), layers=(0,), final_norm=False, dtype=dtype,  # type: ignore[arg-type]
        dim=D, num_tokens=1 + GRID[0] * GRID[1], quantization=quantization,
    )
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((N, V, meta.num_tokens, D)) * np.r_[np.ones(D - 2), 100, 100]).astype(dtype)
    with create_store(path, meta) as st:
        st.add_split(SplitSpec("train", np.arange(N) % 3, [f"a/{i}" for i in range(N)], ["a", "b", "c"], views=V),
                     chunk_samples=4, shard_samples=shard)
        for b in range(st.split("train").num_blocks):
            lo, hi = st.block_range("train", b)
            st.write_block("train", 0, b, x[lo:hi])
    return x


@pytest.mark.parametrize("fmt", ["zarr", "h5"])
@pytest.mark.parametrize("scheme", ["int8-channel", "int8-token"])
def test_int8_round_trip_within_half_a_step(tmp_path: Path, fmt: str, scheme: str) -> None:
    path = tmp_path / f"s.{fmt}"
    x = make(path, scheme)
    st = open_store(path)
    assert st.format_version == "1.2" and st.meta.quantization == scheme and st.meta.storage_dtype == "int8"
    y = st.read_tokens("train", 0)
    assert y.dtype == np.float32
    cs = st.split("train").chunk_samples
    for c in range(st.split("train").num_chunks):
        lo, hi = st.chunk_range("train", c)
        scale = st._read_chunk_scales("train", 0, c)
        step = scale[None, None, None, :] if scheme == "int8-channel" else scale[..., None]
        err = np.abs(x[lo:hi] - y[lo:hi])
        assert (err <= step / 2 * (1 + 1e-5) + 1e-30).all(), (c, cs)
    assert np.abs(y - x).max() > 0  # lossy, and the bound is what holds it


def test_fp8_relative_error(tmp_path: Path) -> None:
    x = make(tmp_path / "s.zarr", "fp8-e4m3")
    st = open_store(tmp_path / "s.zarr")
    y = st.read_tokens("train", 0)
    for c in range(st.split("train").num_chunks):
        lo, hi = st.chunk_range("train", c)
        scale = st._read_chunk_scales("train", 0, c)
        # e4m3: 3 mantissa bits (relative error <= 2^-4); subnormals below 2^-6 have a step of 2^-9
        bound = np.abs(x[lo:hi]) * 2.0**-4 + scale * 2.0**-10
        assert (np.abs(x[lo:hi] - y[lo:hi]) <= bound * (1 + 1e-5)).all()


@pytest.mark.parametrize("scheme", list(QUANTIZATIONS))
def test_backends_and_sharding_read_the_same_values(tmp_path: Path, scheme: str) -> None:
    make(tmp_path / "a.zarr", scheme, dtype="float16")
    make(tmp_path / "b.h5", scheme, dtype="float16")
    make(tmp_path / "c.zarr", scheme, dtype="float16", shard=8)
    a, b, c = (open_store(tmp_path / n) for n in ("a.zarr", "b.h5", "c.zarr"))
    ya = a.read_tokens("train", 0)
    assert ya.dtype == np.float16
    np.testing.assert_array_equal(ya, b.read_tokens("train", 0))
    np.testing.assert_array_equal(ya, c.read_tokens("train", 0))
    np.testing.assert_array_equal(ya[5:23], a.read_tokens("train", 0, 5, 23))
    np.testing.assert_array_equal(ya[[9, 2, 30]], c.read_rows("train", 0, [9, 2, 30]))
    for st in (a, b, c):
        assert verify_store(st.location).ok


def test_unquantised_stores_stay_format_11(tmp_path: Path) -> None:
    make(tmp_path / "s.zarr", None)
    assert open_store(tmp_path / "s.zarr").format_version == "1.1"


def _flip(path: Path, offset: int = 3) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x10
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("what", ["layers", "scales"])
@pytest.mark.parametrize("scheme", ["int8-channel", "int8-token"])
def test_a_flipped_byte_in_codes_or_scales_is_caught(tmp_path: Path, what: str, scheme: str) -> None:
    path = tmp_path / "s.zarr"
    make(path, scheme)
    chunk_file = next(p for p in sorted((path / "splits/train" / what / "0" / "c").rglob("*")) if p.is_file())
    _flip(chunk_file)
    report = verify_store(path)
    assert not report.ok and any(b.problem == "checksum" for b in report.bad_blocks)
    st = open_store(path)
    st.verify_reads = True
    with pytest.raises(CorruptStoreError, match="crc32c"):
        for c in range(st.split("train").num_chunks):
            st.read_chunk("train", 0, c)


@pytest.mark.parametrize("what", ["layers", "scales"])
def test_a_changed_value_in_h5_codes_or_scales_is_caught(tmp_path: Path, what: str) -> None:
    path = tmp_path / "s.h5"
    make(path, "int8-token")
    with h5py.File(path, "r+") as f:
        ds = f[f"splits/train/{what}/0"]
        ds[0, 0, 0] = ds[0, 0, 0] + 1
    assert not verify_store(path).ok
    st = open_store(path)
    st.verify_reads = True
    with pytest.raises(CorruptStoreError):
        st.read_chunk("train", 0, 0)


def test_sharded_corrupt_scales_fail_their_chunk_record(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    make(path, "int8-channel", shard=8)
    shard = next(p for p in sorted((path / "splits/train/scales/0/c").rglob("*")) if p.is_file())
    _flip(shard, 0)
    assert not verify_store(path).ok
    st = open_store(path)
    st.verify_reads = True
    with pytest.raises(CorruptStoreError, match="per-chunk record"):
        st.read_chunk("train", 0, 0)


def test_non_finite_tokens_are_refused(tmp_path: Path) -> None:
    meta = StoreMeta(BackboneMeta("s", "random-init", "1", "ab"), TokenLayout(0, None, 0, (1, 1)), (0,), False,
                     "float16", 4, 1, quantization="int8-channel")
    with create_store(tmp_path / "s.zarr", meta) as st:
        st.add_split(SplitSpec("train", np.zeros(2, int), ["a", "b"], ["a"]))
        x = np.ones((2, 1, 1, 4), np.float16)
        x[0, 0, 0, 1] = np.inf
        with pytest.raises(NonFiniteFeaturesError, match="without --quantize"):
            st.write_block("train", 0, 0, x)
        assert st.block_records("train", 0)[0] == -1  # nothing recorded


def test_quantize_values() -> None:
    assert resolve_quantization("int8") == "int8-channel"
    assert resolve_quantization("fp8") == "fp8-e4m3"
    assert resolve_quantization("int8-token") == "int8-token"
    assert resolve_quantization("none") is None
    with pytest.raises(ConfigError, match="int8-token"):
        resolve_quantization("int4")


@pytest.mark.parametrize("fmt", ["zarr", "h5"])
def test_pooled_output_of_a_quantised_store_stays_float(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"s.{fmt}"
    make(path, "int8-channel", dtype="float16")
    pooled = np.random.default_rng(1).standard_normal((N, V, 5)).astype(np.float16)
    with open_store(path, "a") as st:
        st.add_pooled("train", 5)
        for b in range(st.split("train").num_blocks):
            lo, hi = st.block_range("train", b)
            st.write_pooled_block("train", b, pooled[lo:hi])
    st = open_store(path)
    np.testing.assert_array_equal(st.read_pooled("train"), pooled)  # stored as float16, never quantised


@pytest.mark.parametrize("shard", [None, 8])
def test_codes_and_scales_take_the_direct_read_path(tmp_path: Path, shard: int | None) -> None:
    """zarr writes no endian for one-byte types: int8 codes must still be read with preadv, not through zarr."""
    make(tmp_path / "s.zarr", "int8-channel", shard=shard)
    st = open_store(tmp_path / "s.zarr")
    assert st._raw_layout("train", 0) is not None and st._raw_layout("train", 0, "scales") is not None
    np.testing.assert_array_equal(st.read_chunk("train", 0, 0), st.read_tokens("train", 0, 0, 4))


def test_read_ahead_decodes_and_checks_like_read_chunk(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    make(path, "int8-token", dtype="float16")
    st = open_store(path)
    st.verify_reads = True
    chunks = list(range(st.split("train").num_chunks))[::-1]
    got = dict(st.read_chunks("train", 0, chunks, inflight=4))
    assert all(np.array_equal(got[c], st.read_chunk("train", 0, c)) for c in chunks)
    f32 = dict(st.read_chunks("train", 0, chunks, inflight=4, decode_to=np.float32))
    assert f32[0].dtype == np.float32 and np.allclose(f32[0], got[0].astype(np.float32), rtol=1e-3, atol=1e-3)
    _flip(next(p for p in sorted((path / "splits/train/scales/0/c").rglob("*")) if p.is_file()))
    bad = open_store(path)
    bad.verify_reads = True
    with pytest.raises(CorruptStoreError):
        dict(bad.read_chunks("train", 0, chunks, inflight=4))
