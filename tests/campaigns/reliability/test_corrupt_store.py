"""Corruption campaign: a store damaged on purpose, then `epcache verify` and `epcache probe` on it.

Each case states the exact outcome of both commands: verify exits 1 (or 2 where nothing is left
to open) with the problem named; probe exits 2 with a one-line message naming the check that
failed, never trains, never writes a row. Cases cover zarr (unsharded and sharded, format 1.1),
HDF5 and the committed format-1.0 stores; bytes, records, labels, ids, order, the metadata
document and the arrays' own metadata.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from corrupt_helpers import (
    chunk,
    copy,
    edit_json,
    edit_meta,
    edit_vector,
    flip,
    h5_chunk,
    h5_header,
    pristine,
    probe,
    runner,
    smash,
    verify,
)

from epcache.cli import app


@dataclass(frozen=True)
class Case:
    kind: str  # zarr | sharded | h5 | v10 | v10h5
    damage: Callable[[Path], None]
    verify_says: str  # substring of verify's report (exit code 1)
    probe_says: str  # substring of probe's one-line error (exit code 2)
    verify_code: int = 1


def _layer_json(p: Path, split: str = "train", layer: int = 1) -> Path:
    return p / "splits" / split / "layers" / str(layer) / "zarr.json"


def _swap(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a[[0, 1]] = a[[1, 0]]
    return a


def _bump_label(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a[0] = (a[0] + 1) % 3
    return a


def _edit_id(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=object).copy()
    a[0] = "train/c0/forged.png"
    return a


def _set(d: dict, keys: str, value: object) -> None:
    *path, last = keys.split(".")
    for k in path:
        d = d[k]
    d[last] = value


def _inner(p: Path, nth: int) -> int:
    """Byte offset of the nth inner chunk in a shard file (index at the end, cache_layout.md §4.1)."""
    data = chunk(p, "train", 1, 0).read_bytes()
    index = np.frombuffer(data[-(16 * 4 + 4) : -4], "<u8").reshape(4, 2)
    return int(index[nth, 0])


CRC = "fails its crc32c check"
CASES: dict[str, Case] = {
    # ---- token bytes
    "zarr-byte-flip-train": Case("zarr", lambda p: flip(chunk(p, "train", 1, 2), 17), "checksum", CRC),
    "zarr-byte-flip-val": Case("zarr", lambda p: flip(chunk(p, "val", 1, 1), 3), "checksum", CRC),
    "zarr-chunk-deleted": Case(
        "zarr", lambda p: chunk(p, "train", 1, 0).unlink(), "the chunk file is missing", "is absent although block 0"
    ),
    "zarr-chunk-truncated": Case(
        "zarr", lambda p: chunk(p, "train", 1, 3).write_bytes(b"\0" * 10), "unreadable", "truncated chunk"
    ),
    "sharded-inner-chunk-flip": Case(
        "sharded", lambda p: flip(chunk(p, "train", 1, 0), _inner(p, 2) + 5), "checksum", "its per-chunk record"
    ),
    "sharded-shard-deleted": Case(
        "sharded", lambda p: chunk(p, "train", 1, 1).unlink(), "the chunk file is missing", "is absent although"
    ),
    "sharded-index-damaged": Case(
        "sharded",
        lambda p: smash(chunk(p, "train", 1, 0), chunk(p, "train", 1, 0).stat().st_size - 30, 26),
        "unreadable",
        "cannot read chunk",
    ),
    "sharded-val-flip": Case("sharded", lambda p: flip(chunk(p, "val", 1, 0), 40), "checksum", CRC),
    "v10-sharded-flip": Case(
        "v10", lambda p: flip(chunk(p, "train", 1, 1), 9), "checksum", "shard 1 (rows 8-16) of 'train' layer 1 fails"
    ),
    "h5-byte-flip": Case("h5", lambda p: flip(p, h5_chunk(p, "train", 1, 8) + 11), "checksum", CRC),
    "v10h5-byte-flip": Case("v10h5", lambda p: flip(p, h5_chunk(p, "val", 1, 4) + 2), "checksum", CRC),
    # ---- block records
    "zarr-record-forged": Case(
        "zarr", lambda p: edit_vector(p, "train", "records/1", lambda r: r + 1), "checksum", CRC
    ),
    "zarr-record-negative": Case(
        "zarr", lambda p: edit_vector(p, "train", "records/1", lambda r: np.full_like(r, -7)), "bad-record",
        "fails the records check",
    ),
    "sharded-chunk-record-forged": Case(
        "sharded", lambda p: edit_vector(p, "train", "chunk_records/1", lambda r: r + 1),
        "per-chunk records of chunk(s)", "its per-chunk record",
    ),
    # ---- labels, ids, order
    "zarr-label-edited": Case(
        "zarr", lambda p: edit_vector(p, "train", "labels", _bump_label), "labels do not match labels_sha256",
        "fails the split 'train' check",
    ),
    "zarr-labels-shuffled": Case(
        "zarr", lambda p: edit_vector(p, "train", "labels", lambda a: np.roll(a, 1)),
        "labels do not match labels_sha256", "fails the split 'train' check",
    ),
    "zarr-val-labels-shuffled": Case(
        "zarr", lambda p: edit_vector(p, "val", "labels", lambda a: np.roll(a, 3)),
        "labels do not match labels_sha256", "fails the split 'val' check",
    ),
    "sharded-labels-shuffled": Case(
        "sharded", lambda p: edit_vector(p, "train", "labels", lambda a: a[::-1].copy()),
        "labels do not match labels_sha256", "fails the split 'train' check",
    ),
    "h5-label-edited": Case(
        "h5", lambda p: edit_vector(p, "train", "labels", _bump_label), "labels do not match labels_sha256",
        "fails the split 'train' check",
    ),
    "v10-labels-shuffled": Case(
        "v10", lambda p: edit_vector(p, "train", "labels", lambda a: np.roll(a, 2)),
        "labels do not match labels_sha256", "fails the split 'train' check",
    ),
    "zarr-id-edited": Case(
        "zarr", lambda p: edit_vector(p, "train", "ids", _edit_id), "ids do not match ids_sha256",
        "ids do not match ids_sha256",
    ),
    "h5-id-edited": Case(
        "h5", lambda p: edit_vector(p, "train", "ids", _edit_id), "ids do not match ids_sha256",
        "ids do not match ids_sha256",
    ),
    "zarr-ids-mirror-edited": Case(
        "zarr", lambda p: edit_vector(p, "train", "ids_utf8", lambda a: a[::-1].copy()),
        "ids_utf8 mirror differs", "ids_utf8 mirror differs",
    ),
    "zarr-order-swapped": Case(
        "zarr", lambda p: edit_vector(p, "train", "order", _swap), "order is not the permutation of seed 7",
        "order is not the permutation of seed 7",
    ),
    # ---- the metadata document
    "zarr-backbone-renamed": Case(
        "zarr", lambda p: edit_meta(p, lambda d: _set(d, "backbone.name", "vit_huge_patch14_224.mae")),
        "metadata: the stored provenance key", "fails the provenance check",
    ),
    "h5-backbone-renamed": Case(
        "h5", lambda p: edit_meta(p, lambda d: _set(d, "backbone.name", "resnet50.a1_in1k")),
        "metadata: the stored provenance key", "fails the provenance check",
    ),
    "v10-backbone-renamed": Case(
        "v10", lambda p: edit_meta(p, lambda d: _set(d, "backbone.name", "resnet50.a1_in1k")),
        "metadata: the stored provenance key", "fails the provenance check",
    ),
    "zarr-classes-renamed": Case(
        "zarr", lambda p: edit_meta(p, lambda d: _set(d, "splits.train.classes", ["x", "y", "z"])),
        "metadata: the stored provenance key", "fails the provenance check",
    ),
    "zarr-provenance-forged": Case(
        "zarr", lambda p: edit_meta(p, lambda d: _set(d, "provenance", "0" * 64)),
        "metadata: the stored provenance key", "fails the provenance check",
    ),
    "zarr-preprocessing-added-key": Case(
        "zarr", lambda p: edit_meta(p, lambda d: _set(d, "preprocessing.interpolation", "bicubic")),
        "metadata: the stored provenance key", "fails the provenance check",
    ),
    "zarr-labels-sha-and-key-forged": Case(
        "zarr", lambda p: _forge_consistent_document(p), "labels do not match labels_sha256",
        "fails the split 'train' check",
    ),
    "zarr-meta-key-removed": Case(
        "zarr", lambda p: edit_meta(p, lambda d: d.pop("dim")), "missing the key 'dim'", "missing the key 'dim'"
    ),
    "zarr-root-json-truncated": Case(
        "zarr", lambda p: (p / "zarr.json").write_text((p / "zarr.json").read_text()[:200]), "not valid JSON",
        "is not an epcache store",
    ),
    "zarr-future-version": Case(
        "zarr", lambda p: edit_meta(p, lambda d: _set(d, "format_version", "2.0")), "format version '2.0'",
        "format version '2.0'",
    ),
    # ---- the arrays' own metadata
    "zarr-dtype-int16": Case(
        "zarr", lambda p: edit_json(_layer_json(p), lambda d: _set(d, "data_type", "int16")),
        "says dtype <i2", "fails the array metadata check",
    ),
    "zarr-dtype-float32": Case(
        "zarr", lambda p: edit_json(_layer_json(p), lambda d: _set(d, "data_type", "float32")),
        "says dtype <f4", "fails the array metadata check",
    ),
    "zarr-big-endian": Case(
        "zarr", lambda p: edit_json(_layer_json(p), lambda d: _set(d, "codecs", [
            {"name": "bytes", "configuration": {"endian": "big"}}])),
        "says dtype >f2", "fails the array metadata check",
    ),
    "zarr-chunking-edited": Case(
        "zarr", lambda p: edit_json(_layer_json(p, "val"), lambda d: _set(
            d, "chunk_grid", {"name": "regular", "configuration": {"chunk_shape": [8, 1, 5, 8]}})),
        "the array is chunked (8, 1, 5, 8)", "fails the array metadata check",
    ),
    "sharded-dtype-int16": Case(
        "sharded", lambda p: edit_json(_layer_json(p), lambda d: _set(d, "data_type", "int16")),
        "says dtype <i2", "fails the array metadata check",
    ),
    "zarr-shape-edited": Case(
        "zarr", lambda p: edit_json(_layer_json(p), lambda d: _set(d, "shape", [30, 1, 5, 8])),
        "has shape (30, 1, 5, 8)", "has shape (30, 1, 5, 8)",
    ),
    "zarr-dtype-nonsense": Case(
        "zarr", lambda p: edit_json(_layer_json(p), lambda d: _set(d, "data_type", "nonsense")),
        "array layers/1 of split 'train' is damaged (ValueError", "array layers/1 of split 'train' is damaged",
    ),
    "zarr-shape-not-a-list": Case(
        "zarr", lambda p: edit_json(_layer_json(p), lambda d: _set(d, "shape", "abc")),
        "is damaged (TypeError", "array layers/1 of split 'train' is damaged",
    ),
    "zarr-layer-json-garbage": Case(
        "zarr", lambda p: _layer_json(p).write_text("{not json"), "is damaged (JSONDecodeError",
        "array layers/1 of split 'train' is damaged",
    ),
    "zarr-labels-json-garbage": Case(
        "zarr", lambda p: (p / "splits/train/labels/zarr.json").write_text("[]"), "cannot read order/labels/ids",
        "array /labels of split 'train' is damaged",
    ),
    # ---- HDF5 object headers
    "h5-dataset-header-damaged": Case(
        "h5", lambda p: smash(p, h5_header(p, "splits/train/labels")), "damaged", "damaged",
    ),
    "h5-layer-header-damaged": Case(
        "h5", lambda p: smash(p, h5_header(p, "splits/train/layers/1")), "damaged", "damaged",
    ),
    "h5-root-header-damaged": Case("h5", lambda p: smash(p, h5_header(p, "/"), 40), "damaged", "damaged"),
}


def _forge_consistent_document(p: Path) -> None:
    """Shuffle the labels AND recompute the provenance key: only the labels fingerprint can tell."""
    from epcache.store.layout.provenance import provenance_of_document

    edit_vector(p, "train", "labels", lambda a: np.roll(a, 1))

    def fix(d: dict) -> None:
        d["provenance"] = provenance_of_document(d)

    edit_meta(p, lambda d: (_set(d, "backbone.name", "forged"), fix(d)))


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return pristine(tmp_path_factory.mktemp("pristine"))


@pytest.mark.reliability_corruption
@pytest.mark.parametrize("name", sorted(CASES))
def test_corruption(name: str, stores: dict[str, Path], tmp_path: Path) -> None:
    case = CASES[name]
    src = stores[case.kind]
    store = copy(src, tmp_path / src.name)
    case.damage(store)
    code, out = verify(store)
    assert code == case.verify_code, out
    assert case.verify_says in out, out
    assert "Traceback" not in out
    info = runner.invoke(app, ["info", str(store)])
    assert info.exception is None or isinstance(info.exception, SystemExit), info.exception  # never a traceback
    assert info.exit_code in (0, 2), info.output
    if name in ("h5-layer-header-damaged", "h5-root-header-damaged"):  # info opens these (not the labels)
        assert info.exit_code == 2 and "damaged" in info.output and info.output.startswith("error: "), info.output
    code, out = probe(store, "--out", str(tmp_path / "run"))
    assert code == 2, out
    assert case.probe_says in out, out
    assert "Traceback" not in out and out.startswith("error: ") and len(out.strip().splitlines()) == 1, out
    assert not (tmp_path / "run" / "results.jsonl").exists() or not (tmp_path / "run" / "results.jsonl").read_text()


@pytest.mark.parametrize("kind", ["zarr", "sharded", "h5", "v10", "v10h5"])
def test_pristine_stores_pass_both(kind: str, stores: dict[str, Path], tmp_path: Path) -> None:
    """The baseline every case departs from: clean, and probe trains on it."""
    code, out = verify(stores[kind])
    assert code == 0, out
    code, out = probe(stores[kind], "--out", str(tmp_path / "run"))
    assert code == 0, out
