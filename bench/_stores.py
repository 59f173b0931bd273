"""The two stores the quality benches probe: the demo's random-init ViT tokens and class-structured
synthetic tokens with outlier channels (ViT tokens have a few channels far larger than the rest)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from epcache.store import BackboneMeta, SplitSpec, StoreMeta, TokenLayout, create_store


def demo_store(root: Path, quick: bool, *, name: str = "demo.zarr") -> Path:
    """The demo's shapes images through a random-init 4-block ViT-Tiny (patch 8, 64 px), last layer."""
    from epcache.demo._shapes import ShapesConfig, make_shapes_dataset
    from epcache.extract import ExtractConfig, extract_store

    cfg = ShapesConfig(num_classes=4, train_per_class=60 if quick else 150, val_per_class=60 if quick else 150, size=64)
    data = make_shapes_dataset(root / "data", cfg)
    store = root / name
    extract_store(ExtractConfig(model="vit_tiny_patch16_224", data=data, out=store, random_init=True, img_size=64,
                                model_kwargs={"depth": 4, "patch_size": 8}, workers=0, layers="last", batch_size=32),
                  progress=False)
    return store


def synthetic_store(root: Path, quick: bool, *, outlier_scale: float, name: str = "synthetic.zarr") -> Path:
    """20 Gaussian classes in D=64 over a 3x3 grid + CLS; channels 0-3 scaled by ``outlier_scale``."""
    C, D, grid = 20, 64, (3, 3)
    n_train, n_val = (1000, 600) if quick else (2000, 2000)
    meta = StoreMeta(
        backbone=BackboneMeta("synthetic", "random-init", "1.0", "random-init", None, 1),
        layout=TokenLayout(num_prefix=1, cls_index=0, num_registers=0, grid=grid), layers=(0,), final_norm=False,
        dtype="float16", dim=D, num_tokens=1 + grid[0] * grid[1], preprocessing={"input_size": [3, 48, 48]},
    )
    rng = np.random.default_rng(0)
    means = rng.standard_normal((C, D)) * 0.35
    scale = np.ones(D)
    scale[:4] = outlier_scale
    path = root / name
    with create_store(path, meta) as st:
        for split, n in (("train", n_train), ("val", n_val)):
            y = rng.integers(C, size=n)
            st.add_split(SplitSpec(split, y, [f"{split}/{i}" for i in range(n)], [f"c{i}" for i in range(C)],
                                   views=1, permutation_seed=1), chunk_samples=64)
            ys = y[st.read_order(split)]
            x = (means[ys][:, None, None, :] + rng.standard_normal((n, 1, meta.num_tokens, D))) * scale
            for b in range(st.split(split).num_blocks):
                lo, hi = st.block_range(split, b)
                st.write_block(split, 0, b, x[lo:hi].astype(np.float16))
    return path
