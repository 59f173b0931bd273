"""Synthetic dense data shared by the dense-head tests: class-readable patches, noisy pixel masks."""

from __future__ import annotations

import numpy as np

from epcache.probe.dense import DenseData

IGNORE = 255


def synth_dense(*, n_train: int = 40, n_eval: int = 10, grid: int = 4, patch: int = 4, dim: int = 16,
                classes: int = 4, noise: float = 0.3, seed: int = 0, dtype: type = np.float32, flip: float = 0.1,
                block: int = 1) -> DenseData:
    """Each patch has a class; its feature is the class prototype plus noise; its pixels carry the class,
    with a ``flip`` share of pixels set to a random class and 5% ignore pixels (so the majority still holds);
    ``block`` x ``block`` neighbouring patches share a class (smooth regions, as in real masks)."""
    rng = np.random.default_rng(seed)
    protos = rng.normal(size=(classes, dim)) * 2

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        cls = rng.integers(0, classes, size=(n, grid // block, grid // block))
        cls = np.repeat(np.repeat(cls, block, axis=1), block, axis=2)
        feats = protos[cls] + noise * rng.normal(size=(n, grid, grid, dim))
        px = np.repeat(np.repeat(cls, patch, axis=1), patch, axis=2).astype(np.uint8)
        flipped = rng.random(px.shape) < flip
        px[flipped] = rng.integers(0, classes, size=int(flipped.sum()))
        px[rng.random(px.shape) < 0.05] = IGNORE
        return feats.astype(dtype), px

    tf, tl = split(n_train)
    ef, el = split(n_eval)
    return DenseData(tf, tl, ef, el, num_classes=classes, ignore_index=IGNORE)
