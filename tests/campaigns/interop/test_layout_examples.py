"""The reading code of cache_layout.md §6, taken from the document verbatim and run on real stores.

The blocks are cut out of the markdown as they stand (no edits) and executed in a directory where
``imagenet_mae_vitb.zarr`` / ``.h5`` name the store under test; what they leave in ``x``, ``y`` and
``ids`` must be bit for bit what epcache's reader returns. Plain, bfloat16 and quantised stores of
both backends are covered, so an example that mis-reads any of them (bfloat16 bits, int8 codes
taken for values, the scales of the wrong chunk) fails here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from epcache.store import BackboneMeta, SplitSpec, StoreMeta, TokenLayout, create_store, open_store

LAYOUT = Path(__file__).resolve().parents[3] / "cache_layout.md"
N, V, GRID, D, CHUNK = 70, 2, (2, 3), 12, 16  # 64 rows span 4 chunks and end inside one


def section_6_blocks() -> list[str]:
    """The ```python blocks of §6, verbatim, in order: open zarr, open HDF5, read."""
    text = LAYOUT.read_text(encoding="utf-8")
    section = text[text.index("\n## 6.") : text.index("\n## 7.")]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def make_store(path: Path, dtype: str, quantization: str | None, *, shard: int | None = None,
               complete: bool = True) -> None:
    """A store with a val split of random tokens (two outlier channels, a zero channel in one chunk)."""
    meta = StoreMeta(
        backbone=BackboneMeta("synthetic", "random-init", "1", "ab", None, 2),
        layout=TokenLayout(1, 0, 0, GRID), layers=(0, 1), final_norm=False, dtype=dtype,  # type: ignore[arg-type]
        dim=D, num_tokens=1 + GRID[0] * GRID[1], quantization=quantization,
    )
    rng = np.random.default_rng(3)
    x = rng.standard_normal((N, V, meta.num_tokens, D)).astype(np.float32) * np.r_[np.ones(D - 2), 50, 200]
    x[16:32, ..., 4] = 0
    with create_store(str(path), meta) as st:
        st.add_split(SplitSpec("val", np.arange(N) % 3, [f"val/c{i % 3}/{i:03d}.png" for i in range(N)],
                               ["c0", "c1", "c2"], views=V, permutation_seed=5),
                     chunk_samples=CHUNK, shard_samples=shard)
        for layer in meta.layers:
            for b in range(st.split("val").num_blocks):
                if complete or b != 1:
                    lo, hi = st.block_range("val", b)
                    st.write_block("val", layer, b, _as(x[lo:hi], dtype))


def _as(x: np.ndarray, dtype: str) -> np.ndarray:
    import ml_dtypes

    return x.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)


def run_examples(store: Path, workdir: Path) -> dict[str, Any]:
    """Run §6's open block for the store's backend, then the read block, in ``workdir``; their namespace."""
    open_zarr, open_h5, read = section_6_blocks()
    suffix = "zarr" if store.suffix == ".zarr" else "h5"
    workdir.mkdir(exist_ok=True)
    (workdir / f"imagenet_mae_vitb.{suffix}").symlink_to(store)
    ns: dict[str, Any] = {}
    old = os.getcwd()
    os.chdir(workdir)
    try:
        exec(compile(open_zarr if suffix == "zarr" else open_h5, "cache_layout.md §6 open", "exec"), ns)
        try:
            exec(compile(read, "cache_layout.md §6 read", "exec"), ns)
        finally:
            if suffix == "h5":
                ns["g"].close()
    finally:
        os.chdir(old)
    return ns


def test_section_6_has_the_three_blocks() -> None:
    blocks = section_6_blocks()
    assert len(blocks) == 3
    assert "zarr.open_group" in blocks[0] and "h5py.File" in blocks[1] and "scales" in blocks[2]


@pytest.mark.parametrize(("fmt", "dtype", "quantization", "shard"), [
    ("zarr", "float16", None, None),
    ("zarr", "bfloat16", None, 32),
    ("h5", "bfloat16", None, None),
    ("zarr", "bfloat16", "int8-channel", 32),  # int8 codes once read as bfloat16: half the channels
    ("h5", "float16", "int8-token", None),
    ("zarr", "float32", "fp8-e4m3", None),
    ("h5", "bfloat16", "fp8-e4m3", None),
])
def test_section_6_reads_what_epcache_reads(tmp_path: Path, fmt: str, dtype: str, quantization: str | None,
                                            shard: int | None) -> None:
    store = tmp_path / f"s.{fmt}"
    make_store(store, dtype, quantization, shard=shard)
    ns = run_examples(store, tmp_path / "work")
    with open_store(str(store)) as st:
        want = st.read_tokens("val", 1)[:64]
        assert ns["layer"] == 1 and ns["x"].dtype == want.dtype and ns["x"].shape == want.shape == (64, V, 7, D)
        assert ns["x"].tobytes() == want.tobytes()
        assert ns["y"].tolist() == st.read_labels("val")[:64].tolist()
        assert ns["ids"] == list(st.read_ids("val"))[:64]
    assert ns["cls"].shape == (64, D) and ns["gap"].shape == (64, D) and np.isfinite(ns["gap"]).all()


def test_section_6_refuses_an_incomplete_store(tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    make_store(store, "float16", "int8-channel", complete=False)
    with pytest.raises(AssertionError, match="incomplete store"):
        run_examples(store, tmp_path / "work")
