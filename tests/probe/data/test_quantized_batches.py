"""Quantised stores (cache_layout.md §3.5) feed the probe decoded straight into the batches' dtype."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from probe_helpers import config, make_meta, write_store

from epcache.probe import probe_store
from epcache.probe.data.stream import InputRead, MemorySource, StoreSource
from epcache.store import open_store


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    meta = dataclasses.replace(make_meta(), quantization="int8-channel")
    return write_store(tmp_path_factory.mktemp("q") / "s.zarr", n_train=96, n_val=32, meta=meta)


def test_streamed_rows_decode_into_float32_as_the_ram_load_does(store: Path) -> None:
    st = open_store(store)
    plan = InputRead(frozenset({"patch"}), st.meta.layout)
    rows = np.arange(st.split("train").num_samples)
    held = MemorySource.load(st, "train", 1, plan, rows, all_views=True, dtype=torch.float32)
    streamed = StoreSource(st, "train", 1, plan, decode_to=np.float32)
    store_dtype = StoreSource(st, "train", 1, plan)  # what a GPU run streams: float16, converted on the device
    cs = st.split("train").chunk_samples
    for c in range(st.split("train").num_chunks):
        local = np.arange(len(range(*st.chunk_range("train", c))))
        x = streamed.rows(c, local, None)
        assert x.dtype == np.float32
        np.testing.assert_array_equal(x, held.gather(c * cs + local, None))
        x16 = store_dtype.rows(c, local, None)
        assert x16.dtype == np.float16
        np.testing.assert_array_equal(x16, x.astype(np.float16))  # one rounding of the same float32 values


def test_cpu_streaming_equals_in_memory_on_a_quantised_store(store: Path) -> None:
    """On the CPU both paths decode to float32 once: the same batches, so the same curves and metrics."""
    kw = {"head": "linear,ep", "tokens": "gap,patch", "epochs": 2, "seeds": "0"}
    streamed = probe_store(config(store, in_memory=False, eval_cache_mb=0, **kw), progress=False)
    held = probe_store(config(store, in_memory=True, eval_cache_mb=0, **kw), progress=False)
    for a, b in zip(streamed.rows, held.rows, strict=True):
        assert {k: v for k, v in a.items() if k != "timing"} == {k: v for k, v in b.items() if k != "timing"}
