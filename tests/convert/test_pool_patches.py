"""``extract --pool-patches``: the pooled grid's layout, values and metadata, and probes on it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from convert_helpers import grid4_config, make_imagefolder
from typer.testing import CliRunner

from epcache.cli import app
from epcache.errors import ConfigError
from epcache.extract import extract_store, plan_extract
from epcache.probe import ProbeConfig, probe_store
from epcache.store import TokenLayout, describe_store, open_store
from epcache.store.describe.info import format_store_info
from epcache.store.layout.poolgrid import pool_patch_tokens

runner = CliRunner()


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pool")
    data = make_imagefolder(root / "data", splits={"train": 12, "val": 8})
    out = {"data": data, "plain": root / "plain.zarr", "pool": root / "pool.zarr"}
    extract_store(grid4_config(data, out["plain"]), progress=False)
    extract_store(grid4_config(data, out["pool"], pool_patches=2), progress=False)
    return out


def test_pooled_layout_and_metadata(stores: dict[str, Path]) -> None:
    with open_store(stores["plain"]) as plain, open_store(stores["pool"]) as pool:
        assert plain.meta.layout.grid == (4, 4) and plain.meta.layout.pool_patches == 1
        assert "pool_patches" not in plain.meta_document()["layout"]  # unpooled documents keep their keys
        assert pool.meta.layout == TokenLayout(num_prefix=1, cls_index=0, num_registers=0, grid=(2, 2),
                                               pool_patches=2)
        assert pool.meta_document()["layout"]["pool_patches"] == 2 and pool.meta.num_tokens == 5
        assert pool.provenance != plain.provenance and pool.computed_provenance() == pool.provenance
        for split in ("train", "val"):
            np.testing.assert_array_equal(pool.read_ids(split), plain.read_ids(split))
            for layer in pool.meta.layers:
                x, y = plain.read_tokens(split, layer), pool.read_tokens(split, layer)
                assert y.shape == (x.shape[0], 1, 5, 192) and y.dtype == np.float16
                assert x[:, :, :1].tobytes() == y[:, :, :1].tobytes()  # CLS kept bit for bit
                patches = x[:, :, 1:].astype(np.float32).reshape(-1, 1, 2, 2, 2, 2, 192)
                mean = patches.mean(axis=(3, 5)).reshape(-1, 1, 4, 192)  # 2x2 windows of the 4x4 grid
                np.testing.assert_allclose(y[:, :, 1:].astype(np.float32), mean, rtol=1e-3, atol=1e-3)
                assert np.abs(y[:, :, 1:].astype(np.float32) - mean).max() <= np.abs(mean).max() * 2**-10
    text = format_store_info(describe_store(stores["pool"]))
    assert "2x2 patches (patch grid pooled 2x2)" in text


def test_pool_function_window_order_and_prefix() -> None:
    layout = TokenLayout(num_prefix=2, cls_index=0, num_registers=1, grid=(2, 4))
    x = np.arange(2 * 10 * 3, dtype=np.float32).reshape(2, 10, 3)  # [N, T, D]
    y = pool_patch_tokens(x, layout, 2, "float32")
    assert y.shape == (2, 4, 3)
    np.testing.assert_array_equal(y[:, :2], x[:, :2])
    grid = x[:, 2:].reshape(2, 2, 4, 3)
    np.testing.assert_array_equal(y[:, 2], grid[:, :, 0:2].mean(axis=(1, 2)))  # window 0: rows 0-1, cols 0-1
    np.testing.assert_array_equal(y[:, 3], grid[:, :, 2:4].mean(axis=(1, 2)))
    assert pool_patch_tokens(x[:1], layout, 2, "float16").tobytes() == y[:1].astype(np.float16).tobytes()


def test_plan_shows_the_pooled_grid_and_size(stores: dict[str, Path], tmp_path: Path) -> None:
    plan = plan_extract(grid4_config(stores["data"], tmp_path / "x.zarr", pool_patches=2, dry_run=True))
    full = plan_extract(grid4_config(stores["data"], tmp_path / "x.zarr", dry_run=True))
    assert plan.num_tokens == 5 and full.num_tokens == 17 and plan.total_bytes * 17 == full.total_bytes * 5
    assert "(patch grid pooled 2x2)" in plan.format_text()
    assert not (tmp_path / "x.zarr").exists()


def test_non_divisible_grid_is_refused_before_anything_is_written(stores: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "bad.zarr"
    with pytest.raises(ConfigError, match=r"4x4, not divisible by 3"):
        extract_store(grid4_config(stores["data"], out, pool_patches=3), progress=False)
    r = runner.invoke(app, ["extract", "--model", "vit_tiny_patch16_224", "--random-init", "--img-size", "32",
                            "--model-kwargs", json.dumps({"depth": 2, "patch_size": 8}), "--data",
                            str(stores["data"]), "--out", str(out), "--workers", "0", "--pool-patches", "3"])
    assert r.exit_code == 2 and "not divisible by 3" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["extract", "--model", "resnet18", "--random-init", "--img-size", "32", "--data",
                            str(stores["data"]), "--out", str(out), "--workers", "0", "--pool-patches", "2"])
    assert r.exit_code == 2 and "1x1, not divisible by 2" in r.output  # a convnet's last map at 32 px: no grid
    with pytest.raises(ConfigError, match=">= 1"):
        grid4_config(stores["data"], out, pool_patches=0)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_resume_with_another_pooling_is_refused(stores: dict[str, Path]) -> None:
    from epcache.errors import ProvenanceMismatchError

    with pytest.raises(ProvenanceMismatchError):
        extract_store(grid4_config(stores["data"], stores["pool"], resume=True), progress=False)
    again = extract_store(grid4_config(stores["data"], stores["pool"], pool_patches=2, resume=True), progress=False)
    assert again.status == "already-complete"


def test_linear_and_ep_probes_and_the_attention_report_on_a_pooled_store(
    stores: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from epcache.report import _attention

    run = tmp_path / "run"
    res = probe_store(ProbeConfig(store=str(stores["pool"]), head="linear,ep", tokens="gap,patch", queries=(2,),
                                  epochs=1, warmup=0, batch_size=4, lr=(0.01,), optimizer=("adamw",), holdout=0.0,
                                  device="cpu", out=str(run)), progress=False)
    kinds = {(r["config"]["kind"], r["config"]["tokens"]) for r in res.rows}
    assert {("linear", "gap"), ("ep", "patch")} <= kinds
    ep = next(r for r in res.rows if r["config"]["kind"] == "ep")
    drawn: dict[str, object] = {}
    real = _attention.attention_figure

    def spy(maps: list[np.ndarray], pictures: list[np.ndarray | None], *args: object, **kw: object) -> object:
        drawn["maps"], drawn["pictures"] = maps, pictures
        return real(maps, pictures, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(_attention, "attention_figure", spy)
    result = _attention.attention_report(run, ep["id"], images=3, out=tmp_path / "att")
    assert result.png is not None and result.png.is_file()
    maps, pictures = drawn["maps"], drawn["pictures"]
    assert [m.shape for m in maps] == [(2, 2, 2)] * 3  # per query, over the POOLED 2x2 grid
    assert all(p is not None and p.shape == (32, 32, 3) for p in pictures)  # each cell covers 16x16 px
    assert result.max_entropy == pytest.approx(np.log(4))  # 4 pooled patches, not 16


def test_repair_of_a_pooled_store_rewrites_the_same_bytes(stores: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    from convert_helpers import all_bytes

    from epcache.convert import ConvertConfig, convert_store
    from epcache.extract import repair_store
    from epcache.store.verify.blocks import mark_blocks_missing

    copy = tmp_path / "pool.zarr"
    shutil.copytree(stores["pool"], copy)
    (tmp_path / "data").symlink_to(stores["data"])  # the recorded root is relative: images beside the copy
    with open_store(copy, "a") as st:
        mark_blocks_missing(st, [("train", 1, 0), ("val", 0, 1)])
    result = repair_store(copy, workers=0, progress=False)
    assert result.after.ok and all_bytes(copy) == all_bytes(stores["pool"])
    derived = tmp_path / "derived.zarr"
    convert_store(ConvertConfig(src=stores["plain"], dst=derived, pool_patches=2), progress=False)
    with open_store(derived, "a") as st:
        mark_blocks_missing(st, [("val", 0, 0)])
    with pytest.raises(ConfigError, match="made by `epcache convert`"):
        repair_store(derived, workers=0, progress=False)
