"""Tokens from one forward pass equal what the timm model itself computes, layer by layer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch
from extract_helpers import TINY_VIT, TINY_VIT_KWARGS, make_imagefolder, tiny_config

import epcache.extract._run as run_module
from epcache.errors import UnknownLayerError
from epcache.extract import extract_store
from epcache.extract._forward import TokenExtractor, inspect_model
from epcache.extract._loader import decode_image
from epcache.extract._transforms import create_eval_transform, resolve_data_config
from epcache.store import open_store


def _model(name: str, seed: int = 0, **kwargs: Any) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, num_classes=0, **kwargs).eval()


def _block_outputs(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Reference: the output of every block, captured with forward hooks during forward_features."""
    outs: list[torch.Tensor] = []
    hooks = [b.register_forward_hook(lambda _m, _i, o: outs.append(o)) for b in model.blocks]
    with torch.inference_mode():
        model.forward_features(x)
    for h in hooks:
        h.remove()
    return outs


@pytest.mark.parametrize(
    ("name", "kwargs", "size", "prefix", "registers", "cls_index"),
    [
        (TINY_VIT, {"depth": 3, "img_size": 32}, 32, 1, 0, 0),
        ("vit_small_patch14_reg4_dinov2", {"depth": 2, "img_size": 28}, 28, 5, 4, 0),
        ("vit_base_patch16_siglip_224", {"depth": 1, "img_size": 32, "embed_dim": 64, "num_heads": 2}, 32, 0, 0, None),
        ("beitv2_base_patch16_224", {"depth": 2, "img_size": 32, "embed_dim": 64, "num_heads": 2}, 32, 1, 0, 0),
    ],
)
def test_vit_tokens_equal_block_outputs(
    name: str, kwargs: dict[str, Any], size: int, prefix: int, registers: int, cls_index: int | None
) -> None:
    model = _model(name, **kwargs)
    geometry = inspect_model(model, layers_spec="all", input_size=(3, size, size), name=name)
    assert geometry.kind == "tokens"
    assert geometry.layout.num_prefix == prefix
    assert geometry.layout.num_registers == registers
    assert geometry.layout.cls_index == cls_index
    assert geometry.layout.grid == (size // model.patch_embed.patch_size[0],) * 2
    x = torch.randn(3, 3, size, size)
    with torch.inference_mode():
        tokens = TokenExtractor(model, geometry, final_norm=False)(x)
    reference = _block_outputs(model, x)
    assert len(tokens) == len(reference) == len(model.blocks)
    for got, want in zip(tokens, reference, strict=True):
        assert got.shape == (3, geometry.layout.num_tokens, geometry.dim)
        torch.testing.assert_close(got, want, rtol=0, atol=0)  # a split and a concat: exact


def test_final_norm_last_layer_equals_forward_features() -> None:
    model = _model(TINY_VIT, **TINY_VIT_KWARGS)
    geometry = inspect_model(model, layers_spec="last", input_size=(3, 32, 32), name=TINY_VIT)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        (normed,) = TokenExtractor(model, geometry, final_norm=True)(x)
        (raw,) = TokenExtractor(model, geometry, final_norm=False)(x)
        features = model.forward_features(x)
    torch.testing.assert_close(normed, features, rtol=0, atol=0)
    assert not torch.equal(raw, features)  # default: raw block output, as the EP paper probes MAE


@pytest.mark.parametrize(("name", "stage", "dim"), [("resnet18", 4, 512), ("convnext_atto", 3, 320)])
def test_convnet_tokens_are_the_last_stage_flattened_row_major(name: str, stage: int, dim: int) -> None:
    model = _model(name)
    geometry = inspect_model(model, layers_spec=None, input_size=(3, 64, 64), name=name)
    assert geometry.kind == "spatial"
    assert geometry.layers == (stage,)
    assert geometry.layout.num_prefix == 0 and geometry.layout.cls_index is None
    assert geometry.dim == dim and geometry.layout.grid == (2, 2)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        (tokens,) = TokenExtractor(model, geometry, final_norm=False)(x)
        fmap = model.forward_features(x)  # (B, D, H, W)
    assert tokens.shape == (2, 4, dim)
    torch.testing.assert_close(tokens[:, 1], fmap[:, :, 0, 1], rtol=0, atol=0)  # row-major: (0,1) is token 1
    torch.testing.assert_close(tokens, fmap.flatten(2).transpose(1, 2), rtol=0, atol=0)


def test_convnet_stages_of_different_shape_get_per_layer_shapes() -> None:
    model = _model("convnext_atto")
    g = inspect_model(model, layers_spec="all", input_size=(3, 64, 64), name="convnext_atto")
    assert g.layers == (0, 1, 2, 3) and (g.dim, g.layout.grid) == (320, (2, 2))  # top level: the last stage
    assert g.layer_shapes == {0: ((16, 16), 40), 1: ((8, 8), 80), 2: ((4, 4), 160), 3: ((2, 2), 320)}
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        tokens = TokenExtractor(model, g, final_norm=False)(x)
    assert [tuple(t.shape[1:]) for t in tokens] == [g.layer_shape(i) for i in g.layers]


def test_layer_out_of_range_names_valid_range() -> None:
    model = _model(TINY_VIT, **TINY_VIT_KWARGS)
    with pytest.raises(UnknownLayerError, match=r"valid indices are 0\.\.1"):
        inspect_model(model, layers_spec="0,2", input_size=(3, 32, 32), name=TINY_VIT)


def test_meta_device_geometry_equals_real_model() -> None:
    with torch.device("meta"):
        meta = timm.create_model("vit_small_patch14_reg4_dinov2", num_classes=0, depth=2, img_size=28)
    real = _model("vit_small_patch14_reg4_dinov2", depth=2, img_size=28)
    args = {"layers_spec": "-1:", "input_size": (3, 28, 28), "name": "x"}
    assert inspect_model(meta, **args) == inspect_model(real, **args)  # type: ignore[arg-type]


def test_stored_tokens_equal_direct_forward_and_come_from_one_pass(tmp_path: Path, monkeypatch: Any) -> None:
    """End to end: every stored row equals the model's block outputs for that image, and each
    batch ran the network once for all layers (block 0 runs once per batch, not per layer)."""
    data = make_imagefolder(tmp_path / "data", splits={"val": 10})
    model = _model(TINY_VIT, seed=3, depth=4, img_size=32)
    ckpt = tmp_path / "tiny.pth"
    torch.save({"model": model.state_dict()}, ckpt)

    calls = {"forward": 0, "block0": 0, "block3": 0}
    original = run_module.load_backbone

    def counting_load_backbone(*args: Any, **kwargs: Any) -> Any:
        m, report = original(*args, **kwargs)
        m.blocks[0].register_forward_hook(lambda *_: calls.__setitem__("block0", calls["block0"] + 1))
        m.blocks[3].register_forward_hook(lambda *_: calls.__setitem__("block3", calls["block3"] + 1))
        fi = m.forward_intermediates

        def counting_fi(*a: Any, **k: Any) -> Any:
            calls["forward"] += 1
            return fi(*a, **k)

        m.forward_intermediates = counting_fi
        return m, report

    monkeypatch.setattr(run_module, "load_backbone", counting_load_backbone)
    cfg = tiny_config(
        data,
        tmp_path / "s.zarr",
        splits={"val": "val"},
        random_init=False,
        weights=ckpt,
        model_kwargs={"depth": 4, "img_size": 32},
        layers="0,2,3",
        dtype="float32",
        batch_size=3,
    )
    result = extract_store(cfg, progress=False)
    # blocks of 4 samples (chunk_samples=4) cut into batches of <= 3: 4+4+2 -> 2+2+1 batches
    assert calls == {"forward": 5, "block0": 5, "block3": 5}
    assert result.samples == {"val": 10}

    transform = create_eval_transform(resolve_data_config(model, img_size=32))
    with open_store(cfg.out) as store:
        ids = store.read_ids("val")
        x = torch.stack([transform(decode_image(data / i)) for i in ids])
        reference = _block_outputs(model, x)
        assert store.meta.layers == (0, 2, 3)
        for layer in (0, 2, 3):
            stored = torch.from_numpy(store.read_tokens("val", layer))  # (N, 1, T, D)
            torch.testing.assert_close(stored[:, 0], reference[layer], rtol=1e-5, atol=1e-5)
        labels = store.read_labels("val")
    classes = ("cat", "dog", "eel")
    assert [classes[k] for k in labels] == [i.split("/")[1] for i in ids]
    assert np.all(labels >= 0)
