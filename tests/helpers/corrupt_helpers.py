"""Tiny stores of every kind for the corruption campaign, and the ways to damage them.

Every store is written by the store API (no backbone): zarr unsharded, zarr sharded (format 1.1,
with per-chunk records), HDF5, and the committed format-1.0 stores (tests/data/v1_0, written by
the 1.0 writer). A case copies a pristine store, damages it one way, and checks the exact outcome
of `epcache verify` and of `epcache probe`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from epcache.cli import app
from epcache.store import BackboneMeta, SplitSpec, StoreMeta, TokenLayout, create_store

DATA = Path(__file__).resolve().parents[1] / "data"
runner = CliRunner()

PROBE = ["--head", "linear", "--tokens", "cls", "--layers", "1", "--epochs", "1", "--warmup", "0",
         "--batch-size", "8", "--optimizer", "adamw", "--device", "cpu", "--holdout", "0", "--no-progress"]


def meta(dtype: str = "float16") -> StoreMeta:
    return StoreMeta(
        backbone=BackboneMeta("vit_toy.corrupt", "random-init", "1.0", "random-init", None, 2),
        layout=TokenLayout(num_prefix=1, cls_index=0, num_registers=0, grid=(2, 2)),
        layers=(0, 1),
        final_norm=False,
        dtype=dtype,  # type: ignore[arg-type]
        dim=8,
        num_tokens=5,
        preprocessing={"input_size": [3, 32, 32], "mean": [0.485, 0.456, 0.406], "crop_pct": 0.875},
        views={"augmented": 0, "seed": 0},
        dataset={"kind": "imagefolder", "name": "toy"},
    )


def write(path: Path, *, shard: int | None = None, dtype: str = "float16") -> Path:
    """train (32 samples) and val (16), 3 classes, chunks of 4 samples; CLS channel 0 carries the label."""
    import ml_dtypes

    np_dtype = {"float16": np.float16, "float32": np.float32, "bfloat16": ml_dtypes.bfloat16}[dtype]
    with create_store(path, meta(dtype)) as st:
        for split, n in (("train", 32), ("val", 16)):
            labels = np.arange(n) % 3
            ids = [f"{split}/c{y}/img{i:03d}.png" for i, y in enumerate(labels)]
            st.add_split(SplitSpec(split, labels, ids, ["a", "b", "c"], permutation_seed=7),
                         chunk_samples=4, shard_samples=shard)
            y = labels[st.read_order(split)]
            for layer in (0, 1):
                x = np.random.default_rng(layer).standard_normal((n, 1, 5, 8)).astype(np.float32)
                x[:, 0, 0, 0] += 3 * y
                x = x.astype(np_dtype)
                for b in range(st.split(split).num_blocks):
                    lo, hi = st.block_range(split, b)
                    st.write_block(split, layer, b, x[lo:hi])
    return path


def pristine(root: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    return {
        "zarr": write(root / "plain.zarr"),
        "sharded": write(root / "sharded.zarr", shard=16),
        "h5": write(root / "plain.h5"),
        "v10": shutil.copytree(DATA / "v1_0" / "store.zarr", root / "v10.zarr"),
        "v10h5": Path(shutil.copy2(DATA / "v1_0" / "store.h5", root / "v10.h5")),
    }


def copy(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        return Path(shutil.copytree(src, dst))
    return Path(shutil.copy2(src, dst))


# ------------------------------------------------------------------------------------------ damage


def flip(path: Path, offset: int = 0) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x40]))


def chunk(store: Path, split: str, layer: int, block: int) -> Path:
    return store / "splits" / split / "layers" / str(layer) / "c" / str(block) / "0" / "0" / "0"


def h5_chunk(store: Path, split: str, layer: int, row: int) -> int:
    import h5py

    with h5py.File(store, "r") as f:
        return int(f[f"splits/{split}/layers/{layer}"].id.get_chunk_info_by_coord((row, 0, 0, 0)).byte_offset)


def h5_header(store: Path, name: str) -> int:
    """File address of an object's header (the root group for "/")."""
    import h5py

    with h5py.File(store, "r") as f:
        return int(h5py.h5o.get_info(f[name].id).addr)


def smash(path: Path, offset: int, n: int = 24) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\xff" * n)


def edit_json(path: Path, fn: object) -> None:
    doc = json.loads(path.read_text())
    fn(doc)  # type: ignore[operator]
    path.write_text(json.dumps(doc))


def edit_meta(store: Path, fn: object) -> None:
    """Edit the root document (zarr.json attributes, or the HDF5 root attribute)."""
    if store.is_dir():
        edit_json(store / "zarr.json", lambda d: fn(d["attributes"]["epcache"]))  # type: ignore[operator]
        return
    import h5py

    with h5py.File(store, "r+") as f:
        doc = json.loads(f.attrs["epcache"])
        fn(doc)  # type: ignore[operator]
        f.attrs["epcache"] = json.dumps(doc)


def edit_vector(store: Path, split: str, name: str, fn: object) -> None:
    """Rewrite labels/order/ids/records of a split through zarr or h5py (the bytes a tool would write)."""
    if store.is_dir():
        import zarr

        arr = zarr.open_array(store / "splits" / split / name, mode="r+")
        arr[...] = fn(arr[...])  # type: ignore[operator]
        return
    import h5py

    with h5py.File(store, "r+") as f:
        ds = f[f"splits/{split}/{name}"]
        data = ds.asstr()[...] if name == "ids" else ds[...]
        ds[...] = fn(np.asarray(data, dtype=object) if name == "ids" else data)  # type: ignore[operator]


def verify(store: Path) -> tuple[int, str]:
    r = runner.invoke(app, ["verify", str(store), "--no-progress"])
    return r.exit_code, r.output


def probe(store: Path, *extra: str) -> tuple[int, str]:
    r = runner.invoke(app, ["probe", "--store", str(store), *PROBE, *extra])
    return r.exit_code, r.output
