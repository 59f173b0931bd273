"""``epcache convert``: derived stores equal extraction with the same options, and never lose or fake data."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from convert_helpers import all_bytes, grid4_config, make_imagefolder, store_files
from typer.testing import CliRunner

from epcache.cli import app
from epcache.convert import ConvertConfig, convert_store
from epcache.errors import CorruptStoreError, IncompleteStoreError, UnknownLayerError
from epcache.extract import extract_store
from epcache.probe import ProbeConfig, probe_store
from epcache.store import open_store, verify_store

runner = CliRunner()


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("conv")
    data = make_imagefolder(root / "data", splits={"train": 14, "val": 9})
    out = {"data": data, "src": root / "src.zarr", "pool": root / "pool.zarr"}
    extract_store(grid4_config(data, out["src"], layers="all", views=1, chunk_samples=4, pooled=True), progress=False)
    extract_store(grid4_config(data, out["pool"], layers="all", views=1, chunk_samples=4, pooled=True, pool_patches=2),
                  progress=False)
    return out


def test_convert_pooling_equals_extract_with_pooling_byte_for_byte(stores: dict[str, Path], tmp_path: Path) -> None:
    dst = tmp_path / "conv.zarr"
    r = runner.invoke(app, ["convert", str(stores["src"]), str(dst), "--pool-patches", "2", "--chunk-samples", "3",
                            "--no-progress"])  # other chunking than the source: blocks straddle its chunks
    assert r.exit_code == 0, r.output
    assert "pool_patches=2" in r.output and "derived from" in r.output
    assert all_bytes(dst) == all_bytes(stores["pool"])
    with open_store(dst) as c, open_store(stores["pool"]) as p, open_store(stores["src"]) as s:
        assert c.meta.layout == p.meta.layout and c.split("train").chunk_samples == 3
        for split in c.splits:
            assert c.read_pooled(split).tobytes() == p.read_pooled(split).tobytes()  # --pooled output copied
        doc = c.meta_document()
        assert doc["derived_from"] == {"provenance": s.provenance, "ops": {"pool_patches": 2}}
        where = c.meta.extra["derived_from"]  # the source's name, and its location relative to the copy
        assert where["name"] == "src.zarr" and not Path(where["location"]).is_absolute()
        assert (dst.parent / where["location"]).resolve() == stores["src"].resolve()
        assert c.provenance not in (s.provenance, p.provenance) and c.computed_provenance() == c.provenance
    assert verify_store(str(dst), progress=False).ok
    info = runner.invoke(app, ["info", str(dst)])
    assert f"derived     from {stores['src']}" in info.output and "pooled 2x2" in info.output


def test_layer_subset_and_split_subset_keep_the_sources_bytes(stores: dict[str, Path], tmp_path: Path) -> None:
    dst = tmp_path / "last.zarr"
    res = convert_store(ConvertConfig(src=stores["src"], dst=dst, layers="last", splits=("val",)), progress=False)
    assert res.ops == {"layers": [1], "splits": ["val"]}
    src = all_bytes(stores["src"], layers=(1,))
    assert all_bytes(dst) == {k: v for k, v in src.items() if k[0] == "val"}
    with open_store(dst) as d, open_store(stores["src"]) as s:
        assert d.meta.layers == (1,) and list(d.splits) == ["val"]
        assert d.split("val").ids_sha256 == s.split("val").ids_sha256
        assert d.split("val").classes == s.split("val").classes
    with pytest.raises(UnknownLayerError, match="stores no layer"):
        convert_store(ConvertConfig(src=dst, dst=tmp_path / "x.zarr", layers="0"), progress=False)
    assert not (tmp_path / "x.zarr").exists()


def test_zarr_to_h5_and_back_reads_equal_and_probes(stores: dict[str, Path], tmp_path: Path) -> None:
    h5, back = tmp_path / "s.h5", tmp_path / "back.zarr"
    convert_store(ConvertConfig(src=stores["pool"], dst=h5), progress=False)
    convert_store(ConvertConfig(src=h5, dst=back), progress=False)
    assert all_bytes(h5) == all_bytes(stores["pool"]) == all_bytes(back)
    for p in (h5, back):
        assert verify_store(str(p), progress=False).ok
    with open_store(back) as b:
        assert b.meta.derived_from is not None and b.meta.layout.pool_patches == 2
    res = probe_store(ProbeConfig(store=str(h5), head="linear,ep", tokens="cls,patch", queries=(2,), epochs=1, warmup=0,
                                  batch_size=4, lr=(0.01,), optimizer=("adamw",), holdout=0.0, device="cpu"),
                      progress=False)
    assert sorted(r["config"]["kind"] for r in res.rows) == ["ep", "linear", "ridge"]  # last layer; ridge: lstsq fit
    with open_store(h5) as s:
        assert {r["store"]["provenance"] for r in res.rows} == {s.provenance}  # rows name the derived store


def test_dtype_change_is_the_rounded_source(stores: dict[str, Path], tmp_path: Path) -> None:
    dst = tmp_path / "bf.zarr"
    convert_store(ConvertConfig(src=stores["src"], dst=dst, dtype="bfloat16", layers="0"), progress=False)
    with open_store(dst) as d, open_store(stores["src"]) as s:
        assert d.meta.dtype == "bfloat16"
        x = s.read_tokens("train", 0).astype(np.float32)
        y = d.read_tokens("train", 0).astype(np.float32)
        np.testing.assert_allclose(y, x, rtol=2**-8, atol=0)
    assert verify_store(str(dst), progress=False).ok


def test_refusals_exit_2_and_leave_nothing(stores: dict[str, Path], tmp_path: Path) -> None:
    src = stores["src"]
    before = all_bytes(src)
    for args, msg in [
        ([str(src), str(src)], "is the source"),
        ([str(src), str(src / "inner.zarr")], "overlaps it"),
        ([str(src), str(tmp_path / "a.zarr"), "--pool-patches", "3"], "not divisible by 3"),
        ([str(src), str(tmp_path / "a.zarr"), "--layers", "5"], "valid indices are 0..1"),
        ([str(src), str(tmp_path / "a.zarr"), "--splits", "test"], "has splits train, val"),
        ([str(tmp_path / "none.zarr"), str(tmp_path / "a.zarr")], "none.zarr"),
    ]:
        r = runner.invoke(app, ["convert", *args, "--no-progress"])
        assert r.exit_code == 2 and msg in r.output and "Traceback" not in r.output, (args, r.output)
    assert store_files(tmp_path) == [] and all_bytes(src) == before
    assert not (src / "inner.zarr").exists()
    existing = tmp_path / "e.zarr"
    convert_store(ConvertConfig(src=src, dst=existing, layers="0"), progress=False)
    r = runner.invoke(app, ["convert", str(src), str(existing), "--no-progress"])
    assert r.exit_code == 2 and "--overwrite" in r.output
    convert_store(ConvertConfig(src=src, dst=existing, layers="1", overwrite=True), progress=False)
    with open_store(existing) as e:
        assert e.meta.layers == (1,)
    assert store_files(tmp_path) == ["e.zarr"]


def test_incomplete_or_corrupt_source_is_refused(stores: dict[str, Path], tmp_path: Path) -> None:
    from epcache.store.verify.blocks import mark_blocks_missing

    bad = tmp_path / "src.zarr"
    shutil.copytree(stores["src"], bad)
    with open_store(bad, "a") as st:
        mark_blocks_missing(st, [("val", 1, 1)])
    with pytest.raises(IncompleteStoreError, match="not written"):
        convert_store(ConvertConfig(src=bad, dst=tmp_path / "a.zarr"), progress=False)
    r = runner.invoke(app, ["convert", str(bad), str(tmp_path / "a.zarr"), "--no-progress"])
    assert r.exit_code == 2 and "--resume" in r.output
    shutil.rmtree(bad)
    shutil.copytree(stores["src"], bad)
    chunk = bad / "splits/train/layers/1/c/1/0/0/0"
    raw = bytearray(chunk.read_bytes())
    raw[100] ^= 0xFF  # one flipped byte: found by the chunk's crc32c while converting
    chunk.write_bytes(bytes(raw))
    with pytest.raises(CorruptStoreError):
        convert_store(ConvertConfig(src=bad, dst=tmp_path / "a.zarr"), progress=False)
    assert store_files(tmp_path) == ["src.zarr"]


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_interrupted_convert_leaves_no_complete_looking_store(
    stores: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    from epcache.convert import _run

    dst = tmp_path / f"d{suffix}"
    convert_store(ConvertConfig(src=stores["src"], dst=dst, layers="0"), progress=False)  # a store the user has
    kept = all_bytes(dst)
    calls = {"n": 0}
    real = _run.pool_patch_tokens

    def failing(*args: object, **kw: object) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # killed in the middle of the second layer
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(_run, "pool_patch_tokens", failing)
    with pytest.raises(KeyboardInterrupt):
        convert_store(ConvertConfig(src=stores["src"], dst=dst, pool_patches=2, overwrite=True), progress=False)
    assert calls["n"] == 4
    assert all_bytes(dst) == kept  # the old store untouched; no staging copy, no lock left
    assert store_files(tmp_path) == [dst.name]
    fresh = tmp_path / f"fresh{suffix}"
    calls["n"] = 0
    with pytest.raises(KeyboardInterrupt):
        convert_store(ConvertConfig(src=stores["src"], dst=fresh, pool_patches=2), progress=False)
    assert not fresh.exists() and store_files(tmp_path) == [dst.name]


def test_convnet_stage_subset_pooled_in_bfloat16_equals_extraction(tmp_path: Path) -> None:
    """Layers of different grids (a convnet's stages): the kept ones' shapes, pooled, in bfloat16."""
    data = make_imagefolder(tmp_path / "data", splits={"val": 6})
    common = {"model": "resnet18", "model_kwargs": {}, "img_size": 32, "splits": {"val": "val"},
              "dtype": "bfloat16"}
    full, direct = tmp_path / "full.zarr", tmp_path / "direct.zarr"
    extract_store(grid4_config(data, full, layers="all", **common), progress=False)  # grids 16, 8, 4, 2, 1
    extract_store(grid4_config(data, direct, layers="0,1", pool_patches=2, **common), progress=False)
    r = runner.invoke(app, ["convert", str(full), str(tmp_path / "all.zarr"), "--pool-patches", "2"])
    assert r.exit_code == 2 and "layer 4 is 1x1" in r.output  # the last stage has no grid left to pool
    assert "leave this layer out" in r.output and not (tmp_path / "all.zarr").exists()
    conv = tmp_path / "conv.zarr"
    convert_store(ConvertConfig(src=full, dst=conv, layers="0,1", pool_patches=2), progress=False)
    assert all_bytes(conv) == all_bytes(direct)
    with open_store(full) as f:
        want = {layer: ((h // 2, w // 2), dim) for layer, ((h, w), dim) in f.meta.layer_shapes.items() if layer < 2}
    with open_store(conv) as c, open_store(direct) as d:
        assert c.meta.layer_shapes == d.meta.layer_shapes == want and want[0][0] == (8, 8)
        assert (c.meta.layout, c.meta.dim, c.meta.dtype) == (d.meta.layout, d.meta.dim, "bfloat16")
    last = tmp_path / "last.zarr"
    convert_store(ConvertConfig(src=full, dst=last, layers="last"), progress=False)
    with open_store(last) as s:
        assert s.meta.layer_shapes == {} and s.meta.layout.grid == (1, 1) and s.meta.dim == 512


def test_convert_quantize_equals_extract_quantize_within_quantisation_error(
    stores: dict[str, Path], tmp_path: Path
) -> None:
    """fp16 store -> `convert --quantize int8` against `extract --quantize int8` of the same images: both
    hold codes + scales (format 1.2) whose decoded values lie within one quantisation step of each other
    and within half a step of the fp16 source; `--quantize none` turns the copy back into plain floats."""
    direct = tmp_path / "direct.zarr"
    extract_store(grid4_config(stores["data"], direct, layers="all", views=1, chunk_samples=4, quantize="int8"),
                  progress=False)
    conv = tmp_path / "conv.zarr"
    r = runner.invoke(app, ["convert", str(stores["src"]), str(conv), "--quantize", "int8", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "quantize=int8-channel" in r.output
    with open_store(conv) as c, open_store(direct) as d, open_store(stores["src"]) as s:
        assert c.meta.quantization == d.meta.quantization == "int8-channel" and c.format_version == "1.2"
        assert c.meta_document()["derived_from"]["ops"] == {"quantize": "int8-channel"}
        for split in s.splits:
            for layer in s.meta.layers:
                src = s.read_tokens(split, layer).astype(np.float32)
                a, b = c.read_tokens(split, layer).astype(np.float32), d.read_tokens(split, layer).astype(np.float32)
                steps = [_int8_step(src, st.split(split).chunk_samples) for st in (c, d)]
                fp16 = np.abs(src) * 2.0**-10 + 1e-6  # the decoded value is rounded to fp16 once more
                assert np.all(np.abs(a - src) <= steps[0] / 2 + fp16)
                assert np.all(np.abs(b - src) <= steps[1] / 2 + fp16)
                assert np.all(np.abs(a - b) <= (steps[0] + steps[1]) / 2 + 2 * fp16)
    assert verify_store(str(conv), progress=False).ok
    back = tmp_path / "back.zarr"
    convert_store(ConvertConfig(src=conv, dst=back, quantize="none"), progress=False)
    with open_store(back) as f, open_store(conv) as c:
        assert f.meta.quantization is None and f.meta_document()["derived_from"]["ops"] == {"quantize": "none"}
        assert f.read_tokens("val", 0).tobytes() == c.read_tokens("val", 0).tobytes()  # the decoded values, as floats
    bad = runner.invoke(app, ["convert", str(stores["src"]), str(tmp_path / "bad.zarr"), "--quantize", "int4"])
    assert bad.exit_code == 2 and "unknown quantisation 'int4'" in bad.output and not (tmp_path / "bad.zarr").exists()


def _int8_step(x: np.ndarray, cs: int) -> np.ndarray:
    """The per-channel step of each row's chunk (absmax over the chunk's rows, views and tokens / 127)."""
    return np.concatenate([np.repeat(np.abs(x[i : i + cs]).max(axis=(0, 1, 2), keepdims=True) / 127,
                                     len(x[i : i + cs]), axis=0) for i in range(0, len(x), cs)])
