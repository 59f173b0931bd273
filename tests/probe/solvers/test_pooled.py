"""Pooled view: CLS and GAP (registers excluded) in one streamed pass, cached on disk, non-finite rows named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from solver_helpers import class_store, class_tokens, meta, write_tokens

from epcache.errors import NonFiniteFeaturesError
from epcache.probe.solvers import PooledCache, pool_rows
from epcache.probe.solvers import vectors as pooled_module
from epcache.store import open_store


def test_cls_and_gap_exclude_registers_and_accumulate_in_float64(tmp_path: Path) -> None:
    store = class_store(tmp_path / "s.zarr", registers=2, n_train=40, n_val=8)
    with open_store(store) as st:
        rows = np.array([0, 3, 17, 18, 39])  # several chunks, not contiguous
        view = pool_rows(st, "train", 0, rows)
        tokens = st.read_tokens("train", 0)[rows, 0]  # [n, T, D] float16
    P = 3  # CLS + 2 registers
    assert np.array_equal(view.cls, tokens[:, 0].astype(np.float32))
    assert np.array_equal(view.gap, tokens[:, P:].astype(np.float64).mean(1).astype(np.float32))
    assert view.gap.dtype == np.float32 and np.abs(view.gap).max() < 20  # registers (50.0) stayed out
    assert view.features("cls+gap").shape == (5, 32)
    sub = view.subset(np.array([3, 18]))
    assert np.array_equal(sub.gap, view.gap[[1, 3]])


def test_cache_is_written_beside_the_run_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = class_store(tmp_path / "s.zarr", n_train=32, n_val=8)
    rows = np.arange(32)
    with open_store(store) as st:
        first = PooledCache(tmp_path / "run" / "pooled").get(st, "train", 0, rows)
        files = sorted(p.name for p in (tmp_path / "run" / "pooled").iterdir())
        assert any(f.endswith(".gap.npy") for f in files) and any(f.endswith(".cls.npy") for f in files)

        def no_pass(*a: object, **k: object) -> None:
            raise AssertionError("the cached view should have been read from disk")

        monkeypatch.setattr(pooled_module, "pool_rows", no_pass)
        again = PooledCache(tmp_path / "run" / "pooled").get(st, "train", 0, rows)
        cache = PooledCache(tmp_path / "run" / "pooled")
        cache.get(st, "train", 0, rows)
        cache.release()  # memory emptied; the next get reads the file again
        assert not cache._memory and np.array_equal(cache.get(st, "train", 0, rows).gap, first.gap)
    assert np.array_equal(first.gap, again.gap) and np.array_equal(first.cls, again.cls)
    with open_store(store) as st:  # the store's own arrays were not touched
        assert st.is_complete()


def test_non_finite_tokens_name_the_layer_and_rows(tmp_path: Path) -> None:
    m = meta(dim=8, layers=(3,), dtype="float16")
    y = np.arange(24) % 3
    x = class_tokens(y, m)
    x[[5, 11], 2, 0] = np.inf  # what float16 overflow at extraction leaves behind
    store = write_tokens(tmp_path / "bad.zarr", m, {"train": (x, y)})
    with open_store(store) as st:
        stored = np.sort(np.flatnonzero(np.isin(st.read_order("train"), [5, 11])))
        with pytest.raises(NonFiniteFeaturesError) as e:
            pool_rows(st, "train", 3, np.arange(24))
    msg = str(e.value)
    assert "layer 3" in msg and "'train'" in msg and f"[{stored[0]}, {stored[1]}]" in msg and "2 stored row" in msg
