"""Per-pixel masks in a store (cache_layout.md §3.6): round trips, records, completeness, verify, documents."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from epcache.cli import app
from epcache.errors import MissingMasksError, ShapeMismatchError
from epcache.store import (
    BackboneMeta,
    FeatureStore,
    SplitSpec,
    StoreMeta,
    TokenLayout,
    create_store,
    open_store,
    verify_store,
)
from epcache.store.layout.dense import DenseInfo, dense_document, mask_dtype, masks_fingerprint
from epcache.store.layout.provenance import provenance_of_document
from epcache.store.read.masks import MASKS

runner = CliRunner()
SIZE = (16, 24)
CLASSES = ("background", "cat", "dog")


def _meta(dense: bool = True, dtype: str = "uint8") -> StoreMeta:
    meta = StoreMeta(
        backbone=BackboneMeta("vit_test", "random-init", "1.0", "ab" * 32, None, 3),
        layout=TokenLayout(num_prefix=1, cls_index=0, num_registers=0, grid=(1, 2)),
        layers=(0, 2),
        final_norm=False,
        dtype="float16",
        dim=4,
        num_tokens=3,
        views={"augmented": 1, "seed": 0},
        dataset={"kind": "imagefolder", "name": "toy"},
    )
    info = DenseInfo(CLASSES, 255 if dtype == "uint8" else 65535, dtype, SIZE)
    return dataclasses.replace(meta, dense=dense_document(info)) if dense else meta


def _spec(n: int = 10, views: int = 2, prints: bool = True) -> SplitSpec:
    return SplitSpec("train", np.arange(n) % 3, [f"i/{k:03d}.png" for k in range(n)], list(CLASSES), views, 3,
                     masks_sha256=masks_fingerprint(f"{k:064x}" for k in range(n)) if prints else None)


def _masks(n: int, views: int, dtype: str = "uint8", seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = rng.integers(0, len(CLASSES), size=(n, views, *SIZE)).astype(dtype)
    m[:, :, 0, 0] = 255 if dtype == "uint8" else 65535  # an ignored pixel in every mask
    return m


def _fill(store: FeatureStore, masks: np.ndarray | None, *, skip: int | None = None) -> None:
    s = store.split("train")
    for b in range(s.num_blocks):
        start, stop = store.block_range("train", b)
        for layer in store.meta.layers:
            store.write_block("train", layer, b, np.ones((stop - start, s.views, 3, 4), np.float16))
        if masks is not None and b != skip:
            store.write_masks_block("train", b, masks[start:stop])


@pytest.fixture(params=["zarr", "h5"])
def fmt(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_round_trip_in_stored_rows_and_views(tmp_path: Path, fmt: str, dtype: str) -> None:
    loc = tmp_path / f"s.{fmt}"
    masks = _masks(10, 2, dtype)
    with create_store(loc, _meta(dtype=dtype)) as store:
        store.add_split(_spec(), chunk_samples=4)
        assert store.missing_blocks("train") == [0, 1, 2]
        _fill(store, masks)
        assert store.is_complete()
    with open_store(loc) as store:
        info = store.dense_info()
        assert info == DenseInfo(CLASSES, 255 if dtype == "uint8" else 65535, dtype, SIZE)
        assert store.has_masks("train")
        rows = [7, 0, 3, 3, 9]
        for view in (0, 1):
            got = store.read_masks("train", rows, view=view)
            assert got.dtype == np.dtype(dtype) and got.shape == (5, *SIZE)
            np.testing.assert_array_equal(got, masks[rows, view])
        np.testing.assert_array_equal(store.read_masks("train", slice(2, 6)), masks[2:6, 0])
        np.testing.assert_array_equal(store.read_mask_rows("train", 4, 8), masks[4:8])
        with pytest.raises(IndexError):
            store.read_masks("train", [10])
        with pytest.raises(IndexError):
            store.read_masks("train", [0], view=2)
        doc = store.meta_document()
        assert doc["dense"]["masks_sha256"] == {"train": _spec().masks_sha256}
        assert verify_store(loc).ok


def test_mask_blocks_count_for_completeness_and_resume(tmp_path: Path, fmt: str) -> None:
    loc = tmp_path / f"s.{fmt}"
    with create_store(loc, _meta()) as store:
        store.add_split(_spec(), chunk_samples=4)
        _fill(store, _masks(10, 2), skip=1)
        assert store.missing_blocks("train") == [1]  # every layer is written, block 1's masks are not
        assert store.missing_blocks("train", 0) == []  # one layer's own records say nothing of the masks
        assert not store.is_complete()
    report = verify_store(loc)
    assert not report.ok
    assert any("masks block 1: missing" in p for p in report.problems)
    assert "fix: re-run the same `epcache extract` command: it resumes" in report.format_text()


def test_wrong_mask_block_is_refused(tmp_path: Path, fmt: str) -> None:
    with create_store(tmp_path / f"s.{fmt}", _meta()) as store:
        store.add_split(_spec(), chunk_samples=4)
        with pytest.raises(ShapeMismatchError, match="must be uint8"):
            store.write_masks_block("train", 0, np.zeros((4, 2, 8, 8), np.uint8))
        with pytest.raises(ShapeMismatchError, match="must be uint8"):
            store.write_masks_block("train", 0, np.zeros((4, 2, *SIZE), np.uint16))
        assert store.mask_records("train").tolist() == [-1, -1, -1]


def test_split_of_a_mask_store_needs_its_fingerprint(tmp_path: Path, fmt: str) -> None:
    with create_store(tmp_path / f"s.{fmt}", _meta()) as store, pytest.raises(ShapeMismatchError, match="masks_sha256"):
        store.add_split(_spec(prints=False), chunk_samples=4)


def test_store_without_masks_keeps_its_document(tmp_path: Path, fmt: str) -> None:
    """No ``dense`` key, no masks arrays: the document and provenance key of every other store are unchanged."""
    loc = tmp_path / f"s.{fmt}"
    with create_store(loc, _meta(dense=False)) as store:
        store.add_split(_spec(prints=False), chunk_samples=4)
        _fill(store, None)
        assert store.is_complete()
        doc = store.meta_document()
        assert "dense" not in doc and "dense" not in json.dumps(doc["splits"])
        assert store.dense_info() is None and not store.has_masks("train")
        assert store.missing_mask_blocks("train") == []
        with pytest.raises(MissingMasksError, match="--masks"):
            store.read_masks("train", [0])
    reduced = {k: v for k, v in doc.items() if k != "dense"}
    assert provenance_of_document(reduced) == doc["provenance"]


def test_masks_fingerprint_is_in_the_provenance_key(tmp_path: Path) -> None:
    with create_store(tmp_path / "a.zarr", _meta()) as a, create_store(tmp_path / "b.zarr", _meta()) as b:
        a.add_split(_spec(), chunk_samples=4)
        other = dataclasses.replace(_spec(), masks_sha256=masks_fingerprint(["0" * 64]))
        b.add_split(other, chunk_samples=4)
        assert a.provenance != b.provenance


def test_sharded_split_shards_masks_like_tokens(tmp_path: Path) -> None:
    loc = tmp_path / "s.zarr"
    masks = _masks(20, 1)
    with create_store(loc, _meta()) as store:
        s = store.add_split(_spec(n=20, views=1), chunk_samples=2, shard_samples=8)
        assert s.block_samples == 8
        _fill(store, masks)
    import zarr

    arr = zarr.open_group(str(loc), mode="r")["splits/train/masks"]
    assert arr.chunks == (2, 1, *SIZE) and arr.shards == (8, 1, *SIZE)
    with open_store(loc) as store:
        np.testing.assert_array_equal(store.read_masks("train", np.arange(20)), masks[:, 0])
    assert verify_store(loc).ok


def _edit_chunk(loc: Path, fmt: str) -> None:
    """Change one mask value of block 1 behind the store's back, as damage or a hand edit would."""
    if fmt == "zarr":
        import zarr

        arr = zarr.open_group(str(loc), mode="a")["splits/train/masks"]
        arr[5, 0, 3, 3] = (int(arr[5, 0, 3, 3]) + 1) % 3
    else:
        import h5py

        with h5py.File(loc, "a") as f:
            ds = f["splits/train/masks"]
            ds[5, 0, 3, 3] = (int(ds[5, 0, 3, 3]) + 1) % 3


def test_verify_catches_an_edited_mask_chunk(tmp_path: Path, fmt: str) -> None:
    loc = tmp_path / f"s.{fmt}"
    with create_store(loc, _meta()) as store:
        store.add_split(_spec(), chunk_samples=4)
        _fill(store, _masks(10, 2))
    assert verify_store(loc).ok
    _edit_chunk(loc, fmt)
    report = verify_store(loc)
    assert not report.ok
    found = [p for p in report.problems if "masks block" in p]
    assert len(found) == 1 and "split 'train' masks block 1: checksum" in found[0]
    r = runner.invoke(app, ["verify", str(loc), "--no-progress"])
    assert r.exit_code != 0 and "masks block 1: checksum" in r.output
    assert "masks changed after extraction are not repaired" in r.output and "metadata itself" not in r.output


def test_records_are_their_own_array(tmp_path: Path, fmt: str) -> None:
    """``records/masks`` holds the crc32c of each block's bytes, as a layer's records do (§3.3)."""
    import google_crc32c

    loc = tmp_path / f"s.{fmt}"
    masks = _masks(10, 2)
    with create_store(loc, _meta()) as store:
        store.add_split(_spec(), chunk_samples=4)
        _fill(store, masks)
        rec = store._read_records("train", MASKS)
    want = [google_crc32c.value(np.ascontiguousarray(masks[s:s + 4]).tobytes()) for s in (0, 4, 8)]
    assert rec.tolist() == want


def test_mask_dtype_grows_for_many_classes() -> None:
    assert mask_dtype(255, 255) == "uint8"
    assert mask_dtype(256, 65535) == "uint16"
    assert mask_dtype(3, 300) == "uint16"


def test_info_shows_the_masks(tmp_path: Path) -> None:
    loc = tmp_path / "s.zarr"
    with create_store(loc, _meta()) as store:
        store.add_split(_spec(), chunk_samples=4)
        _fill(store, _masks(10, 2))
    r = runner.invoke(app, ["info", str(loc)])
    assert r.exit_code == 0, r.output
    line = next(x for x in r.output.splitlines() if x.startswith("masks"))
    assert "16x24 uint8" in line and "3 classes (background, cat, dog)" in line and "ignore index 255" in line
    assert "splits train" in line


def test_the_layout_example_reads_masks_without_epcache(tmp_path: Path, fmt: str) -> None:
    """cache_layout.md §3.6's reading code, verbatim, on a store of each backend."""
    import re

    import h5py
    import zarr

    text = (Path(__file__).resolve().parents[2] / "cache_layout.md").read_text()
    section = text.split("### 3.6 Dense labels")[1].split("\n## ")[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    loc = tmp_path / f"s.{fmt}"
    masks = _masks(10, 2)
    with create_store(loc, _meta()) as store:
        spec = _spec()
        store.add_split(dataclasses.replace(spec, name="val"), chunk_samples=4)
        s = store.split("val")
        for b in range(s.num_blocks):
            start, stop = store.block_range("val", b)
            store.write_masks_block("val", b, masks[start:stop])
    if fmt == "zarr":
        g = zarr.open_group(str(loc), mode="r")
        meta = g.attrs["epcache"]
    else:
        g = h5py.File(loc, "r")
        meta = json.loads(g.attrs["epcache"])
    ns = {"g": g, "meta": meta, "np": np}
    exec(compile(code, "cache_layout.md §3.6", "exec"), ns)
    np.testing.assert_array_equal(ns["m"], masks[:64, 0])
    assert ns["names"] == ["background", "cat", "dog"]


def test_convert_copies_the_masks(tmp_path: Path) -> None:
    src, dst = tmp_path / "s.zarr", tmp_path / "c.h5"
    masks = _masks(10, 2)
    with create_store(src, _meta()) as store:
        store.add_split(_spec(), chunk_samples=4)
        _fill(store, masks)
    r = runner.invoke(app, ["convert", str(src), str(dst), "--dtype", "float32", "--chunk-samples", "3"])
    assert r.exit_code == 0, r.output
    with open_store(dst) as copy, open_store(src) as orig:
        assert copy.meta.dense == orig.meta.dense
        for view in (0, 1):
            np.testing.assert_array_equal(copy.read_masks("train", np.arange(10), view=view), masks[:, view])
    assert verify_store(dst).ok
