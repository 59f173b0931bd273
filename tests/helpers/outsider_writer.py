"""A store writer that follows cache_layout.md and nothing else: it imports no epcache module.

It is what a lab's own pipeline would write (with plain zarr-python or h5py); the contract test
then runs `epcache info`, `verify` and `probe` on the result. Every rule used here is quoted
from cache_layout.md by section.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import google_crc32c
import numpy as np

CLASSES = ["ant", "bee", "cow"]
N = {"train": 30, "val": 12}
CHUNK = 4  # chunk_samples; unsharded, so block_samples == chunk_samples (§3.2)
T, D, GRID = 5, 8, (2, 2)  # one CLS + 2x2 patches (§2.1 num_tokens = num_prefix + h*w)


def dataset(split: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """ids, labels and float16 tokens [N, 1, T, D] in DATASET order."""
    n = N[split]
    labels = np.arange(n, dtype=np.int64) % len(CLASSES)
    ids = [f"{split}/{CLASSES[y]}/{i:03d}.jpg" for i, y in enumerate(labels)]
    x = np.random.default_rng(len(split)).standard_normal((n, 1, T, D)).astype(np.float32)
    x[np.arange(n), 0, 0, labels] += 8.0  # CLS channel y carries class y
    return ids, labels, x.astype("<f2")


def document() -> dict:
    """§2: the root document, every key written; the provenance key last (§2.3)."""
    doc: dict = {
        "format": "epcache-store",
        "format_version": "1.1",
        "backbone": {"name": "outsider_net.v1", "source": "checkpoint", "timm_version": "0.0",
                     "weights_sha256": "ab" * 32, "weights_file": "net.safetensors", "num_blocks": 3},
        "layout": {"num_prefix": 1, "cls_index": 0, "num_registers": 0, "grid": list(GRID)},
        "layers": [2],
        "final_norm": False,
        "dtype": "float16",
        "storage_dtype": "float16",
        "dim": D,
        "num_tokens": T,
        "preprocessing": {"input_size": [3, 32, 32], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
                          "note": "caf\u00e9"},
        "views": {"augmented": 0, "seed": 0},
        "dataset": {"kind": "csv", "name": "outsiders"},
        "extra": {"writer": "tests/helpers/outsider_writer.py"},
        "splits": {},
    }
    for split in N:
        ids, labels, _ = dataset(split)
        doc["splits"][split] = {
            "num_samples": N[split], "views": 1, "classes": CLASSES, "chunk_samples": CHUNK,
            "block_samples": CHUNK, "permutation_seed": 11,
            # §2.2: sha256 of the ids joined by \n (UTF-8) and of the labels as little-endian int64, dataset order
            "ids_sha256": hashlib.sha256("\n".join(ids).encode("utf-8")).hexdigest(),
            "labels_sha256": hashlib.sha256(labels.astype("<i8").tobytes()).hexdigest(),
        }
    # §2.3: drop extra, provenance, backbone.source, backbone.weights_file; reduce splits; canonical JSON
    red = {k: v for k, v in doc.items() if k not in ("extra", "provenance")}
    red["backbone"] = {k: v for k, v in doc["backbone"].items() if k not in ("source", "weights_file")}
    keep = ("num_samples", "views", "classes", "permutation_seed", "ids_sha256", "labels_sha256")
    red["splits"] = {n: {k: s[k] for k in keep} for n, s in doc["splits"].items()}
    canonical = json.dumps(red, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    doc["provenance"] = hashlib.sha256(canonical.encode("ascii")).hexdigest()
    return doc


def stored(split: str) -> dict[str, object]:
    """Everything of a split in STORED order (§3.1), with per-block records (§3.3)."""
    ids, labels, x = dataset(split)
    order = np.random.default_rng(11).permutation(N[split]).astype(np.int64)
    xs = np.ascontiguousarray(x[order])
    records = np.array(
        [google_crc32c.value(xs[b : b + CHUNK].tobytes()) for b in range(0, N[split], CHUNK)], dtype=np.int64
    )
    width = max(len(i.encode("utf-8")) for i in ids)
    utf8 = np.zeros((N[split], width), np.uint8)  # §3: ids_utf8, zero-padded UTF-8 bytes
    for row, i in enumerate(order):
        b = ids[i].encode("utf-8")
        utf8[row, : len(b)] = np.frombuffer(b, np.uint8)
    return {"ids": [ids[i] for i in order], "labels": labels[order], "order": order, "tokens": xs,
            "records": records, "ids_utf8": utf8}


def write_zarr(path: Path) -> Path:
    """§4.1 with zarr-python: directory store, '/' chunk keys, bytes codec only, every chunk written."""
    import zarr

    root = zarr.open_group(path, mode="w", zarr_format=3)
    cfg = {"write_empty_chunks": True}
    for split in N:
        s = stored(split)
        n = N[split]
        g = root.create_group(f"splits/{split}")
        for name in ("labels", "order"):
            a = g.create_array(name, shape=(n,), chunks=(n,), dtype="int64", compressors=None,
                               dimension_names=("sample",), config=cfg)
            a[...] = s[name]
        g.create_array("ids", shape=(n,), chunks=(n,), dtype=str, dimension_names=("sample",))[...] = np.asarray(
            s["ids"], dtype=object)
        u = s["ids_utf8"]
        g.create_array("ids_utf8", shape=u.shape, chunks=u.shape, dtype="uint8", compressors=None,  # type: ignore[union-attr]
                       dimension_names=("sample", "byte"), config=cfg)[...] = u
        tok = g.create_array("layers/2", shape=(n, 1, T, D), chunks=(CHUNK, 1, T, D), dtype="float16", fill_value=0,
                             compressors=None, dimension_names=("sample", "view", "token", "channel"),
                             attributes={"epcache_dtype": "float16"}, config=cfg)
        tok[...] = s["tokens"]
        rec = g.create_array("records/2", shape=(len(s["records"]),), chunks=(1,), dtype="int64",  # type: ignore[arg-type]
                             fill_value=-1, compressors=None, dimension_names=("block",))
        rec[...] = s["records"]  # §3.3: records only after the data
    root.attrs["epcache"] = document()
    return path


def write_h5(path: Path) -> Path:
    """§4.2 with h5py: the same tree, chunked token datasets, the document as a JSON string attribute."""
    import h5py

    with h5py.File(path, "w") as f:
        for split in N:
            s = stored(split)
            g = f.create_group(f"splits/{split}")
            g.create_dataset("labels", data=s["labels"].astype("<i8"))  # type: ignore[union-attr]
            g.create_dataset("order", data=s["order"].astype("<i8"))  # type: ignore[union-attr]
            g.create_dataset("ids", data=np.asarray(s["ids"], dtype=object), dtype=h5py.string_dtype("utf-8"))
            g.create_dataset("ids_utf8", data=s["ids_utf8"])
            g.create_dataset("layers/2", data=s["tokens"], chunks=(CHUNK, 1, T, D), fillvalue=0)
            g["layers/2"].attrs["epcache_dtype"] = "float16"
            g.create_dataset("records/2", data=s["records"], fillvalue=-1)
        f.attrs["epcache"] = json.dumps(document())
    return path
