"""Tiny feature stores for the probe tests, written directly with the store API (no backbone).

``needle`` stores put the class in ONE random patch token per image: that token is a class
direction (plus a little noise) with a large norm, every other token is noise. A linear probe
on GAP sees the needle divided by the number of patches, buried in the mean of the noise;
attention can find the needle (its norm makes the logit ``q·x`` stand out) and read it whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import ml_dtypes
import numpy as np

from epcache.probe import ProbeConfig
from epcache.store import BackboneMeta, SplitSpec, StoreMeta, TokenLayout, create_store

D = 16
GRID = (4, 4)  # 16 patches + 1 CLS = 17 tokens


def make_meta(*, dim: int = D, layers: Sequence[int] = (0, 1), dtype: str = "float16", name: str = "vit_toy",
              weights: str = "random-init") -> StoreMeta:
    return StoreMeta(
        backbone=BackboneMeta(name, "random-init", "1.0", weights, None, 2),
        layout=TokenLayout(num_prefix=1, cls_index=0, num_registers=0, grid=GRID),
        layers=tuple(layers),
        final_norm=False,
        dtype=dtype,  # type: ignore[arg-type]
        dim=dim,
        num_tokens=1 + GRID[0] * GRID[1],
        preprocessing={"input_size": [3, 64, 64]},
    )


def needle_tokens(labels: np.ndarray, *, views: int = 1, dim: int = D, seed: int = 0, strength: float = 6.0,
                  num_classes: int = 4, class_seed: int = 0) -> np.ndarray:
    """``[N, V, T, D]`` float32: noise, plus the class direction at one random patch per sample-view.

    Class directions depend on ``class_seed`` only, so train and val splits share them.
    """
    rng = np.random.default_rng(seed)
    T = 1 + GRID[0] * GRID[1]
    x = rng.standard_normal((len(labels), views, T, dim)).astype(np.float32)
    basis = np.linalg.qr(np.random.default_rng(class_seed).standard_normal((dim, dim)))[0]
    dirs = basis[:num_classes]  # orthonormal class directions
    for i, y in enumerate(labels):
        if not 0 <= y < num_classes:  # skipped (-1) or deliberately bad labels get no needle
            continue
        for v in range(views):
            pos = 1 + rng.integers(GRID[0] * GRID[1])
            x[i, v, pos] = strength * dirs[y] + 0.3 * rng.standard_normal(dim)
    return x


def write_store(
    path: Path,
    *,
    n_train: int = 200,
    n_val: int = 80,
    num_classes: int = 4,
    views: int = 1,
    layers: Sequence[int] = (0, 1),
    chunk_samples: int = 16,
    dtype: str = "float16",
    seed: int = 0,
    train_labels: np.ndarray | None = None,
    val_labels: np.ndarray | None = None,
    val_label_override: np.ndarray | None = None,
    skip_blocks: Sequence[tuple[str, int, int]] = (),
    classes: Sequence[str] | None = None,
    val_classes: Sequence[str] | None = None,
    meta: StoreMeta | None = None,
    splits: Sequence[str] = ("train", "val"),
) -> Path:
    """A needle store with ``train`` and ``val`` splits (``splits`` names others: each is labelled like ``val``).

    ``skip_blocks`` lists (split, layer, block) left unwritten; ``val_label_override`` records other
    labels for ``val`` than the ones its tokens encode (same tokens, different labels).
    """
    meta = meta or make_meta(layers=layers, dtype=dtype)
    classes = list(classes or [f"c{i}" for i in range(num_classes)])
    labels = {
        "train": np.arange(n_train) % num_classes if train_labels is None else np.asarray(train_labels),
        "val": np.arange(n_val) % num_classes if val_labels is None else np.asarray(val_labels),
    }
    np_dtype = {"float16": np.float16, "float32": np.float32, "bfloat16": ml_dtypes.bfloat16}[meta.dtype]
    with create_store(path, meta) as st:
        for k, split in enumerate(splits):
            y = labels["train" if split == "train" else "val"]
            recorded = val_label_override if split == "val" and val_label_override is not None else y
            v = views if split == "train" else 1
            cls = classes if split == "train" or val_classes is None else list(val_classes)
            st.add_split(
                SplitSpec(split, recorded, [f"{split}/{i}.png" for i in range(len(y))], cls, views=v,
                          permutation_seed=3),
                chunk_samples=chunk_samples,
            )
            order = st.read_order(split)
            stored_y = y[order]
            for layer in meta.layers:
                x = needle_tokens(np.clip(stored_y, -1, None), views=v, dim=meta.dim, seed=seed + 100 * k + layer,
                                  num_classes=num_classes, class_seed=seed + layer)
                x = x.astype(np_dtype)
                for b in range(st.split(split).num_blocks):
                    if (split, layer, b) in skip_blocks:
                        continue
                    lo, hi = st.block_range(split, b)
                    st.write_block(split, layer, b, x[lo:hi])
    return path


def config(store: Path, **kw: object) -> ProbeConfig:
    """Small, fast defaults for tests."""
    base: dict[str, object] = {
        "store": str(store),
        "head": "ep",
        "queries": 4,
        "epochs": 4,
        "warmup": 1,
        "batch_size": 32,
        "lr": 0.05,
        "optimizer": "adamw",
        "holdout": 0.2,
        "device": "cpu",
        "refit": False,  # the selection model: tests of selection, fusion and outputs compare its numbers
        "linear_fit": "sgd",  # the trained heads only: tests of training count and compare the SGD rows
    }
    base.update(kw)
    return ProbeConfig(**base)  # type: ignore[arg-type]
