"""``extract --pooled``: the model's own pooled output per split, and register tokens chosen by the layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from extract_helpers import make_imagefolder, tiny_config

from epcache.errors import ConfigError
from epcache.extract import extract_store
from epcache.extract._loader import decode_image
from epcache.extract._transforms import create_eval_transform, resolve_data_config
from epcache.probe import ProbeConfig, probe_store
from epcache.probe.data.stream import InputRead
from epcache.store import describe_store, open_store
from epcache.store.describe.info import format_store_info

REG_VIT = "vit_small_patch14_reg4_dinov2"  # CLS + 4 registers
REG_KWARGS = {"depth": 2, "img_size": 28, "embed_dim": 48, "num_heads": 2}


def test_pooled_equals_forward_head_and_registers_follow_the_layout(tmp_path: Path) -> None:
    data = make_imagefolder(tmp_path / "data", splits={"train": 6, "val": 6})
    torch.manual_seed(5)
    model = timm.create_model(REG_VIT, pretrained=False, **REG_KWARGS).eval()
    ckpt = tmp_path / "reg.pth"
    torch.save({"model": model.state_dict()}, ckpt)
    cfg = tiny_config(data, tmp_path / "s.zarr", model=REG_VIT, random_init=False, weights=ckpt,
                      model_kwargs=REG_KWARGS, layers="0,1", dtype="float32", pooled=True)
    extract_store(cfg, progress=False)

    transform = create_eval_transform(resolve_data_config(model, img_size=28))
    with open_store(cfg.out) as store:
        layout = store.meta.layout
        assert (layout.num_prefix, layout.cls_index, layout.num_registers) == (5, 0, 4)
        assert store.pooled_dim == 48 and store.meta.extra["pooled"]["source"].startswith("timm forward_head")
        for split in ("train", "val"):
            x = torch.stack([transform(decode_image(data / i)) for i in store.read_ids(split)])
            with torch.inference_mode():
                want = model.forward_head(model.forward_features(x), pre_logits=True)
                _, inter = model.forward_intermediates(x, indices=[1], return_prefix_tokens=True,
                                                       output_fmt="NLC", intermediates_only=False)
            pooled = torch.from_numpy(store.read_pooled(split))  # (N, 1, 48)
            torch.testing.assert_close(pooled[:, 0], want, rtol=1e-5, atol=1e-5)
            tokens = torch.from_numpy(store.read_tokens(split, 1))[:, 0]  # (N, T, D), the same single forward
            registers = InputRead(frozenset({"registers"}), layout).derive(tokens, "registers")
            torch.testing.assert_close(registers, inter[0][1][:, 1:], rtol=1e-5, atol=1e-5)  # prefix minus CLS
            torch.testing.assert_close(tokens[:, 5:], inter[0][0], rtol=1e-5, atol=1e-5)
    assert "pooled      D=48" in format_store_info(describe_store(cfg.out))
    res = probe_store(ProbeConfig(store=str(cfg.out), head="linear,ep", tokens="pooled,registers", queries=(2,),
                                  epochs=1, warmup=0, batch_size=4, lr=(0.01,), optimizer=("adamw",), holdout=0.0,
                                  device="cpu"), progress=False)
    assert {r["config"]["tokens"] for r in res.rows} == {"pooled", "registers"}


def test_resume_cannot_switch_pooled_on_or_off(tmp_path: Path) -> None:
    data = make_imagefolder(tmp_path / "data", splits={"val": 8})
    out = tmp_path / "s.zarr"
    extract_store(tiny_config(data, out, splits={"val": "val"}, layers="last"), progress=False)
    with pytest.raises(ConfigError, match="without --pooled"):
        extract_store(tiny_config(data, out, splits={"val": "val"}, layers="last", pooled=True, resume=True),
                      progress=False)
    with open_store(out) as store:
        assert store.pooled_dim is None
        np.testing.assert_array_equal(store.missing_blocks("val"), [])
