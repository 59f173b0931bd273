"""What a dense label array adds to a store, per image: measured on stores extracted with and without masks.

Command (from the repository root)::

    python bench/dense_bytes.py            # 64 and 224 px inputs, 24 images per split
    python bench/dense_bytes.py --quick    # 32 px, 6 images per split: a smoke run

For each input size the demo's shapes dataset (with its masks) is extracted twice by the same
random-init ViT-Tiny (one layer, float16, one view): once with ``--masks`` and once without. The
table gives, per image, the raw bytes of a mask (H·W·itemsize per view) and of one layer's tokens
(T·D·2), and the bytes the masks arrays and their records take on disk (summed file sizes, so after
the store's compression), with their ratio to one stored layer. Masks are one byte per pixel before
compression; tokens are T·D·2 bytes per layer, so the ratio falls as the backbone widens.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from epcache.demo._shapes import ShapesConfig, make_shapes_dataset
from epcache.extract import ExtractConfig, extract_store
from epcache.store import open_store

MODEL = "vit_tiny_patch16_224"


def _tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _arrays_bytes(store: Path, kind: str) -> int:
    """On-disk bytes of every split's ``kind`` arrays (``masks`` or ``layers``) and their records."""
    total = 0
    for split in (store / "splits").iterdir():
        total += _tree_bytes(split / kind)
        if kind == "masks":
            total += _tree_bytes(split / "records" / "masks")
    return total


def measure(size: int, per_split: int, root: Path) -> dict[str, float]:
    """Per-image bytes of masks and of one layer's tokens, raw and on disk, at one input size."""
    shapes = ShapesConfig(num_classes=4, train_per_class=max(1, per_split // 4), val_per_class=max(1, per_split // 4),
                          size=size, object_size=max(8, size // 4), seed=0)
    data = make_shapes_dataset(root / f"data{size}", shapes, masks=True)
    out = root / f"s{size}.zarr"
    extract_store(ExtractConfig(model=MODEL, data=data, out=out, random_init=True, img_size=size, workers=0,
                                layers="-1", batch_size=16, masks=True), progress=False)
    with open_store(out) as store:
        n = sum(s.num_samples for s in store.splits.values())
        info = store.dense_info()
        assert info is not None
        h, w = info.size
        itemsize = 1 if info.dtype == "uint8" else 2
        tokens, dim = store.meta.layer_shape(store.meta.layers[-1])
    return {
        "size": size, "images": n, "mask_raw": h * w * itemsize, "tokens_raw": tokens * dim * 2,
        "mask_disk": _arrays_bytes(out, "masks") / n, "tokens_disk": _arrays_bytes(out, "layers") / n,
    }


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    sizes, per_split = ((32,), 6) if args.quick else ((64, 224), 24)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            rows.append(measure(size, per_split, Path(tmp)))
    print(f"{'input':>6} {'images':>6} {'mask raw':>10} {'layer raw':>10} {'mask disk':>10} {'layer disk':>11} "
          f"{'mask/layer (disk)':>18}")
    for r in rows:
        print(f"{r['size']:>4}px {r['images']:>6} {r['mask_raw']:>9,.0f}B {r['tokens_raw']:>9,.0f}B "
              f"{r['mask_disk']:>9,.0f}B {r['tokens_disk']:>10,.0f}B {r['mask_disk'] / r['tokens_disk']:>17.3f}x")
    return rows


if __name__ == "__main__":
    main()
