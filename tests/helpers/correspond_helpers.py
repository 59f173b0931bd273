"""Stores and pairs files for the correspondence tests: tokens chosen per image id, written with the store API."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from epcache.store import BackboneMeta, SplitSpec, StoreMeta, TokenLayout, create_store

SIZE = 64  # model input H = W in pixels
GRID = (4, 4)  # 16 px patches
DIM = 8


def grid_meta(*, grid: tuple[int, int] = GRID, layers: Sequence[int] = (0, 1), keep: tuple[str, ...] | None = None,
              preprocessing: dict[str, object] | None = None) -> StoreMeta:
    """Float32 tokens, one CLS then the grid, as extraction at SIZE x SIZE would record them."""
    layout = TokenLayout(num_prefix=1, cls_index=0, num_registers=0, grid=grid, keep=keep)
    pre = {"data_config": {"input_size": [3, SIZE, SIZE]}} if preprocessing is None else preprocessing
    return StoreMeta(backbone=BackboneMeta("vit_toy", "random-init", "1.0", "0" * 64, None, 2), layout=layout,
                     layers=tuple(layers), final_norm=False, dtype="float32", dim=DIM,
                     num_tokens=1 + grid[0] * grid[1], preprocessing=pre)


def write_grid_store(path: Path, tokens: Mapping[str, np.ndarray], *, meta: StoreMeta | None = None,
                     split: str = "val", chunk_samples: int = 2, labels: Mapping[str, int] | None = None,
                     skip_blocks: Sequence[int] = ()) -> Path:
    """A store whose image ``id`` holds ``tokens[id]`` ``[L, T, D]`` (one entry per stored layer), view 0 only."""
    meta = meta or grid_meta()
    ids = sorted(tokens)
    y = np.array([(labels or {}).get(i, 0) for i in ids], dtype=np.int64)
    with create_store(path, meta) as st:
        st.add_split(SplitSpec(split, y, ids, ["c0"], views=1, permutation_seed=3), chunk_samples=chunk_samples)
        stored = st.read_ids(split)
        for li, layer in enumerate(meta.layers):
            x = np.stack([tokens[i][li] for i in stored])[:, None].astype(np.float32)
            for b in range(st.split(split).num_blocks):
                if b in skip_blocks:
                    continue
                lo, hi = st.block_range(split, b)
                st.write_block(split, layer, b, x[lo:hi])
    return path


def write_pairs(path: Path, rows: Sequence[Sequence[object]],
                header: Sequence[str] = ("source_id", "target_id", "sx", "sy", "tx", "ty")) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def centre(patch: int, grid: tuple[int, int] = GRID, size: int = SIZE) -> tuple[float, float]:
    """Pixel (x, y) of a row-major patch's centre."""
    h, w = grid
    return (patch % w + 0.5) * size / w, (patch // w + 0.5) * size / h


def rolled(grid_tokens: np.ndarray, shift: tuple[int, int], grid: tuple[int, int] = GRID) -> np.ndarray:
    """``[..., h*w, D]`` patch features moved ``shift`` = (rows, cols) whole patches down/right, wrapping."""
    h, w = grid
    g = grid_tokens.reshape(*grid_tokens.shape[:-2], h, w, grid_tokens.shape[-1])
    return np.roll(g, shift, axis=(-3, -2)).reshape(grid_tokens.shape)
