"""Shared helpers of the verify, repair, crash and bad-input tests: stores, byte snapshots, damage."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from extract_helpers import TINY_VIT, TINY_VIT_KWARGS, make_imagefolder, tiny_config, write_image

from epcache.store import open_store

__all__ = [
    "TINY_VIT",
    "TINY_VIT_KWARGS",
    "chunk_file",
    "copy_store",
    "flip_byte",
    "h5_chunk_offset",
    "make_imagefolder",
    "store_arrays",
    "store_files",
    "tiny_config",
    "write_image",
]

LOCK_SUFFIXES = (".epcache.lock", ".lock")


def store_arrays(path: Path | str) -> dict[str, bytes]:
    """Every array of a store as stored bytes (tokens, records, labels, ids, order) and its metadata.

    Backend-independent: a zarr and an HDF5 store of the same extraction give the same snapshot.
    """
    out: dict[str, bytes] = {}
    with open_store(path) as st:
        doc = st.meta_document()
        out["meta"] = json.dumps(doc, sort_keys=True).encode()
        for split, s in st.splits.items():
            out[f"{split}/labels"] = st.read_labels(split).tobytes()
            out[f"{split}/order"] = st.read_order(split).tobytes()
            out[f"{split}/ids"] = "\n".join(st.read_ids(split)).encode()
            for layer in st.meta.layers:
                out[f"{split}/layers/{layer}"] = np.ascontiguousarray(
                    st._read_array(split, layer, 0, s.num_samples)
                ).tobytes()
                out[f"{split}/records/{layer}"] = st.block_records(split, layer).tobytes()
    return out


def store_files(path: Path) -> dict[str, bytes]:
    """Every file of a zarr store directory by relative path (writer locks left out)."""
    return {
        p.relative_to(path).as_posix(): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file() and not p.name.endswith(LOCK_SUFFIXES)
    }


def copy_store(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy2(src, dst)
    return dst


def chunk_file(store: Path, split: str, layer: int, block: int) -> Path:
    """A zarr store's file for a block (cache_layout.md §4.1: ``c/<block>/0/0/0``)."""
    return store / "splits" / split / "layers" / str(layer) / "c" / str(block) / "0" / "0" / "0"


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def h5_chunk_offset(path: Path, split: str, layer: int, row: int) -> tuple[int, int]:
    """(byte offset, size) in the HDF5 file of the chunk holding stored row ``row``."""
    import h5py

    with h5py.File(path, "r") as f:
        info = f[f"splits/{split}/layers/{layer}"].id.get_chunk_info_by_coord((row, 0, 0, 0))
        return int(info.byte_offset), int(info.size)
