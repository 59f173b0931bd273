"""One contract for every store backend (zarr, HDF5): round trips, reads, records, bad input."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from typer.testing import CliRunner

from epcache.cli import app
from epcache.errors import (
    ConfigError,
    CorruptStoreError,
    LayoutVersionError,
    ReadOnlyStoreError,
    ShapeMismatchError,
    StoreExistsError,
    StoreNotFoundError,
    UnknownLayerError,
    UnknownSplitError,
)
from epcache.store import (
    BackboneMeta,
    FeatureStore,
    SplitSpec,
    StoreMeta,
    TokenLayout,
    create_store,
    describe_store,
    open_store,
    select_tokens,
)

NP_DTYPES = {"float16": np.float16, "float32": np.float32, "bfloat16": ml_dtypes.bfloat16}


def make_meta(dtype: str = "float16", layers: tuple[int, ...] = (0, 2), dim: int = 8) -> StoreMeta:
    return StoreMeta(
        backbone=BackboneMeta("vit_test", "random-init", "1.0", "random-init", None, 3),
        layout=TokenLayout(num_prefix=2, cls_index=0, num_registers=1, grid=(2, 3)),
        layers=layers,
        final_norm=False,
        dtype=dtype,  # type: ignore[arg-type]
        dim=dim,
        num_tokens=8,
        preprocessing={"input_size": [3, 32, 32]},
        views={"augmented": 1, "seed": 0},
        dataset={"kind": "imagefolder", "name": "toy"},
    )


def make_spec(n: int = 23, views: int = 2, name: str = "train") -> SplitSpec:
    return SplitSpec(
        name=name,
        labels=np.arange(n) % 4,
        ids=[f"class{i % 4}/img_{i:03d}.png" for i in range(n)],
        classes=["a", "b", "c", "d"],
        views=views,
        permutation_seed=7,
    )


def fill(store: FeatureStore, split: str, data: dict[int, np.ndarray], skip: set[tuple[int, int]] = frozenset()):
    for layer, x in data.items():
        for b in range(store.split(split).num_blocks):
            if (layer, b) in skip:
                continue
            s, e = store.block_range(split, b)
            store.write_block(split, layer, b, x[s:e])


def random_tokens(n: int, views: int, dtype: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, views, 8, 8)).astype(np.float32).astype(NP_DTYPES[dtype])


class StoreContract:
    """Tests every backend must pass; subclasses say where the store lives."""

    suffix: str

    def path(self, tmp_path: Path, name: str = "store") -> Path:
        return tmp_path / f"{name}{self.suffix}"

    @pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
    def test_round_trip_bit_exact(self, tmp_path: Path, dtype: str) -> None:
        p = self.path(tmp_path)
        data = {0: random_tokens(23, 2, dtype, 0), 2: random_tokens(23, 2, dtype, 1)}
        with create_store(p, make_meta(dtype)) as st:
            st.add_split(make_spec(), chunk_samples=4)
            fill(st, "train", data)
        with open_store(p) as st:
            assert st.meta == make_meta(dtype)
            assert st.is_complete()
            for layer, x in data.items():
                got = st.read_tokens("train", layer)
                assert got.dtype == x.dtype
                assert got.view(np.uint8).tobytes() == x.view(np.uint8).tobytes()

    def test_permutation_labels_ids(self, tmp_path: Path) -> None:
        p = self.path(tmp_path)
        spec = make_spec()
        with create_store(p, make_meta()) as st:
            st.add_split(spec, chunk_samples=4)
        with open_store(p) as st:
            order = st.read_order("train")
            assert sorted(order.tolist()) == list(range(23))
            assert order.tolist() != list(range(23))  # really shuffled
            assert st.read_labels("train").tolist() == np.asarray(spec.labels)[order].tolist()
            assert st.read_ids("train") == [spec.ids[i] for i in order]
            # chunks of a sorted dataset are class-mixed in stored order
            first_chunk = st.read_labels("train")[:4]
            assert len(set(first_chunk.tolist())) > 1

    def test_chunk_range_and_order_reads(self, tmp_path: Path) -> None:
        p = self.path(tmp_path)
        x = random_tokens(23, 2, "float16")
        with create_store(p, make_meta(layers=(0,))) as st:
            meta = st.add_split(make_spec(), chunk_samples=4)
            fill(st, "train", {0: x})
        assert meta.num_chunks == 6
        with open_store(p) as st:
            np.testing.assert_array_equal(st.read_tokens("train", 0, 5, 13), x[5:13])
            np.testing.assert_array_equal(st.read_chunk("train", 0, 5), x[20:23])
            seen = [(start, c.shape[0]) for start, c in st.iter_chunks("train", 0, seed=3)]
            again = [start for start, _ in st.iter_chunks("train", 0, seed=3)]
            other = [start for start, _ in st.iter_chunks("train", 0, seed=4)]
            assert sorted(seen) == [(0, 4), (4, 4), (8, 4), (12, 4), (16, 4), (20, 3)]
            assert [s for s, _ in seen] == again and again != other
            assert [s for s, _ in st.iter_chunks("train", 0)] == [0, 4, 8, 12, 16, 20]
            rows = np.array([22, 0, 5, 4, 13])
            np.testing.assert_array_equal(st.read_rows("train", 0, rows), x[rows])

    def test_incomplete_detection(self, tmp_path: Path) -> None:
        p = self.path(tmp_path)
        data = {0: random_tokens(23, 2, "float16"), 2: random_tokens(23, 2, "float16", 2)}
        with create_store(p, make_meta()) as st:
            st.add_split(make_spec(), chunk_samples=4)
            assert st.missing_blocks("train") == list(range(6))
            fill(st, "train", data, skip={(2, 3)})
        with open_store(p) as st:
            assert not st.is_complete()
            assert st.missing_blocks("train") == [3]
            assert st.missing_blocks("train", 0) == []
        info = describe_store(p)
        assert not info.complete
        assert [(m.split, m.layer, m.block, m.rows) for m in info.missing] == [("train", 2, 3, (12, 16))]
        with open_store(p, "a") as st:  # resume: write the missing block only
            st.write_block("train", 2, 3, data[2][12:16])
        assert describe_store(p).complete

    def test_bad_shape_and_dtype_on_write(self, tmp_path: Path) -> None:
        with create_store(self.path(tmp_path), make_meta()) as st:
            st.add_split(make_spec(), chunk_samples=4)
            with pytest.raises(ShapeMismatchError, match="shape"):
                st.write_block("train", 0, 0, np.zeros((4, 1, 8, 8), np.float16))
            with pytest.raises(ShapeMismatchError, match="dtype"):
                st.write_block("train", 0, 0, np.zeros((4, 2, 8, 8), np.float32))
            with pytest.raises(UnknownLayerError, match="no layer 1"):
                st.write_block("train", 1, 0, np.zeros((4, 2, 8, 8), np.float16))
            with pytest.raises(StoreExistsError):
                st.add_split(make_spec())

    def test_missing_split_and_layer(self, tmp_path: Path) -> None:
        p = self.path(tmp_path)
        with create_store(p, make_meta()) as st:
            st.add_split(make_spec(), chunk_samples=4)
        with open_store(p) as st:
            with pytest.raises(UnknownSplitError, match="no split 'val'.*train"):
                st.read_labels("val")
            with pytest.raises(UnknownLayerError, match="stored layers: 0, 2"):
                st.read_chunk("train", 1, 0)

    def test_read_only_refuses_writes(self, tmp_path: Path) -> None:
        p = self.path(tmp_path)
        with create_store(p, make_meta()) as st:
            st.add_split(make_spec(), chunk_samples=4)
        with open_store(p) as st, pytest.raises(ReadOnlyStoreError, match="read-only"):
            st.write_block("train", 0, 0, np.zeros((4, 2, 8, 8), np.float16))

    def test_create_refuses_existing_unless_overwrite(self, tmp_path: Path) -> None:
        p = self.path(tmp_path)
        x = random_tokens(23, 2, "float16")
        with create_store(p, make_meta(layers=(0,))) as st:
            st.add_split(make_spec(), chunk_samples=4)
            fill(st, "train", {0: x})
        with pytest.raises(StoreExistsError, match="--overwrite"):
            create_store(p, make_meta())
        with open_store(p) as st:  # untouched
            np.testing.assert_array_equal(st.read_tokens("train", 0), x)
        with create_store(p, make_meta(), overwrite=True) as st:
            assert st.splits == {}

    def test_overwrite_never_deletes_a_non_store(self, tmp_path: Path) -> None:
        p = self.path(tmp_path)
        if self.suffix == ".zarr":
            p.mkdir()
            (p / "precious.txt").write_text("user data")
        else:
            p.write_text("user data")
        with pytest.raises((ConfigError, StoreExistsError)):
            create_store(p, make_meta(), overwrite=True)
        assert "user data" in (p / "precious.txt" if p.is_dir() else p).read_text()

    def test_open_rejects_non_stores(self, tmp_path: Path) -> None:
        with pytest.raises(StoreNotFoundError, match="does not exist"):
            open_store(self.path(tmp_path, "nothing"))
        if self.suffix == ".zarr":
            d = self.path(tmp_path, "plain")
            d.mkdir()
            with pytest.raises(StoreNotFoundError, match="zarr.json"):
                open_store(d)
            f = self.path(tmp_path, "file")
            f.write_text("x")
            with pytest.raises(StoreNotFoundError, match="is a file"):
                open_store(f)
        else:
            f = self.path(tmp_path, "text")
            f.write_text("not hdf5")
            with pytest.raises(StoreNotFoundError, match="not an HDF5"):
                open_store(f)
            d = self.path(tmp_path, "dir")
            d.mkdir()
            with pytest.raises(StoreNotFoundError, match="directory"):
                open_store(d)

    def test_metadata_version_and_missing_keys(self, tmp_path: Path) -> None:
        p = self.path(tmp_path)
        with create_store(p, make_meta()) as st:
            st.add_split(make_spec(), chunk_samples=4)
        doc = self.read_doc(p)
        self.write_doc(p, {**doc, "format_version": 99})
        with pytest.raises(LayoutVersionError, match="version 99"):
            open_store(p)
        broken = dict(doc)
        del broken["layout"]
        self.write_doc(p, broken)
        with pytest.raises(CorruptStoreError, match="'layout'"):
            open_store(p)
        wrong = json.loads(json.dumps(doc))
        wrong["splits"]["train"]["views"] = 5  # shape no longer matches the arrays
        self.write_doc(p, wrong)
        with pytest.raises(CorruptStoreError, match=r"layer 0 has shape \(23, 5, 8, 8\).*\(23, 2, 8, 8\)"):
            open_store(p)

    def test_provenance(self, tmp_path: Path) -> None:
        a, b = self.path(tmp_path, "a"), self.path(tmp_path, "b")
        with create_store(a, make_meta()) as st:
            st.add_split(make_spec(), chunk_samples=4)
            pa = st.provenance
        spec = make_spec()
        with create_store(b, make_meta()) as st:
            st.add_split(SplitSpec(**{**spec.__dict__, "labels": np.roll(spec.labels, 1)}), chunk_samples=8)
            pb = st.provenance
        assert pa != pb
        with open_store(a) as st:
            assert st.provenance == pa == self.read_doc(a)["provenance"]

    def test_compressor_round_trip(self, tmp_path: Path) -> None:
        p = self.path(tmp_path)
        x = random_tokens(23, 2, "float16")
        comp = "zstd:1" if self.suffix == ".zarr" else "gzip:1"
        with create_store(p, make_meta(layers=(0,)), compressor=comp) as st:
            st.add_split(make_spec(), chunk_samples=4)
            fill(st, "train", {0: x})
        with open_store(p) as st:
            np.testing.assert_array_equal(st.read_tokens("train", 0), x)
            assert st.meta.extra["compressor"] == comp
        with pytest.raises(ConfigError, match="compressor"):
            create_store(self.path(tmp_path, "bad"), make_meta(), compressor="nope")

    def test_cli_info(self, tmp_path: Path) -> None:
        p = self.path(tmp_path)
        with create_store(p, make_meta()) as st:
            st.add_split(make_spec(), chunk_samples=4)
            fill(st, "train", {0: random_tokens(23, 2, "float16"), 2: random_tokens(23, 2, "float16")},
                 skip={(0, 5)})
        r = CliRunner().invoke(app, ["info", str(p)])
        assert r.exit_code == 0, r.output
        assert "INCOMPLETE" in r.output and "layer=0 block=5 rows=20-23" in r.output
        assert "T=8: 2 prefix (CLS at 0, 1 registers) + 2x3 patches" in r.output
        r = CliRunner().invoke(app, ["info", str(p), "--json"])
        assert r.exit_code == 0
        assert json.loads(r.output)["splits"][0]["num_samples"] == 23
        r = CliRunner().invoke(app, ["info", str(self.path(tmp_path, "missing"))])
        assert r.exit_code == 2
        assert "does not exist" in r.output and "Traceback" not in r.output

    # -- backend hooks for hand-editing metadata
    def read_doc(self, p: Path) -> dict:
        raise NotImplementedError

    def write_doc(self, p: Path, doc: dict) -> None:
        raise NotImplementedError


class TestZarrStore(StoreContract):
    suffix = ".zarr"

    def read_doc(self, p: Path) -> dict:
        return json.loads((p / "zarr.json").read_text())["attributes"]["epcache"]

    def write_doc(self, p: Path, doc: dict) -> None:
        root = json.loads((p / "zarr.json").read_text())
        root["attributes"]["epcache"] = doc
        (p / "zarr.json").write_text(json.dumps(root))

    def test_sharded_split(self, tmp_path: Path) -> None:
        p = tmp_path / "s.zarr"
        x = random_tokens(37, 1, "float16")
        with create_store(p, make_meta(layers=(0,))) as st:
            meta = st.add_split(make_spec(37, 1), chunk_samples=4, shard_samples=16)
            assert (meta.num_chunks, meta.num_blocks) == (10, 3)
            fill(st, "train", {0: x})
        files = sorted(q.name for q in (p / "splits/train/layers/0/c").rglob("*") if q.is_file())
        assert len(files) == 3  # one file per shard, not per chunk
        with open_store(p) as st:
            np.testing.assert_array_equal(st.read_chunk("train", 0, 9), x[36:37])
            np.testing.assert_array_equal(st.read_rows("train", 0, [36, 3, 17]), x[[36, 3, 17]])


class TestHDF5Store(StoreContract):
    suffix = ".h5"

    def read_doc(self, p: Path) -> dict:
        import h5py

        with h5py.File(p, "r") as f:
            return json.loads(f.attrs["epcache"])

    def write_doc(self, p: Path, doc: dict) -> None:
        import h5py

        with h5py.File(p, "r+") as f:
            f.attrs["epcache"] = json.dumps(doc)


def test_select_tokens() -> None:
    layout = TokenLayout(num_prefix=2, cls_index=0, num_registers=1, grid=(2, 3))
    x = np.arange(2 * 8 * 4, dtype=np.float32).reshape(2, 8, 4)
    np.testing.assert_array_equal(select_tokens(x, layout, "cls"), x[:, 0])
    np.testing.assert_array_equal(select_tokens(x, layout, "registers"), x[:, 1:2])
    np.testing.assert_array_equal(select_tokens(x, layout, "patch"), x[:, 2:])
    np.testing.assert_array_equal(select_tokens(x, layout, "all"), x)
    np.testing.assert_allclose(select_tokens(x, layout, "gap"), x[:, 2:].mean(1))
    with pytest.raises(ConfigError, match="unknown token selector"):
        select_tokens(x, layout, "mean")
    no_cls = TokenLayout(num_prefix=0, cls_index=None, num_registers=0, grid=(2, 4))
    with pytest.raises(ConfigError, match="no CLS"):
        select_tokens(x, no_cls, "cls")


def test_bfloat16_torch_round_trip() -> None:
    import torch

    from epcache.store.layout.tokens import from_torch, to_torch

    t = torch.randn(3, 5).to(torch.bfloat16)
    a = from_torch(t)
    assert a.dtype == np.dtype(ml_dtypes.bfloat16)
    back = to_torch(a)
    assert back.dtype == torch.bfloat16 and torch.equal(back, t)


@pytest.mark.parametrize(("suffix", "shard"), [(".zarr", None), (".zarr", 8), (".h5", None)])
def test_direct_chunk_reads_equal_library_reads(tmp_path: Path, suffix: str, shard: int | None) -> None:
    """The preadv fast path must return exactly what zarr/h5py return, written or not."""
    p = tmp_path / f"s{suffix}"
    x = random_tokens(23, 2, "bfloat16")
    with create_store(p, make_meta("bfloat16", layers=(0,))) as st:
        st.add_split(make_spec(), chunk_samples=4, shard_samples=shard)
        fill(st, "train", {0: x}, skip={(0, st.split("train").num_blocks - 1)})
    with open_store(p) as st:
        for c in range(st.split("train").num_chunks):
            start, stop = st.chunk_range("train", c)
            fast = st.read_chunk("train", 0, c)
            slow = st._logical(st._read_array("train", 0, start, stop))
            assert fast.tobytes() == slow.tobytes()
        last = st.split("train").num_chunks - 1
        assert not st.read_chunk("train", 0, last).view(np.uint16).any()  # unwritten -> fill value 0
        assert st.read_chunk("train", 0, 0).tobytes() == x[:4].tobytes()


def test_truncated_chunk_file_is_named(tmp_path: Path) -> None:
    p = tmp_path / "s.zarr"
    with create_store(p, make_meta(layers=(0,))) as st:
        st.add_split(make_spec(), chunk_samples=4)
        fill(st, "train", {0: random_tokens(23, 2, "float16")})
    chunk_file = p / "splits/train/layers/0/c/2/0/0/0"
    chunk_file.write_bytes(chunk_file.read_bytes()[:100])
    with open_store(p) as st, pytest.raises(CorruptStoreError, match=r"chunk 2 \(rows 8-12\) of 'train' layer 0"):
        st.read_chunk("train", 0, 2)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_cache_layout_example_reads_a_store_without_epcache(tmp_path: Path, dtype: str) -> None:
    """cache_layout.md §6 (open with zarr, then the shared read) must run against a real store, unmodified,
    and give the right values for bfloat16 too (raw uint16 bits averaged would give a GAP in the tens of
    thousands). tests/campaigns/interop/test_layout_examples.py runs every block on quantised and HDF5 stores too."""
    doc = (Path(__file__).resolve().parents[2] / "cache_layout.md").read_text()
    blocks = [b.split("```")[0] for b in doc.split("## 6.")[1].split("## 7.")[0].split("```python")[1:]]
    assert len(blocks) == 3 and "zarr.open_group" in blocks[0] and "h5py.File" in blocks[1]
    code = blocks[0] + blocks[2]
    p = tmp_path / "imagenet_mae_vitb.zarr"
    x = random_tokens(23, 2, dtype)
    with create_store(p, make_meta(dtype, layers=(0, 2))) as st:
        st.add_split(make_spec(name="val"), chunk_samples=4)
        fill(st, "val", {0: x, 2: x})
    ns: dict = {}
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(code, "cache_layout.md", "exec"), ns)
    finally:
        os.chdir(cwd)
    assert ns["cls"].dtype == x.dtype
    np.testing.assert_array_equal(ns["cls"], x[:23, 0, 0])
    np.testing.assert_allclose(ns["gap"], x[:, 0, 2:].astype(np.float32).mean(axis=1))
    assert np.abs(ns["gap"]).max() < 10  # standard-normal tokens
    with open_store(p) as st:
        assert list(ns["ids"]) == st.read_ids("val") and ns["y"].tolist() == st.read_labels("val").tolist()


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_small_split_default_chunks_and_half_created_split(tmp_path: Path, suffix: str) -> None:
    """A split smaller than the default chunk works; a split group left by a crash is replaced."""
    p = tmp_path / f"s{suffix}"
    x = random_tokens(3, 1, "float16")
    with create_store(p, make_meta(layers=(0,))) as st:
        meta = st.add_split(make_spec(3, 1, name="val"))
        assert meta.chunk_samples == 3 and meta.num_blocks == 1
        fill(st, "val", {0: x})
        st._create_split_arrays(  # simulate a kill after the arrays, before the metadata
            dataclasses.replace(meta, name="train"), labels=np.zeros(3, np.int64), ids=["a", "b", "c"],
            order=np.arange(3),
        )
    with open_store(p, "a") as st:
        assert set(st.splits) == {"val"}
        st.add_split(make_spec(5, 1, name="train"))
        st.set_extra("skipped", {"train": ["bad.png"]})
    with open_store(p) as st:
        assert st.split("train").num_samples == 5 and st.meta.extra["skipped"] == {"train": ["bad.png"]}
        np.testing.assert_array_equal(st.read_tokens("val", 0), x)
