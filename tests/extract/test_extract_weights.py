"""Weights: release checkpoints (MAE, DINO layouts), the offline HF cache, and no silent random init."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
from extract_helpers import TINY_VIT, TINY_VIT_KWARGS, make_imagefolder, tiny_config
from safetensors.torch import save_file

from epcache.errors import ConfigError, WeightsError
from epcache.extract import extract_store, plan_extract
from epcache.extract._backbone import load_backbone
from epcache.extract._weights import locate_weights
from epcache.store import open_store

HF_TAGGED = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"  # timm's default tag for TINY_VIT


def _reference(seed: int = 7, **kwargs: Any) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(TINY_VIT, pretrained=False, **{**TINY_VIT_KWARGS, **kwargs})


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_same_backbone(model: torch.nn.Module, reference: torch.nn.Module) -> None:
    ref = {k: v for k, v in reference.state_dict().items() if not k.startswith("head")}
    got = model.state_dict()
    assert set(got) == set(ref)
    for k, v in ref.items():
        assert torch.equal(got[k], v), k


def _load(path: Path, *, final_norm: bool = False) -> tuple[torch.nn.Module, Any]:
    source = locate_weights(TINY_VIT, weights=path, random_init=False)
    return load_backbone(source, model_kwargs=TINY_VIT_KWARGS, img_size=None, final_norm=final_norm, seed=0)


def _mae_checkpoint(reference: torch.nn.Module) -> dict[str, Any]:
    """The MAE pre-training release layout: {"model": encoder + decoder + mask token}, plus a head."""
    sd = dict(reference.state_dict())
    sd["mask_token"] = torch.zeros(1, 1, 192)
    sd["decoder_embed.weight"] = torch.zeros(128, 192)
    sd["decoder_blocks.0.norm1.weight"] = torch.ones(128)
    sd["decoder_pred.weight"] = torch.zeros(768, 128)
    return {"model": sd, "epoch": 799, "args": argparse.Namespace(model="mae_vit_tiny", blr=1.5e-4)}


def test_mae_checkpoint_loads_and_is_recorded(tmp_path: Path) -> None:
    reference = _reference()  # with a 1000-class head, as fine-tuned checkpoints have
    ckpt = tmp_path / "mae_pretrain_tiny.pth"
    torch.save(_mae_checkpoint(reference), ckpt)
    model, report = _load(ckpt)
    _assert_same_backbone(model, reference)
    assert {"mask_token", "decoder_embed.weight", "decoder_pred.weight", "head.weight", "head.bias"} <= set(
        report.dropped_keys
    )
    assert not any(k.startswith("blocks.") for k in report.dropped_keys)

    data = make_imagefolder(tmp_path / "data", splits={"val": 3})
    cfg = tiny_config(data, tmp_path / "s.zarr", splits={"val": "val"}, random_init=False, weights=ckpt)
    result = extract_store(cfg, progress=False)
    assert "decoder_embed.weight" in result.dropped_keys
    with open_store(cfg.out) as store:
        bb = store.meta.backbone
        assert bb.source == "checkpoint"
        assert bb.weights_file == "mae_pretrain_tiny.pth"  # basename only, never the path
        assert bb.weights_sha256 == _sha256(ckpt)
        assert bb.num_blocks == 2
        assert "decoder_embed.weight" in store.meta.extra["weights_dropped_keys"]


def test_dino_teacher_layout_with_prefixes_loads(tmp_path: Path) -> None:
    reference = _reference(num_classes=0)
    teacher = {f"module.backbone.{k}": v for k, v in reference.state_dict().items()}
    teacher["module.head.mlp.0.weight"] = torch.zeros(8, 192)  # DINO projection head
    ckpt = tmp_path / "dino_full.pth"
    torch.save({"teacher": teacher, "student": {}, "epoch": 100}, ckpt)
    model, report = _load(ckpt)
    _assert_same_backbone(model, reference)
    assert "head.mlp.0.weight" in report.dropped_keys


def test_safetensors_checkpoint_loads(tmp_path: Path) -> None:
    reference = _reference(num_classes=0)
    ckpt = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(ckpt))
    model, report = _load(ckpt)
    _assert_same_backbone(model, reference)
    assert report.sha256 == _sha256(ckpt) and report.source.kind == "checkpoint"


def test_missing_final_norm_is_allowed_only_when_unused(tmp_path: Path) -> None:
    sd = {k: v for k, v in _reference(num_classes=0).state_dict().items() if not k.startswith("norm.")}
    ckpt = tmp_path / "no_norm.pth"
    torch.save(sd, ckpt)
    _, report = _load(ckpt, final_norm=False)
    assert set(report.missing_unused) == {"norm.weight", "norm.bias"}
    with pytest.raises(WeightsError, match="lacks 2 backbone weights"):
        _load(ckpt, final_norm=True)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda sd: sd.pop("blocks.1.attn.qkv.weight"), "lacks 1 backbone weights.*blocks.1.attn.qkv.weight"),
        (lambda sd: sd.__setitem__("blocks.7.attn.qkv.weight", torch.zeros(3)), "does not know.*blocks.7"),
        (lambda sd: sd.__setitem__("blocks.0.mlp.fc1.weight", torch.zeros(5, 5)), "wrong shape"),
    ],
)
def test_checkpoint_that_does_not_fit_is_refused(tmp_path: Path, mutate: Any, message: str) -> None:
    sd = dict(_reference(num_classes=0).state_dict())
    mutate(sd)
    ckpt = tmp_path / "bad.pth"
    torch.save({"model": sd}, ckpt)
    with pytest.raises(WeightsError, match=message):
        _load(ckpt)


def test_checkpoint_with_arbitrary_pickle_is_refused(tmp_path: Path) -> None:
    ckpt = tmp_path / "evil.pth"
    torch.save({"model": _reference().state_dict(), "hook": Path("x")}, ckpt)  # PosixPath: not allowed
    with pytest.raises(WeightsError, match="weights_only=True"):
        _load(ckpt)


def _fake_hf_cache(hub: Path, reference: torch.nn.Module, *, revision: str = "0123abcd") -> Path:
    """The layout huggingface_hub writes: models--ORG--NAME/{snapshots/REV/FILE, refs/main}."""
    repo = hub / f"models--timm--{HF_TAGGED}"
    snap = repo / "snapshots" / revision
    snap.mkdir(parents=True)
    weights = snap / "model.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(weights))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return weights


def test_timm_weights_come_from_the_offline_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reference = _reference()  # saved with its 1000-class head, as timm's hub files are
    weights = _fake_hf_cache(tmp_path / "hub", reference)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))  # read at call time, not import time
    source = locate_weights(TINY_VIT, weights=None, random_init=False)
    assert source.kind == "timm-hf-cache" and source.path == weights and source.timm_name == HF_TAGGED
    model, report = load_backbone(source, model_kwargs=TINY_VIT_KWARGS, img_size=None, final_norm=False, seed=0)
    _assert_same_backbone(model, reference)
    assert report.sha256 == _sha256(weights) and report.name == HF_TAGGED

    data = make_imagefolder(tmp_path / "data", splits={"val": 2})
    cfg = tiny_config(data, tmp_path / "s.zarr", splits={"val": "val"}, random_init=False)
    extract_store(cfg, progress=False)
    with open_store(cfg.out) as store:
        bb = store.meta.backbone
        assert (bb.source, bb.name, bb.weights_file) == ("timm-hf-cache", HF_TAGGED, "model.safetensors")
        assert bb.weights_sha256 == _sha256(weights)


def test_no_weights_is_an_error_not_random_features(tmp_path: Path) -> None:
    data = make_imagefolder(tmp_path / "data", splits={"val": 2})
    out = tmp_path / "s.zarr"
    cfg = tiny_config(data, out, splits={"val": "val"}, random_init=False, hf_cache_dir=tmp_path / "empty-hub")
    with pytest.raises(WeightsError, match=r"--weights PATH.*--random-init"):
        plan_extract(cfg)
    with pytest.raises(WeightsError):
        extract_store(cfg, progress=False)
    assert not out.exists()


def test_alias_without_timm_weights_needs_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="timm has no weights"):
        locate_weights("vit_small_patch16_224", weights=None, random_init=False, timm_weights=False)
    data = make_imagefolder(tmp_path / "data", splits={"val": 2})
    cfg = tiny_config(data, tmp_path / "s.zarr", model="mae_vits", random_init=False, model_kwargs={})
    with pytest.raises(WeightsError, match="timm has no weights"):
        plan_extract(cfg)


def test_weights_and_random_init_exclude_each_other(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="exclude each other"):
        tiny_config(tmp_path, tmp_path / "s.zarr", weights=tmp_path / "w.pth", random_init=True)
    with pytest.raises(WeightsError, match="does not exist"):
        locate_weights(TINY_VIT, weights=tmp_path / "nope.pth", random_init=False)


def test_random_init_is_seeded_and_hashed(tmp_path: Path) -> None:
    source = locate_weights(TINY_VIT, weights=None, random_init=True)
    a, ra = load_backbone(source, model_kwargs=TINY_VIT_KWARGS, img_size=None, final_norm=False, seed=1)
    b, rb = load_backbone(source, model_kwargs=TINY_VIT_KWARGS, img_size=None, final_norm=False, seed=1)
    _, rc = load_backbone(source, model_kwargs=TINY_VIT_KWARGS, img_size=None, final_norm=False, seed=2)
    assert ra.sha256 == rb.sha256 != rc.sha256
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
