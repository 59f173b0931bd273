"""Bad input fails clearly, before a store exists where possible, and never leaves one looking complete."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch
from extract_helpers import TINY_VIT, TINY_VIT_KWARGS, make_imagefolder, read_all, tiny_config

from epcache.errors import (
    BadImageError,
    ConfigError,
    ModelError,
    NonFiniteFeaturesError,
    UnknownLayerError,
)
from epcache.extract import extract_store, plan_extract
from epcache.store import open_store

CORRUPT = "train/dog/img_0001.png"


def _corrupt(data: Path, rel: str = CORRUPT) -> bytes:
    path = data / rel
    original = path.read_bytes()
    path.write_bytes(original[: len(original) // 3])  # truncated: the header parses, decoding fails
    return original


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"model": "vit_tiny_patch16_2244"}, ModelError, "did you mean"),
        ({"layers": "0,7"}, UnknownLayerError, r"valid indices are 0\.\.1"),
        ({"data": "MISSING"}, ConfigError, "data root .* does not exist"),
        ({"splits": {"train": "empty"}}, ConfigError, "no images under"),
        ({"model_kwargs": {"depth": 2, "img_size": 32, "act": object()}}, ConfigError, "JSON values"),
        ({"layers": "nonsense"}, ConfigError, "cannot parse --layers"),
        ({"final_norm": True, "model_kwargs": {**TINY_VIT_KWARGS, "global_pool": "avg"}}, ConfigError, "fc_norm"),
    ],
)
def test_user_errors_come_before_the_store(
    tmp_path: Path, overrides: dict[str, Any], error: type[Exception], message: str
) -> None:
    data = make_imagefolder(tmp_path / "data", splits={"train": 3})
    (data / "empty" / "cls").mkdir(parents=True)
    options: dict[str, Any] = {"splits": {"train": "train"}, **overrides}
    if options.pop("data", None) == "MISSING":
        data = tmp_path / "missing"
    cfg = tiny_config(data, tmp_path / "s.zarr", **options)
    with pytest.raises(error, match=message):
        extract_store(cfg, progress=False)
    with pytest.raises(error):
        plan_extract(cfg)
    assert not (tmp_path / "s.zarr").exists()


def test_corrupt_image_fails_with_its_path_and_the_store_stays_incomplete(tmp_path: Path) -> None:
    data = make_imagefolder(tmp_path / "data", splits={"train": 12})
    original = _corrupt(data)
    cfg = tiny_config(data, tmp_path / "s.zarr", splits={"train": "train"})
    with pytest.raises(BadImageError, match=rf"{CORRUPT}.*--on-bad-image skip"):
        extract_store(cfg, progress=False)
    with open_store(cfg.out) as store:
        assert not store.is_complete()
        assert store.missing_blocks("train")  # the failing block (and later ones) are missing
    (data / CORRUPT).write_bytes(original)  # fix it and re-run: the run continues where it stopped
    result = extract_store(cfg, progress=False)
    assert result.resumed and result.status == "complete"
    clean = tiny_config(data, tmp_path / "clean.zarr", splits={"train": "train"})
    extract_store(clean, progress=False)
    got, want = read_all(cfg.out), read_all(clean.out)
    assert all(np.array_equal(got[k], v) for k, v in want.items())


def test_skip_leaves_unreadable_images_out_and_records_them(tmp_path: Path) -> None:
    data = make_imagefolder(tmp_path / "data", splits={"train": 9, "val": 3})
    _corrupt(data)
    (data / "train" / "cat" / "not_an_image.jpg").write_bytes(b"hello")
    cfg = tiny_config(data, tmp_path / "s.zarr", on_bad_image="skip")
    result = extract_store(cfg, progress=False)
    skipped = {CORRUPT, "train/cat/not_an_image.jpg"}
    assert set(result.skipped["train"]) == skipped and result.skipped["val"] == ()
    with open_store(cfg.out) as store:
        assert store.is_complete()
        assert store.split("train").num_samples == 8  # 10 files, 2 of them unreadable
        assert not skipped & set(store.read_ids("train"))
        assert set(store.meta.extra["skipped"]["train"]) == skipped
        assert (store.read_labels("train") >= 0).all()
    again = extract_store(cfg, progress=False)  # resuming reuses the recorded skip list, no re-validation
    assert again.status == "already-complete" and set(again.skipped["train"]) == skipped


def test_float16_overflow_is_reported_with_the_fix(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = timm.create_model(TINY_VIT, pretrained=False, num_classes=0, **TINY_VIT_KWARGS)
    sd = model.state_dict()
    sd["patch_embed.proj.weight"] = sd["patch_embed.proj.weight"] * 1e6  # residual stream >> 65504
    ckpt = tmp_path / "huge.pth"
    torch.save(sd, ckpt)
    data = make_imagefolder(tmp_path / "data", splits={"val": 2})
    cfg = tiny_config(data, tmp_path / "s.zarr", splits={"val": "val"}, random_init=False, weights=ckpt)
    with pytest.raises(NonFiniteFeaturesError, match="--dtype bfloat16 or --dtype float32"):
        extract_store(cfg, progress=False)
    with open_store(cfg.out) as store:
        assert not store.is_complete()
    ok = extract_store(dataclasses.replace(cfg, dtype="float32", overwrite=True), progress=False)
    assert ok.status == "complete"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_a_gpu_is_a_config_error(tmp_path: Path) -> None:
    data = make_imagefolder(tmp_path / "data", splits={"val": 1})
    cfg = tiny_config(data, tmp_path / "s.zarr", splits={"val": "val"}, device="cuda")
    with pytest.raises(ConfigError, match="no CUDA device"):
        extract_store(cfg, progress=False)
    assert not (tmp_path / "s.zarr").exists()


@pytest.mark.parametrize(
    "overrides",
    [
        {"views": -1},
        {"batch_size": 0},
        {"dtype": "int8"},
        {"amp": "fp8"},
        {"device": "tpu"},
        {"on_bad_image": "ignore"},
        {"resume": True, "overwrite": True},
    ],
)
def test_invalid_options_are_config_errors(tmp_path: Path, overrides: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        tiny_config(tmp_path, tmp_path / "s.zarr", **overrides)


def test_convnet_stages_of_different_width_are_planned_per_layer(tmp_path: Path) -> None:
    """Stages of different widths go into one store (per-layer shapes; tests/extract/test_extract_stages.py)."""
    data = make_imagefolder(tmp_path / "data", splits={"val": 2})
    cfg = tiny_config(
        data, tmp_path / "s.zarr", splits={"val": "val"}, model="resnet18", model_kwargs={}, img_size=64, layers="3,4"
    )
    plan = plan_extract(cfg)
    assert plan.layers == (3, 4) and (plan.dim, plan.layout.grid) == (512, (2, 2))  # top level: the last stage
    assert plan.splits[0].bytes_per_layer == 2 * ((16 * 256 + 4 * 512) // 2) * 2  # N x mean T*D x float16
    assert not (tmp_path / "s.zarr").exists()
    assert TINY_VIT_KWARGS["depth"] == 2  # the shared kwargs were not mutated by any run
