"""A convnet's stages of different widths and grids in one store, from one forward pass.

`extract --model resnet18 --layers all` stores all five stages (grids 32x32 ... 2x2, widths
64 ... 512 at 64 px) with per-layer shapes in the metadata (cache_layout.md §2.1
``layer_shapes``); readers, verify and probe use each layer's own shape.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from extract_helpers import make_imagefolder
from PIL import Image
from typer.testing import CliRunner

from epcache.cli import app
from epcache.extract import ExtractConfig, extract_store
from epcache.extract._backbone import load_backbone
from epcache.extract._transforms import create_eval_transform, resolve_data_config
from epcache.extract._weights import locate_weights
from epcache.store import describe_store, open_store, verify_store

runner = CliRunner()


@pytest.fixture(scope="module")
def stages(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("stages")
    data = make_imagefolder(root / "data", splits={"train": 8, "val": 4})
    cfg = ExtractConfig(model="resnet18", data=data, out=root / "r18.zarr", layers="all", random_init=True,
                        img_size=64, batch_size=4, workers=0, chunk_samples=4, dtype="float32",
                        allow_duplicate=True)
    assert extract_store(cfg, progress=False).status == "complete"
    return cfg.out, data  # type: ignore[return-value]


def test_all_stages_in_one_store_with_their_own_shapes(stages: tuple[Path, Path]) -> None:
    store, data = stages
    expected = {0: (32, 64), 1: (16, 64), 2: (8, 128), 3: (4, 256), 4: (2, 512)}  # grid side, width
    doc = json.loads((store / "zarr.json").read_text())["attributes"]["epcache"]
    assert doc["layers"] == [0, 1, 2, 3, 4] and (doc["dim"], doc["layout"]["grid"]) == (512, [2, 2])
    assert doc["layer_shapes"] == {
        str(k): {"grid": [g, g], "dim": d, "num_tokens": g * g} for k, (g, d) in expected.items()
    }
    source = locate_weights("resnet18", weights=None, random_init=True, timm_weights=True, cache_dir=None)
    model, _ = load_backbone(source, model_kwargs={}, img_size=64, final_norm=False, seed=0)
    with open_store(store) as st:
        order = st.read_order("val")
        ids = st.read_ids("val")
        tf = create_eval_transform(resolve_data_config(model, img_size=64))
        x = torch.stack([tf(Image.open(data / i).convert("RGB")) for i in ids])
        with torch.inference_mode():
            fmaps = model.forward_intermediates(x, indices=list(expected), intermediates_only=True)
        for layer, (g, d) in expected.items():
            got = st.read_tokens("val", layer)
            assert got.shape == (4, 1, g * g, d)
            want = fmaps[layer].flatten(2).transpose(1, 2).numpy()
            np.testing.assert_allclose(got[:, 0], want, rtol=1e-5, atol=1e-5)
        assert len(order) == 4
    info = describe_store(store)
    assert info.layer_shapes["0"]["num_tokens"] == 1024
    assert verify_store(store).ok


def test_probe_reads_each_stage_with_its_own_shape(stages: tuple[Path, Path], tmp_path: Path) -> None:
    store, _ = stages
    r = runner.invoke(app, ["probe", "--store", str(store), "--head", "linear,ep", "--queries", "2", "--layers",
                            "0,4", "--epochs", "1", "--warmup", "0", "--batch-size", "4", "--optimizer", "adamw",
                            "--holdout", "0", "--device", "cpu", "--out", str(tmp_path / "run"), "--no-progress"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    params = {(row["config"]["layer"], row["config"]["kind"]): row["params"] for row in rows}
    # the linear family's least-squares candidate pools each stage at its own width too
    assert set(params) == {(0, "linear"), (0, "ep"), (0, "ridge"), (4, "linear"), (4, "ep"), (4, "ridge")}
    assert params[(4, "linear")] > 4 * params[(0, "linear")]  # 512 channels at stage 4, 64 at stage 0
    assert params[(4, "ridge")] > 4 * params[(0, "ridge")]
    assert params[(4, "ep")] > 4 * params[(0, "ep")]
