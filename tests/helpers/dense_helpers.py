"""A small store with per-pixel masks, shared by the dense probe, board and report tests.

The demo's shapes with masks through a random-init ViT with 8-px patches on 64-px images (an 8x8
grid): a patch token is a linear image of its pixels, so the shapes' colours are readable per patch
and a per-patch head beats the majority class by far.
"""

from __future__ import annotations

from pathlib import Path

from extract_helpers import tiny_config

from epcache.demo import ShapesConfig, make_shapes_dataset
from epcache.extract import extract_store

SHAPES = ShapesConfig(num_classes=3, train_per_class=8, val_per_class=3, size=64, object_size=24, clutter=2, seed=1)
VIT = {"depth": 2, "img_size": 64, "patch_size": 8}


def dense_store(root: Path, *, masks: bool = True, views: int = 1, keep: str | None = None, taps: str = "") -> Path:
    """The shapes (with masks, or plain class folders; ``views`` per train image) in ``root/store.zarr``."""
    out = root / "store.zarr"
    data = make_shapes_dataset(root / "data", SHAPES, masks=masks)
    extract_store(tiny_config(data, out, masks=masks, model_kwargs=VIT, views=views, keep=keep,
                              **({"taps": taps} if taps else {})), progress=False)
    return out
