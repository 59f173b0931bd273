"""End to end: what a store holds after `extract`, in both backends, for ViTs and convnets."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from extract_helpers import TINY_VIT, TINY_VIT_KWARGS, make_imagefolder, read_all, tiny_config

from epcache.extract import extract_store, plan_extract
from epcache.store import open_store, select_tokens


def test_store_metadata_records_what_extraction_did(tmp_path: Path) -> None:
    data = make_imagefolder(tmp_path / "data", splits={"train": 6, "val": 3})
    cfg = tiny_config(data, tmp_path / "s.zarr", views=1)
    result = extract_store(cfg, progress=False)
    assert result.status == "complete" and not result.resumed
    assert result.samples == {"train": 6, "val": 3} and result.blocks_written == 2 + 1
    with open_store(cfg.out) as store:
        m = store.meta
        assert m.backbone.name == TINY_VIT and m.backbone.source == "random-init"
        assert len(m.backbone.weights_sha256) == 64 and m.backbone.num_blocks == 2
        assert m.layers == (0, 1) and m.final_norm is False and m.dtype == "float16"
        assert (m.layout.num_prefix, m.layout.cls_index, m.layout.num_registers, m.layout.grid) == (1, 0, 0, (2, 2))
        assert (m.num_tokens, m.dim) == (5, 192)
        pre = m.preprocessing
        assert pre["data_config"] == {
            "input_size": [3, 32, 32],
            "interpolation": "bicubic",
            "mean": [0.5, 0.5, 0.5],
            "std": [0.5, 0.5, 0.5],
            "crop_pct": 0.9,
            "crop_mode": "center",
        }
        assert pre["eval_transform"][0].startswith("Resize(size=35")  # 32 / 0.9, bicubic
        assert pre["model_kwargs"] == TINY_VIT_KWARGS
        assert m.dataset == {"kind": "imagefolder", "name": "data"}
        assert store.split("train").classes == ("cat", "dog", "eel") and store.split("train").views == 2
        assert store.provenance == result.provenance
        ids = store.read_ids("train")
        assert sorted(ids) == sorted(p.relative_to(data).as_posix() for p in (data / "train").rglob("*.*"))
        order = store.read_order("train")
        assert sorted(order.tolist()) == list(range(6))  # a permutation of dataset order
        tokens = store.read_tokens("val", 1)
        assert tokens.dtype == np.float16 and select_tokens(tokens, m.layout, "patch").shape == (3, 1, 4, 192)
        assert np.isfinite(tokens.astype(np.float32)).all() and tokens.std() > 0


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path: Path) -> None:
    data = make_imagefolder(tmp_path / "data", splits={"train": 5, "val": 2})
    cfg = tiny_config(data, tmp_path / "s.zarr", views=2, dry_run=True)
    result = extract_store(cfg, progress=False)
    assert result.status == "dry-run" and not Path(cfg.out).exists()
    plan = plan_extract(cfg)
    assert plan == result.plan
    per_layer = {s.name: s.bytes_per_layer for s in plan.splits}
    assert per_layer == {"train": 5 * 3 * 5 * 192 * 2, "val": 2 * 1 * 5 * 192 * 2}
    assert plan.total_bytes == 2 * sum(per_layer.values())
    text = result.format_text()
    assert "layers     0-1 of 0..1" in text and "[5, 3, 5, 192]" in text and "dry run" in text
    real = extract_store(dataclasses.replace(cfg, dry_run=False), progress=False)
    stored = read_all(real.store)
    assert {s: stored[(s, 0)].nbytes for s in ("train", "val")} == per_layer


def test_hdf5_store_holds_the_same_values_as_zarr(tmp_path: Path) -> None:
    data = make_imagefolder(tmp_path / "data", splits={"train": 6, "val": 4})
    z = tiny_config(data, tmp_path / "s.zarr", dtype="bfloat16")
    h = tiny_config(data, tmp_path / "s.h5", dtype="bfloat16")
    extract_store(z, progress=False)
    extract_store(h, progress=False)
    with open_store(h.out) as store:
        assert store.format == "h5" and store.is_complete()
    a, b = read_all(z.out), read_all(h.out)
    assert a.keys() == b.keys()
    assert a[("val", 0)].dtype == np.dtype(ml_dtypes.bfloat16)
    for key, arr in a.items():
        assert b[key].tobytes() == arr.tobytes(), key


def test_csv_splits_and_a_convnet(tmp_path: Path) -> None:
    data = make_imagefolder(tmp_path / "data", splits={"pool": 6})
    files = sorted(p.relative_to(data).as_posix() for p in data.rglob("*.*"))
    (data / "train.csv").write_text("path,label\n" + "".join(f"{f},{i % 2}\n" for i, f in enumerate(files[:4])))
    (data / "val.csv").write_text("".join(f"{f},1\n" for f in files[4:]))
    cfg = tiny_config(
        data,
        tmp_path / "s.zarr",
        splits={"train": "train.csv", "val": "val.csv"},
        model="resnet18",
        model_kwargs={},
        img_size=64,
    )
    result = extract_store(cfg, progress=False)
    assert result.plan.layers == (4,) and result.plan.dim == 512  # default for convnets: the last stage
    with open_store(cfg.out) as store:
        assert store.meta.dataset["kind"] == "csv" and store.meta.layout.num_prefix == 0
        assert store.meta.layout.grid == (2, 2) and store.meta.num_tokens == 4
        assert store.split("train").classes == ("0", "1")
        assert sorted(store.read_ids("val")) == files[4:]
        assert store.read_tokens("train", 4).shape == (4, 1, 4, 512)


def test_progress_bar_shows_throughput(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_imagefolder(tmp_path / "data", splits={"val": 3})
    cfg = tiny_config(data, tmp_path / "s.zarr", splits={"val": "val"})
    result = extract_store(cfg, progress=True)
    err = capsys.readouterr().err
    assert "extract val" in err and "img/s" in err and "3/3" in err
    assert result.images_per_s > 0 and "samples/s" in result.format_text()
