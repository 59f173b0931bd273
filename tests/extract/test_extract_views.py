"""Augmented views are seeded per (seed, split, sample, view): identical across runs and worker layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from extract_helpers import TINY_VIT, TINY_VIT_KWARGS, make_imagefolder, read_all, tiny_config

from epcache.extract import extract_store
from epcache.extract._loader import ViewDataset, decode_image
from epcache.extract._pixels import Normalizer
from epcache.extract._transforms import (
    ViewAugment,
    create_eval_transform,
    crop_params,
    resolve_data_config,
    view_rng,
)
from epcache.store import open_store


def _dataset(data: Path, views: int, seed: int = 0) -> ViewDataset:
    model = timm.create_model(TINY_VIT, pretrained=False, num_classes=0, **TINY_VIT_KWARGS)
    cfg = resolve_data_config(model, img_size=32)
    paths = sorted(data.rglob("*.*"))
    return ViewDataset(
        paths,
        split="train",
        eval_transform=create_eval_transform(cfg),
        input_size=(3, 32, 32),
        views=views,
        augment=ViewAugment(size=(32, 32), mean=tuple(cfg["mean"]), std=tuple(cfg["std"])),
        seed=seed,
    )


def test_crop_params_stay_inside_the_image_and_are_reproducible() -> None:
    for w, h in [(64, 48), (10, 300), (300, 10), (1, 1)]:
        for i in range(50):
            top, left, ch, cw = crop_params(w, h, view_rng(0, "train", i, 1))
            assert min(top, left) >= 0 and min(ch, cw) > 0 and top + ch <= h and left + cw <= w
            assert (top, left, ch, cw) == crop_params(w, h, view_rng(0, "train", i, 1))
    distinct = {crop_params(64, 48, view_rng(0, "train", 0, v)) for v in range(1, 20)}
    assert len(distinct) > 10


def test_views_depend_only_on_sample_view_and_seed(tmp_path: Path) -> None:
    data = make_imagefolder(tmp_path / "d", splits={"train": 5})
    ds = _dataset(data, views=4)
    forward = [ds[i] for i in range(5)]
    backward = [ds[i] for i in reversed(range(5))][::-1]  # another access order, as other batching gives
    for (i, a, ea, _), (j, b, eb, _) in zip(forward, backward, strict=True):
        assert i == j and ea == eb == "" and torch.equal(a, b)
    idx, views, _, _ = forward[2]
    assert views.shape == (4, 3, 32, 32) and views.dtype == torch.uint8  # normalised on the device
    normalize = Normalizer(ds.augment.mean, ds.augment.std)  # type: ignore[union-attr]
    assert torch.equal(normalize(views[0]), ds.eval_transform(decode_image(ds.paths[idx])))  # view 0 = eval view
    assert all(not torch.equal(views[a], views[b]) for a in range(4) for b in range(a))
    _, other_seed, _, _ = _dataset(data, views=4, seed=1)[2]
    assert torch.equal(other_seed[0], views[0]) and not torch.equal(other_seed[1], views[1])


def test_augmented_store_is_identical_across_runs_and_worker_counts(tmp_path: Path) -> None:
    data = make_imagefolder(tmp_path / "d", splits={"train": 10, "val": 4})
    stores = []
    for k, workers in enumerate([0, 0, 2]):
        cfg = tiny_config(data, tmp_path / f"s{k}.zarr", views=2, workers=workers)
        extract_store(cfg, progress=False)
        stores.append(read_all(cfg.out))
    for other in stores[1:]:
        assert other.keys() == stores[0].keys()
        for key, arr in stores[0].items():
            np.testing.assert_array_equal(other[key], arr, err_msg=str(key))
    assert stores[0][("train", 0)].shape[1] == 3 and stores[0][("val", 0)].shape[1] == 1  # V = 1 + K, eval V = 1
    with open_store(tmp_path / "s0.zarr") as store:
        views = store.meta.views
        assert views["augmented"] == 2 and views["seed"] == 0 and views["splits"] == ["train"]
        assert views["recipe"]["scale"] == [0.08, 1.0] and views["recipe"]["interpolation"] == "bicubic"
        assert store.meta.preprocessing["data_config"]["input_size"] == [3, 32, 32]


def test_view_splits_must_be_extracted_splits(tmp_path: Path) -> None:
    from epcache.errors import ConfigError

    with pytest.raises(ConfigError, match="view_splits"):
        tiny_config(tmp_path, tmp_path / "s.zarr", splits={"val": "val"}, views=2)
