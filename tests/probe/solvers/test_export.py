"""Feature export: the file holds the very vectors the solver heads fit, rows in the split's sample order."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from solver_helpers import class_tokens, meta, write_tokens
from typer.testing import CliRunner

import epcache
from epcache.cli import app
from epcache.errors import ConfigError, NonFiniteFeaturesError
from epcache.probe.solvers import pool_rows
from epcache.probe.solvers import vectors as vectors_module
from epcache.probe.solvers.export import ExportConfig, export_features
from epcache.store import open_store

runner = CliRunner()
FAST = ["--holdout", "0.2", "--device", "cpu", "--no-progress"]
N_TRAIN, N_VAL = 96, 40


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CLS + 1 register, float16, several chunks; train has samples labelled -1 (skipped at extraction)."""
    m = meta(dim=12, registers=1, layers=(0, 2))
    ytr = np.arange(N_TRAIN) % 4
    ytr[[3, 50, 77]] = -1
    yva = np.arange(N_VAL) % 4
    tr = class_tokens(np.clip(ytr, 0, None), m, seed=1, num_classes=4)
    va = class_tokens(yva, m, seed=2, num_classes=4)
    return write_tokens(tmp_path_factory.mktemp("export") / "s.zarr", m, {"train": (tr, ytr), "val": (va, yva)},
                        classes=["cat", "dog", "emu", "fox"])


@pytest.fixture(scope="module")
def run(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A solver sweep (ridge and NCM on cls+gap of layer 2) with its RUNDIR/pooled cache."""
    out = tmp_path_factory.mktemp("run") / "run"
    r = runner.invoke(app, ["probe", "--store", str(store), "--head", "ridge,ncm", "--tokens", "cls+gap",
                            "--layers", "2", "--out", str(out), *FAST])
    assert r.exit_code == 0, r.output
    return out


def _cached(run: Path, split: str, layer: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The CLS and GAP arrays the sweep's solver heads fitted, as cached under RUNDIR/pooled."""
    (record,) = [p for p in (run / "pooled").glob(f"{split}-layer{layer}-*.json")]
    stem = record.name[: -len(".json")]
    doc = json.loads(record.read_text())
    cls = np.load(run / "pooled" / f"{stem}.cls.npy", allow_pickle=False)
    gap = np.load(run / "pooled" / f"{stem}.gap.npy", allow_pickle=False)
    return cls, gap, int(doc["rows"])


@pytest.mark.parametrize("split", ["train", "val"])
def test_export_is_bit_for_bit_the_vectors_the_solver_heads_fit(store: Path, run: Path, tmp_path: Path,
                                                                split: str) -> None:
    cls, gap, n_rows = _cached(run, split, 2)
    with open_store(store) as st:
        labels, order = st.read_labels(split), st.read_order(split)
    usable = np.flatnonzero(labels >= 0)  # the stored rows the sweep pooled: ascending, labelled ones
    assert len(usable) == n_rows
    by_sample = np.argsort(order[usable])
    for tokens, want in (("cls", cls), ("gap", gap), ("cls+gap", np.concatenate([cls, gap], axis=1))):
        result = export_features(ExportConfig(store=store, out=tmp_path / f"{split}-{tokens}.npz", layer=2,
                                              tokens=tokens, split=split))
        assert result.features_from == "store" and result.rows == len(usable)
        with np.load(tmp_path / f"{split}-{tokens}.npz", allow_pickle=False) as z:
            got = z["features"]
        assert got.dtype == np.float32 and got.shape == want.shape
        assert got.tobytes() == np.ascontiguousarray(want[by_sample]).tobytes()  # the same bytes, in sample order
    # read back from the run's own cache (sha256-checked): the same file, and no pass over the store
    result = export_features(ExportConfig(store=store, out=tmp_path / "again.npz", layer=2, tokens="cls+gap",
                                          split=split, rundir=run))
    assert result.features_from == "cache"
    assert (tmp_path / "again.npz").read_bytes() == (tmp_path / f"{split}-cls+gap.npz").read_bytes()


def test_rows_labels_ids_and_classes(store: Path, tmp_path: Path) -> None:
    result = export_features(ExportConfig(store=store, out=tmp_path / "f.npz", layer=-1, tokens="gap"))
    assert (result.layer, result.split, result.excluded, result.dim) == (2, "train", 3, 12)
    with np.load(tmp_path / "f.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    want_index = np.setdiff1d(np.arange(N_TRAIN), [3, 50, 77])  # dataset order, the -1 samples left out
    assert np.array_equal(arrays["index"], want_index)
    assert arrays["labels"].dtype == np.int64 and np.array_equal(arrays["labels"], want_index % 4)
    assert arrays["ids"].dtype.kind == "U" and arrays["ids"].tolist() == [f"train/{i}.png" for i in want_index]
    assert arrays["classes"].tolist() == ["cat", "dog", "emu", "fox"]
    info = json.loads(str(arrays["meta"]))
    assert (info["split"], info["layer"], info["tokens"]) == ("train", 2, "gap")
    with open_store(store) as st:  # row i is sample index[i]: its GAP, as the solver heads' pass computes it
        stored = np.argsort(st.read_order("train"))[want_index]
        assert np.array_equal(arrays["features"], pool_rows(st, "train", 2, np.sort(stored)).subset(stored).gap)


def test_parquet_round_trip(store: Path, tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    export_features(ExportConfig(store=store, out=tmp_path / "f.npz", layer=0, tokens="cls+gap", split="val"))
    export_features(ExportConfig(store=store, out=tmp_path / "f.parquet", layer=0, tokens="cls+gap", split="val"))
    table = pq.read_table(tmp_path / "f.parquet")
    with np.load(tmp_path / "f.npz", allow_pickle=False) as z:
        features = np.stack(table.column("features").to_numpy(zero_copy_only=False)).astype(np.float32)
        assert features.tobytes() == z["features"].tobytes()
        assert table.column("label").to_pylist() == z["labels"].tolist()
        assert table.column("id").to_pylist() == z["ids"].tolist()
        assert table.column("index").to_pylist() == z["index"].tolist()
        assert table.column("class").to_pylist() == [z["classes"][y] for y in z["labels"]]
    info = json.loads(table.schema.metadata[b"epcache"])
    assert info["classes"] == ["cat", "dog", "emu", "fox"] and info["layer"] == 0


def test_pooled_output_exports_view_zero_as_float32(tmp_path: Path) -> None:
    m = meta(dim=8, layers=(0,))
    y = np.arange(40) % 2
    path = write_tokens(tmp_path / "p.zarr", m, {"train": (class_tokens(y, m), y)})
    with open_store(path, "a") as st:
        st.add_pooled("train", 6)
        data = np.random.default_rng(0).standard_normal((40, 1, 6)).astype(np.float16)
        for b in range(st.split("train").num_blocks):
            lo, hi = st.block_range("train", b)
            st.write_pooled_block("train", b, data[lo:hi])
        order = st.read_order("train")
    result = export_features(ExportConfig(store=path, out=tmp_path / "p.npz", tokens="pooled"))
    assert result.layer is None and result.dim == 6
    with np.load(tmp_path / "p.npz", allow_pickle=False) as z:
        assert np.array_equal(z["features"], data[np.argsort(order), 0].astype(np.float32))
    with pytest.raises(ConfigError, match="belongs to no layer"):
        ExportConfig(store=path, out=tmp_path / "q.npz", tokens="pooled", layer=0)


def test_the_library_entry_point_is_lazy_exported(store: Path, tmp_path: Path) -> None:
    result = epcache.export_features(epcache.ExportConfig(store=store, out=tmp_path / "f.npz", layer=0))
    assert isinstance(result, epcache.ExportResult) and "exported" in result.format_text()


@pytest.mark.reliability_bad_input
def test_parquet_without_pyarrow_names_the_extra(store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow raises ImportError
    with pytest.raises(ConfigError, match=r'pip install "epcache\[hf\]"'):
        export_features(ExportConfig(store=store, out=tmp_path / "f.parquet", layer=0))
    assert not list(tmp_path.iterdir())


@pytest.mark.reliability_bad_input
def test_a_failed_export_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = meta(dim=8, layers=(0,))
    y = np.arange(24) % 3
    x = class_tokens(y, m)
    x[[4, 9], 2, 0] = np.inf
    path = write_tokens(tmp_path / "bad.zarr", m, {"train": (x, y)})
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(NonFiniteFeaturesError, match="inf/nan"):
        export_features(ExportConfig(store=path, out=out_dir / "f.npz", layer=0))
    assert not list(out_dir.iterdir())

    def torn(*a: object, **k: object) -> bytes:
        raise OSError("disk full")

    clean = write_tokens(tmp_path / "ok.zarr", m, {"train": (class_tokens(y, m), y)})
    monkeypatch.setattr("epcache.probe.solvers.export._npz_bytes", torn)  # fails inside the temporary's write
    with pytest.raises(OSError, match="disk full"):
        export_features(ExportConfig(store=clean, out=out_dir / "f.npz", layer=0))
    assert not list(out_dir.iterdir())  # neither the file nor its temporary


def test_export_uses_the_solver_heads_pass(store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The vectors come from vectors.pool_rows (the solver heads' one pass), not from a second pooling."""
    calls: list[tuple[str, int]] = []
    real = vectors_module.pool_rows

    def spy(st: object, split: str, layer: int, rows: np.ndarray) -> object:
        calls.append((split, layer))
        return real(st, split, layer, rows)  # type: ignore[arg-type]

    monkeypatch.setattr(vectors_module, "pool_rows", spy)
    export_features(ExportConfig(store=store, out=tmp_path / "f.npz", layer=0, split="val"))
    assert calls == [("val", 0)]
