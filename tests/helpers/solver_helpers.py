"""Tiny pooled-friendly stores for the solver tests, written with the store API (no backbone).

``class_store`` writes class-structured tokens: every token of a sample is its class centre plus
noise, so CLS, GAP and every probe separate the classes to a degree set by ``noise``. Layouts
with registers put large values in the register tokens, so a GAP that forgets to exclude them
shows up in the numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from epcache.store import BackboneMeta, SplitSpec, StoreMeta, TokenLayout, create_store


def meta(*, dim: int, grid: tuple[int, int] = (2, 2), cls: bool = True, registers: int = 0,
         layers: Sequence[int] = (0,), dtype: str = "float16") -> StoreMeta:
    prefix = int(cls) + registers
    return StoreMeta(
        backbone=BackboneMeta("vit_toy_solver", "random-init", "1.0", "random-init", None, 2),
        layout=TokenLayout(num_prefix=prefix, cls_index=0 if cls else None, num_registers=registers, grid=grid),
        layers=tuple(layers),
        final_norm=False,
        dtype=dtype,  # type: ignore[arg-type]
        dim=dim,
        num_tokens=prefix + grid[0] * grid[1],
        preprocessing={"input_size": [3, 32, 32]},
    )


def write_tokens(path: Path, m: StoreMeta, splits: dict[str, tuple[np.ndarray, np.ndarray]], *,
                 classes: Sequence[str] | None = None, chunk_samples: int = 16) -> Path:
    """``splits``: name -> (tokens ``[n, T, D]`` in dataset order, labels ``[n]``); one view, every layer alike."""
    np_dtype = {"float16": np.float16, "float32": np.float32}[m.dtype]
    n_classes = max(int(y.max()) for _, y in splits.values()) + 1
    names = list(classes or [f"c{i}" for i in range(n_classes)])
    with create_store(path, m) as st:
        for name, (x, y) in splits.items():
            st.add_split(SplitSpec(name, y, [f"{name}/{i}.png" for i in range(len(y))], names, views=1,
                                   permutation_seed=5), chunk_samples=chunk_samples)
            stored = x[st.read_order(name)][:, None].astype(np_dtype)  # [n, 1, T, D]
            for layer in m.layers:
                for b in range(st.split(name).num_blocks):
                    lo, hi = st.block_range(name, b)
                    st.write_block(name, layer, b, stored[lo:hi])
    return path


def class_tokens(labels: np.ndarray, m: StoreMeta, *, noise: float = 1.0, seed: int = 0,
                 num_classes: int | None = None) -> np.ndarray:
    """``[n, T, D]``: class centre + noise per token; registers hold a large constant."""
    C = num_classes or int(labels.max()) + 1
    centres = np.random.default_rng(1234).standard_normal((C, m.dim)) * 2
    rng = np.random.default_rng(seed)
    x = centres[labels][:, None, :] + noise * rng.standard_normal((len(labels), m.num_tokens, m.dim))
    if m.layout.num_registers:
        x[:, m.layout.register_slice()] = 50.0
    return x.astype(np.float32)


def class_store(path: Path, *, n_train: int = 160, n_val: int = 64, num_classes: int = 4, dim: int = 16,
                noise: float = 4.0, dtype: str = "float16", registers: int = 0, cls: bool = True,
                layers: Sequence[int] = (0,)) -> Path:
    m = meta(dim=dim, registers=registers, cls=cls, layers=layers, dtype=dtype)
    ytr = np.arange(n_train) % num_classes
    yva = np.arange(n_val) % num_classes
    return write_tokens(path, m, {
        "train": (class_tokens(ytr, m, noise=noise, seed=1, num_classes=num_classes), ytr),
        "val": (class_tokens(yva, m, noise=noise, seed=2, num_classes=num_classes), yva),
    })
