"""Shared helpers of the extract tests: generated image datasets and tiny-model configs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from epcache.extract import ExtractConfig

TINY_VIT = "vit_tiny_patch16_224"
TINY_VIT_KWARGS: dict[str, Any] = {"depth": 2, "img_size": 32}
TINY_CONVNET = "resnet18"


def write_image(path: Path, rng: np.random.Generator, *, size: tuple[int, int] = (40, 48)) -> Path:
    """A random RGB image; JPEG or PNG by suffix, in a random-ish size so resize/crop do work."""
    h, w = size
    pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def make_imagefolder(
    root: Path,
    *,
    splits: dict[str, int] | None = None,
    classes: Sequence[str] = ("cat", "dog", "eel"),
    seed: int = 0,
) -> Path:
    """``root/<split>/<class>/<i>.{png,jpg}`` with ``splits[name]`` images per split, classes cycled."""
    rng = np.random.default_rng(seed)
    for split, n in (splits or {"train": 12, "val": 6}).items():
        for i in range(n):
            cls = classes[i % len(classes)]
            ext = "png" if i % 2 else "jpg"
            size = (int(rng.integers(32, 64)), int(rng.integers(32, 64)))
            write_image(root / split / cls / f"img_{i:04d}.{ext}", rng, size=size)
    return root


def tiny_config(data: Path, out: Path, **overrides: Any) -> ExtractConfig:
    """A random-init two-block ViT at 32 px on CPU, no progress noise, small blocks."""
    kwargs: dict[str, Any] = {
        "model": TINY_VIT,
        "data": data,
        "out": out,
        "random_init": True,
        "model_kwargs": TINY_VIT_KWARGS,
        "batch_size": 4,
        "workers": 0,
        "chunk_samples": 4,
        "allow_duplicate": True,  # tests build identical reference stores side by side on purpose
    }
    kwargs.update(overrides)
    return ExtractConfig(**kwargs)


def read_all(path: Path | str) -> dict[tuple[str, int], np.ndarray]:
    """Every token array of a store, keyed by (split, layer), plus labels/ids under layer -1/-2."""
    from epcache.store import open_store

    out: dict[tuple[str, int], Any] = {}
    with open_store(path) as store:
        for split in store.splits:
            out[(split, -1)] = store.read_labels(split)
            out[(split, -2)] = np.asarray(store.read_ids(split))
            for layer in store.meta.layers:
                out[(split, layer)] = store.read_tokens(split, layer)
    return out
