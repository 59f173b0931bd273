"""Bad input fails before any training, with an error that names the problem and the fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from probe_helpers import config, make_meta, write_store

from epcache.errors import (
    ConfigError,
    CorruptStoreError,
    IncompleteStoreError,
    ProvenanceMismatchError,
    StoreNotFoundError,
    UnknownLayerError,
    UnknownSplitError,
)
from epcache.probe import probe_store
from epcache.probe.data.select import holdout_count
from epcache.store import open_store


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_store(tmp_path_factory.mktemp("ok") / "ok.zarr", n_train=80, n_val=40)


def assert_nothing_written(out: Path) -> None:
    assert not (out / "results.jsonl").exists()


def test_missing_store_split_and_layer(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(StoreNotFoundError):
        probe_store(config(tmp_path / "nope.zarr", out=str(out)), progress=False)
    with pytest.raises(UnknownSplitError, match="no split 'test'"):
        probe_store(config(store, eval_split="test", out=str(out)), progress=False)
    with pytest.raises(UnknownSplitError, match="no split 'training'"):
        probe_store(config(store, train_split="training", out=str(out)), progress=False)
    with pytest.raises(UnknownLayerError, match=r"no layer\(s\) \[5\]"):
        probe_store(config(store, layers="5", out=str(out)), progress=False)
    assert not out.exists()


def test_labels_out_of_range(tmp_path: Path) -> None:
    bad = write_store(tmp_path / "bad.zarr", n_train=80, n_val=40, train_labels=np.r_[np.arange(79) % 4, 4])
    with pytest.raises(CorruptStoreError, match=r"outside \[0, 4\)"):
        probe_store(config(bad), progress=False)
    worse = write_store(tmp_path / "neg.zarr", n_train=80, n_val=40, val_labels=np.r_[np.arange(39) % 4, -3])
    with pytest.raises(CorruptStoreError, match="-3"):
        probe_store(config(worse), progress=False)


def test_skipped_images_are_excluded_and_counted(tmp_path: Path) -> None:
    y = np.arange(80) % 4
    y[:6] = -1  # images the extractor could not decode
    s = write_store(tmp_path / "skip.zarr", n_train=80, n_val=40, train_labels=y)
    res = probe_store(config(s, epochs=1), progress=False)
    data = res.rows[0]["data"]
    assert data["excluded_train"] == 6 and data["num_train"] + data["num_holdout"] == 74
    assert any("6 sample(s) labelled -1" in n for n in res.notes)


def test_empty_split(tmp_path: Path) -> None:
    s = write_store(tmp_path / "empty.zarr", n_train=80, n_val=8, val_labels=np.full(8, -1))
    with pytest.raises(ConfigError, match="no usable samples"):
        probe_store(config(s), progress=False)


def test_incompatible_eval_store(store: Path, tmp_path: Path) -> None:
    other = write_store(tmp_path / "other.zarr", n_train=80, n_val=40, meta=make_meta(weights="abc123"))
    with pytest.raises(ProvenanceMismatchError, match="weights_sha256"):
        probe_store(config(store, eval_store=str(other)), progress=False)
    twin = write_store(tmp_path / "twin.zarr", n_train=80, n_val=40, seed=1)  # same backbone, other images
    res = probe_store(config(store, eval_store=str(twin), epochs=1), progress=False)
    assert res.rows[0]["eval_store"]["path"] == str(twin)


def test_class_lists_must_match(tmp_path: Path) -> None:
    s = write_store(tmp_path / "cls.zarr", n_train=80, n_val=40, val_classes=["c0", "c1", "c2", "x"])
    with pytest.raises(ConfigError, match="same class list"):
        probe_store(config(s), progress=False)


def test_holdout_falls_back_on_tiny_classes(tmp_path: Path) -> None:
    y = np.arange(80) % 4
    y[y == 3] = 0
    y[:2] = 3  # class 3 has 2 samples: 20% holdout rounds to 0 -> 1 held out, 1 trained on
    y[2] = 2
    y[y == 2] = 1
    y[2] = 2  # class 2 has a single sample: trained on, not held out
    s = write_store(tmp_path / "rare.zarr", n_train=80, n_val=40, train_labels=y)
    res = probe_store(config(s, out=str(tmp_path / "run")), progress=False)
    notes = "\n".join(res.notes)
    assert "holdout: too few samples for 0.2 in 1 of 4 classes ('c3'); each holds out 1" in notes
    assert "holdout: a single sample in 1 of 4 classes ('c2'); it is trained on, not held out" in notes
    row = res.rows[0]
    assert row["data"]["holdout_rule"] == "per class round(holdout x n), at least 1 when n >= 2, at most n - 1"
    labels = np.asarray(open_store(s).read_labels("train"))
    counts = np.bincount(labels, minlength=4)
    assert counts[2] == 1 and counts[3] == 2
    expected = sum(holdout_count(0.2, int(n)) for n in counts)  # class 3: 1, class 2: 0
    assert row["data"]["num_holdout"] == expected == row["protocol"]["holdout_size"]
    assert row["data"]["num_train"] == len(labels) - expected
    res = probe_store(config(s, holdout=0.5, epochs=1), progress=False)  # 1 holdout, 1 train: fine
    assert res.rows[0]["data"]["num_holdout"] > 0


def test_incomplete_store(tmp_path: Path) -> None:
    s = write_store(tmp_path / "inc.zarr", n_train=80, n_val=40, skip_blocks=[("train", 1, 2), ("val", 1, 0)])
    with pytest.raises(IncompleteStoreError, match=r"split 'train' layer 1: blocks \[2\]") as err:
        probe_store(config(s), progress=False)
    assert "split 'val' layer 1: blocks [0]" in str(err.value) and "--allow-incomplete" in str(err.value)
    res = probe_store(config(s, layers="0", epochs=1), progress=False)  # layer 0 is complete
    assert res.rows[0]["data"]["num_eval"] == 40
    partial = probe_store(config(s, allow_incomplete=True, epochs=1), progress=False)
    assert partial.rows[0]["data"]["num_eval"] == 40 - 16
    assert partial.rows[0]["data"]["num_train"] + partial.rows[0]["data"]["num_holdout"] == 80 - 16


def test_batch_larger_than_the_training_set(store: Path) -> None:
    with pytest.raises(ConfigError, match="lower --batch-size"):
        probe_store(config(store, batch_size=4096), progress=False)
    with pytest.raises(ConfigError, match=r"batch_size must be an integer >= 2 \(BatchNorm needs batch statistics\)"):
        probe_store(config(store, batch_size=1), progress=False)


def test_unusable_device(store: Path) -> None:
    with pytest.raises(ConfigError, match="device"):
        probe_store(config(store, device="tpu"), progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            probe_store(config(store, device="cuda"), progress=False)
