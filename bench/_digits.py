"""Real images with class structure for the quality bench, built offline: scikit-learn's 8x8 digits.

Nothing can be downloaded here and no installed package ships pretrained vision weights, so the
backbone is either pretrained here on generated drawings (bench/_pretrain.py) or random-init; the
class structure comes from the images: 1,797 real handwritten digits (sklearn ships them),
upsampled to 32 px. A fixed eval split of real digits is set aside
first; the training pool is the remaining real digits plus lightly augmented copies of them (small
rotation and shift) up to the pool size, so no eval image, nor a copy of one, is ever trained on.
The pool is extracted once; each training size is a store holding a stratified draw of its rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from epcache.store import SplitSpec, create_store, open_store

CLASSES = 10
IMG = 32


def _image(pixels: np.ndarray, rng: np.random.Generator | None) -> object:
    """One 8x8 digit (0-16) as a 32 px RGB image; with ``rng``, rotated up to 10 degrees and shifted up to 2 px."""
    from PIL import Image

    im = Image.fromarray((pixels * (255 / 16)).astype(np.uint8), mode="L").resize((IMG, IMG), Image.BILINEAR)
    if rng is not None:
        dx, dy = rng.integers(-2, 3, size=2)
        im = im.rotate(float(rng.uniform(-10, 10)), resample=Image.BILINEAR, translate=(int(dx), int(dy)))
    return im.convert("RGB")


def write_digits(root: Path, per_class_train: int, per_class_eval: int, seed: int = 0) -> Path:
    """An ImageFolder ``root/{train,val}/<digit>/*.png``: eval real; train real, topped up by augmented copies."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    for c in range(CLASSES):
        idx = rng.permutation(np.flatnonzero(digits.target == c))
        ev, tr = idx[:per_class_eval], idx[per_class_eval:]
        (root / "val" / str(c)).mkdir(parents=True, exist_ok=True)
        (root / "train" / str(c)).mkdir(parents=True, exist_ok=True)
        for i, j in enumerate(ev):
            _image(digits.images[j], None).save(root / "val" / str(c) / f"{i:04d}.png")
        for i in range(per_class_train):
            real = i < len(tr)
            _image(digits.images[tr[i % len(tr)]], None if real else rng).save(root / "train" / str(c) / f"{i:04d}.png")
    return root


def digits_pool(root: Path, per_class_train: int, per_class_eval: int, weights: Path | None = None,
                model_kwargs: dict[str, int] | None = None, layers: str = "last") -> Path:
    """The digits through a small ViT-Tiny (4 blocks, patch 4, 32 px unless ``model_kwargs`` says otherwise):
    the last block's tokens (``layers="all"``: every block's, for the layer benches), one store.

    With ``weights`` (a local checkpoint) the extraction takes the real-weights path a user's
    ``epcache extract --weights`` takes; without, the network is random-init.
    """
    from epcache.extract import ExtractConfig, extract_store

    data = write_digits(root / "digits", per_class_train, per_class_eval)
    store = root / "digits_pool.zarr"
    kwargs = {"depth": 4, "patch_size": 4} if model_kwargs is None else dict(model_kwargs)
    extract_store(ExtractConfig(model="vit_tiny_patch16_224", data=data, out=store, random_init=weights is None,
                                weights=weights, img_size=IMG, model_kwargs=kwargs, workers=0, layers=layers,
                                batch_size=64),
                  progress=False)
    return store


def stratified(y: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """``per_class`` rows of each class, drawn without replacement; sorted row indices."""
    rng = np.random.default_rng(seed)
    picks = [rng.choice(np.flatnonzero(y == c), size=per_class, replace=False) for c in np.unique(y)]
    return np.sort(np.concatenate(picks))


def substore(pool: Path, out: Path, train_rows: np.ndarray) -> Path:
    """A store with the pool's meta and eval split and only ``train_rows`` of its train split (what a user has)."""
    src = open_store(pool)
    layer = src.meta.layers[-1]
    with create_store(out, src.meta) as st:
        for split, rows in (("train", train_rows), ("val", None)):
            y, x = src.read_labels(split), src.read_tokens(split, layer)
            ids = src.read_ids(split)
            if rows is not None:
                y, x, ids = y[rows], x[rows], [ids[i] for i in rows]
            classes = list(src.split(split).classes)
            st.add_split(SplitSpec(split, y, ids, classes, views=x.shape[1], permutation_seed=1), chunk_samples=64)
            order = st.read_order(split)
            x = x[order]
            for b in range(st.split(split).num_blocks):
                lo, hi = st.block_range(split, b)
                st.write_block(split, layer, b, np.ascontiguousarray(x[lo:hi]))
    return out
