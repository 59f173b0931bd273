"""Light stores (``--keep cls,gap[,registers]``): one gap token per layer, from extract and from convert."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from convert_helpers import all_bytes, make_imagefolder
from extract_helpers import tiny_config
from typer.testing import CliRunner

from epcache.cli import app
from epcache.convert import ConvertConfig, convert_store
from epcache.errors import ConfigError
from epcache.extract import ExtractConfig, extract_store, plan_extract
from epcache.probe import ProbeConfig, probe_store
from epcache.store import TokenLayout, describe_store, open_store
from epcache.store.describe.info import format_store_info
from epcache.store.layout.light import light_tokens, parse_keep

runner = CliRunner()
# 56 px / 8 px patches: a 7x7 grid, which no --pool-patches factor above 1 divides; two registers
REG7_KWARGS: dict[str, Any] = {"depth": 2, "img_size": 56, "patch_size": 8, "reg_tokens": 2}
FULL_T, LIGHT_T = 3 + 49, 3 + 1


def _config(data: Path, out: Path, **overrides: Any) -> ExtractConfig:
    return tiny_config(data, out, **{"model_kwargs": REG7_KWARGS, "dtype": "float32", "layers": "all", **overrides})


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("light")
    data = make_imagefolder(root / "data", splits={"train": 12, "val": 9})
    out = {"data": data, "full": root / "full.zarr", "light": root / "light.zarr", "cls_gap": root / "cg.zarr",
           "derived": root / "derived.zarr"}
    extract_store(_config(data, out["full"]), progress=False)
    extract_store(_config(data, out["light"], keep="registers,gap,cls"), progress=False)
    extract_store(_config(data, out["cls_gap"], keep="cls,gap"), progress=False)
    convert_store(ConvertConfig(src=out["full"], dst=out["derived"], keep="cls,gap,registers"), progress=False)
    return out


def test_light_layout_values_and_metadata(stores: dict[str, Path]) -> None:
    with open_store(stores["full"]) as full, open_store(stores["light"]) as light, \
            open_store(stores["cls_gap"]) as cg:
        assert full.meta.layout.grid == (7, 7) and full.meta.layout.keep is None
        assert "keep" not in full.meta_document()["layout"]  # full documents keep their keys and provenance
        assert light.meta.layout == TokenLayout(num_prefix=3, cls_index=0, num_registers=2, grid=(1, 1),
                                                keep=("cls", "gap", "registers"))
        assert light.meta_document()["layout"]["keep"] == ["cls", "gap", "registers"]
        assert cg.meta.layout == TokenLayout(num_prefix=1, cls_index=0, num_registers=0, grid=(1, 1),
                                             keep=("cls", "gap"))
        assert light.meta.num_tokens == LIGHT_T and cg.meta.num_tokens == 2
        assert light.provenance != full.provenance and light.computed_provenance() == light.provenance
        for split in ("train", "val"):
            for layer in full.meta.layers:
                x, y, z = full.read_tokens(split, layer), light.read_tokens(split, layer), cg.read_tokens(split, layer)
                assert x.shape[2] == FULL_T and y.shape == (*x.shape[:2], LIGHT_T, 192) and y.dtype == np.float32
                assert x[:, :, :3].tobytes() == y[:, :, :3].tobytes()  # CLS and registers kept bit for bit
                assert z[:, :, :1].tobytes() == x[:, :, :1].tobytes() and z[:, :, 1].tobytes() == y[:, :, 3].tobytes()
                gap = x[:, :, 3:].astype(np.float64).mean(axis=2)  # every patch of the 7x7 grid
                # one float32 rounding of the float64 mean: within half an ulp of float32, 2^-24 relative
                assert np.abs(y[:, :, 3].astype(np.float64) - gap).max() <= np.abs(gap).max() * 2**-23
    text = format_store_info(describe_store(stores["light"]))
    assert "1x1 patches (light store: grid averaged into one gap token, keeps cls,gap,registers)" in text


def test_convert_gives_the_bytes_of_a_light_extraction(stores: dict[str, Path]) -> None:
    assert all_bytes(stores["derived"]) == all_bytes(stores["light"])  # exactly equal: same float32 inputs
    with open_store(stores["derived"]) as d, open_store(stores["full"]) as full:
        assert d.meta.derived_from == {"provenance": full.provenance, "ops": {"keep": ["cls", "gap", "registers"]}}
        assert d.meta.layout.keep == ("cls", "gap", "registers")
    with pytest.raises(ConfigError, match="cannot be kept again"):
        convert_store(ConvertConfig(src=stores["cls_gap"], dst=stores["data"].parent / "x.zarr",
                                    keep="cls,gap,registers"), progress=False)


def test_size_ratio_and_dry_run(stores: dict[str, Path], tmp_path: Path) -> None:
    sizes = {}
    for name in ("full", "light"):
        with open_store(stores[name]) as st:
            sizes[name] = sum(st.read_tokens(s, ly).nbytes for s in st.splits for ly in st.meta.layers)
    print(f"light/full token bytes: {sizes['light']} / {sizes['full']} = {sizes['light'] / sizes['full']:.4f}")
    assert sizes["light"] * FULL_T == sizes["full"] * LIGHT_T  # 4 of 52 tokens: 0.0769
    plan = plan_extract(_config(stores["data"], tmp_path / "x.zarr", keep="cls,gap,registers", dry_run=True))
    full = plan_extract(_config(stores["data"], tmp_path / "x.zarr", dry_run=True))
    assert plan.total_bytes == sizes["light"] and full.total_bytes == sizes["full"] == plan.full_bytes
    assert "light      " in plan.format_text() and f"({LIGHT_T / FULL_T:.3f}x)" in plan.format_text()
    light_option = next(o for o in full.sizes if o.name == "light")
    assert light_option.bytes * 2 == sizes["light"]  # the option is float16, these stores float32
    r = runner.invoke(app, ["extract", "--model", "vit_tiny_patch16_224", "--random-init", "--model-kwargs",
                            json.dumps(REG7_KWARGS), "--data", str(stores["data"]), "--out", str(tmp_path / "y.zarr"),
                            "--workers", "0", "--keep", "cls,gap", "--dry-run"])
    assert r.exit_code == 0 and "light store" in r.output and "T=2" in r.output, r.output
    assert not (tmp_path / "x.zarr").exists() and not (tmp_path / "y.zarr").exists()


def test_bad_keep_is_refused(stores: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cls,gap,registers"):
        _config(stores["data"], tmp_path / "x.zarr", keep="gap")
    with pytest.raises(ConfigError, match="drop --pool-patches"):
        _config(stores["data"], tmp_path / "x.zarr", keep="cls,gap", pool_patches=7)
    r = runner.invoke(app, ["convert", str(stores["full"]), str(tmp_path / "y.zarr"), "--keep", "patch"])
    assert r.exit_code == 2 and "a light store keeps one of" in r.output and "Traceback" not in r.output
    assert parse_keep(" gap , cls ") == ("cls", "gap") and parse_keep(None) is None


def test_light_tokens_on_a_non_square_grid_in_float16() -> None:
    layout = TokenLayout(num_prefix=2, cls_index=1, num_registers=1, grid=(3, 5))  # register first, then CLS
    x = np.random.default_rng(0).normal(size=(4, 2, 17, 6)).astype(np.float16)
    y = light_tokens(x, layout, ("cls", "gap"), "float16")
    assert y.shape == (4, 2, 2, 6) and y.dtype == np.float16
    assert y[..., 0, :].tobytes() == x[..., 1, :].tobytes()  # CLS, wherever the prefix holds it
    mean = x[..., 2:, :].astype(np.float64).mean(axis=-2)
    assert y[..., 1, :].tobytes() == mean.astype(np.float32).astype(np.float16).tobytes()
    assert light_tokens(x[:1], layout, ("cls", "gap"), "float16").tobytes() == y[:1].tobytes()  # any block size


def _probe(store: Path, out: Path, **kw: Any) -> dict[tuple[str, str, str], dict[str, Any]]:
    base: dict[str, Any] = {"epochs": 2, "warmup": 0, "batch_size": 4, "lr": (0.01,), "optimizer": ("adamw",),
                            "holdout": 0.0, "device": "cpu", "layers": "last"}
    res = probe_store(ProbeConfig(store=str(store), out=str(out), **{**base, **kw}), progress=False)
    rows = {(r["config"]["kind"], r["config"]["tokens"], r["name"]): r for r in res.rows}
    assert len(rows) == len(res.rows)
    return rows


def _assert_close(a: Any, b: Any, where: str) -> None:
    """Equal metrics: counts, predictions and intervals exactly, float values to 1e-5 relative."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_close(x, y, f"{where}[{i}]")
    elif isinstance(a, float):
        assert b == pytest.approx(a, rel=1e-5, abs=1e-7), where
    else:
        assert a == b, where


def test_linear_and_knn_rows_match_the_full_store(stores: dict[str, Path], tmp_path: Path) -> None:
    kw = {"head": ("linear", "knn"), "tokens": ("cls", "gap", "cls+gap"), "k": (3,)}
    full, light = _probe(stores["full"], tmp_path / "f", **kw), _probe(stores["light"], tmp_path / "l", **kw)
    assert full.keys() == light.keys() and {"linear", "knn"} <= {k for k, _, _ in full}
    assert {t for _, t, _ in full} == {"cls", "gap", "cls+gap"}
    for key, row in full.items():
        # GAP of the full store is the reader's float32 mean, the light store's a float64 mean rounded once to
        # float32: ~1e-7 relative apart. Predictions, confusions and top-1 are equal; losses agree to 1e-5
        _assert_close(row["metrics"], light[key]["metrics"], str(key))
        assert row["metrics"]["eval"]["confusion"] == light[key]["metrics"]["eval"]["confusion"]


def test_grid_heads_are_refused_and_alf_runs(stores: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"head 'ep' reads tokens patch, but this is a light store.*full store"):
        _probe(stores["light"], tmp_path / "ep", head="ep", tokens="patch", queries=(2,))
    assert not (tmp_path / "ep" / "results.jsonl").exists()
    rows = _probe(stores["light"], tmp_path / "alf", head="alf", layers="all")
    assert [k for k, _, _ in rows] == ["alf"] and all(r["metrics"]["eval"]["n"] == 9 for r in rows.values())
    assert [r["config"]["tokens"] for r in rows.values()] == ["cls+gap"]
    mixes = _probe(stores["light"], tmp_path / "mix", head=("linear", "ncm", "logreg(C=[1.0])"), tokens=("cls+gap",),
                   layer_mix=("concat", "mean"), layers="all")
    assert {k for k, _, _ in mixes} >= {"linear", "ncm", "logreg"}
    assert {"concat", "mean"} <= {r["input"]["layer_mix"] for r in mixes.values()}
    assert all(r["metrics"]["eval"]["n"] == 9 for r in mixes.values())
