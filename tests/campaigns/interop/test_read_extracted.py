"""An extracted store read with plain zarr, h5py, xarray and dask: every value, checked.

The reference is not only epcache's own reader: every block's bytes as a plain tool returns them
must hash to the crc32c record written at extraction, and labels and ids must hash to the
fingerprints of the metadata (cache_layout.md §2.2, §3.3), so a tool that mis-reads any value fails.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import google_crc32c
import ml_dtypes
import numpy as np
import pytest
from extract_helpers import make_imagefolder, tiny_config

from epcache.extract import extract_store
from epcache.store import open_store


@pytest.fixture(scope="module")
def extracted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("interop")
    data = make_imagefolder(root / "data", splits={"train": 10, "val": 6})
    out = {
        "zarr": root / "bf16.zarr",  # bfloat16 (uint16 bits), sharded: 2 chunks of 4 per shard
        "h5": root / "f32.h5",  # the same extraction in float32: the bf16 bytes must be its RNE rounding
    }
    extract_store(tiny_config(data, out["zarr"], dtype="bfloat16", shard_samples=8), progress=False)
    extract_store(tiny_config(data, out["h5"], dtype="float32"), progress=False)
    return out


def _check_split(doc: dict, split: str, get: object) -> None:
    """``get(name)`` returns an array of the split as the plain tool reads it."""
    s = doc["splits"][split]
    order, labels = np.asarray(get("order")), np.asarray(get("labels"))  # type: ignore[operator]
    ids = [x.decode() if isinstance(x, bytes) else str(x) for x in get("ids")]  # type: ignore[operator]
    assert np.array_equal(order, np.random.default_rng(s["permutation_seed"]).permutation(s["num_samples"]))
    ds_labels = np.empty_like(labels)
    ds_labels[order] = labels
    assert hashlib.sha256(ds_labels.astype("<i8").tobytes()).hexdigest() == s["labels_sha256"]
    ds_ids = [""] * len(ids)
    for row, i in enumerate(order):
        ds_ids[i] = ids[row]
    assert hashlib.sha256("\n".join(ds_ids).encode()).hexdigest() == s["ids_sha256"]
    mirror = np.asarray(get("ids_utf8"))  # type: ignore[operator]
    assert [bytes(r).rstrip(b"\0").decode() for r in mirror] == ids
    for layer in doc["layers"]:
        x = np.asarray(get(f"layers/{layer}"))  # type: ignore[operator]
        assert x.dtype == np.dtype(doc["storage_dtype"]).newbyteorder("=")
        rec = np.asarray(get(f"records/{layer}"))  # type: ignore[operator]
        bs = s["block_samples"]
        crcs = [google_crc32c.value(np.ascontiguousarray(x[b : b + bs]).astype("<" + x.dtype.str[1:]).tobytes())
                for b in range(0, s["num_samples"], bs)]
        assert rec.tolist() == crcs


def test_plain_zarr_xarray_and_dask_read_every_value(extracted: dict[str, Path]) -> None:
    import dask.array as da
    import xarray as xr
    import zarr

    p = extracted["zarr"]
    g = zarr.open_group(p, mode="r")
    doc = g.attrs["epcache"]
    assert doc["dtype"] == "bfloat16" and doc["storage_dtype"] == "uint16"
    with open_store(p) as st:
        for split in doc["splits"]:
            _check_split(doc, split, lambda name, split=split: g[f"splits/{split}/{name}"][...])
            xs = xr.open_zarr(p / "splits" / split, consolidated=False)
            assert xs["labels"].values.tolist() == st.read_labels(split).tolist()
            xl = xr.open_zarr(p / "splits" / split / "layers", consolidated=False)
            for layer in doc["layers"]:
                mine = st.read_tokens(split, layer)  # epcache's reader: ml_dtypes.bfloat16
                arr = g[f"splits/{split}/layers/{layer}"]
                assert arr.attrs["epcache_dtype"] == "bfloat16"
                for plain in (arr[...], xl[str(layer)].values, da.from_zarr(arr).compute()):
                    got = plain.view(ml_dtypes.bfloat16)
                    assert got.shape == mine.shape and np.array_equal(got.view(np.uint16), mine.view(np.uint16))


def test_plain_h5py_reads_every_value(extracted: dict[str, Path]) -> None:
    import h5py

    p = extracted["h5"]
    with h5py.File(p, "r") as f, open_store(p) as st:
        doc = json.loads(f.attrs["epcache"])
        for split in doc["splits"]:
            _check_split(doc, split, lambda name, split=split: f[f"splits/{split}/{name}"][...])
            for layer in doc["layers"]:
                plain = f[f"splits/{split}/layers/{layer}"][...]
                assert f[f"splits/{split}/layers/{layer}"].attrs["epcache_dtype"] == "float32"
                assert np.array_equal(plain, st.read_tokens(split, layer))


def _rne_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits, round to nearest, ties to even (cache_layout.md §5), in integers."""
    bits = x.astype("<f4").view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def test_bfloat16_bytes_are_the_rne_rounding_of_float32(extracted: dict[str, Path]) -> None:
    import h5py
    import zarr

    g = zarr.open_group(extracted["zarr"], mode="r")
    with h5py.File(extracted["h5"], "r") as f:
        for split in ("train", "val"):
            for layer in g.attrs["epcache"]["layers"]:
                f32 = f[f"splits/{split}/layers/{layer}"][...]
                bf16 = g[f"splits/{split}/layers/{layer}"][...]
                assert np.isfinite(f32).all()
                truncated = (f32.view(np.uint32) >> 16).astype(np.uint16)
                assert (truncated != bf16).any()  # rounding, not truncation, is what tells them apart
                np.testing.assert_array_equal(bf16, _rne_bf16_bits(f32))
