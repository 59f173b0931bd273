"""``extract --taps``: activations inside ViT blocks, one hooked forward, each tap a nested store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch
from extract_helpers import TINY_VIT, TINY_VIT_KWARGS, make_imagefolder, read_all, tiny_config
from typer.testing import CliRunner

from epcache.cli import app
from epcache.convert import ConvertConfig, convert_store
from epcache.errors import ConfigError
from epcache.extract import extract_store, plan_extract
from epcache.extract._loader import decode_image
from epcache.extract._pixels import Normalizer, pil_steps, to_uint8_chw
from epcache.extract._transforms import create_eval_transform, resolve_data_config
from epcache.store import FeatureStore, open_store, verify_store
from epcache.store.verify.blocks import mark_blocks_missing

ALL_TAPS = "block,attn_out,attn_norm,mlp_hidden,mlp_out"
MODULES = {"attn_out": "attn", "attn_norm": "norm2", "mlp_hidden": "mlp.act", "mlp_out": "mlp"}  # the test's own


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_imagefolder(tmp_path / "data", splits={"train": 6, "val": 5})


def _checkpoint(tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(3)
    model = timm.create_model(TINY_VIT, pretrained=False, **TINY_VIT_KWARGS).eval()
    path = tmp_path / "vit.pth"
    torch.save({"model": model.state_dict()}, path)
    return model, path


def _manual_taps(model: torch.nn.Module, data: Path, ids: list[str], batch: int) -> dict[str, list[np.ndarray]]:
    """Each tap of every block, from a forward of the test's own with hooks it registers itself.

    The pixels follow extraction's path (PIL resize and crop to uint8, then ToTensor + Normalize on
    the tensor) and the batches are the store's blocks, so float32 values must be bit-identical.
    """
    dc = resolve_data_config(model, img_size=TINY_VIT_KWARGS["img_size"])
    steps, normalize = pil_steps(create_eval_transform(dc)), Normalizer(dc["mean"], dc["std"])
    got: dict[str, list[list[torch.Tensor]]] = {t: [[] for _ in model.blocks] for t in MODULES}
    handles = []
    for tap, path in MODULES.items():
        for i, block in enumerate(model.blocks):
            module = block.get_submodule(path)
            handles.append(module.register_forward_hook(lambda _m, _a, out, t=tap, i=i: got[t][i].append(out)))
    try:
        for start in range(0, len(ids), batch):
            x = torch.stack([to_uint8_chw(steps(decode_image(data / i))) for i in ids[start : start + batch]])
            with torch.inference_mode():
                model.forward_features(normalize(x))
    finally:
        for h in handles:
            h.remove()
    return {t: [torch.cat(per).numpy() for per in layers] for t, layers in got.items()}


def test_taps_equal_a_manual_hooked_forward_bit_for_bit(data: Path, tmp_path: Path) -> None:
    model, ckpt = _checkpoint(tmp_path)
    cfg = tiny_config(data, tmp_path / "s.zarr", random_init=False, weights=ckpt, dtype="float32", taps=ALL_TAPS)
    assert cfg.taps == "attn_out,attn_norm,mlp_hidden,mlp_out"  # block is the main tree, never a tap store
    assert extract_store(cfg, progress=False).status == "complete"
    with open_store(cfg.out) as store:
        assert set(store.meta.taps or {}) == set(MODULES)
        assert store.meta.taps["mlp_hidden"] == {"dim": 4 * store.meta.dim, "keep": None}
        splits = {name: store.read_ids(name) for name in store.splits}
    for split, ids in splits.items():
        want = _manual_taps(model, data, ids, batch=4)  # chunk_samples=4: a block is one batch
        for tap in MODULES:
            with open_store(cfg.out, tap=tap) as ts:
                assert ts.meta.tap is not None and ts.meta.tap["name"] == tap
                assert ts.read_ids(split) == ids and np.array_equal(ts.read_labels(split),
                                                                    open_store(cfg.out).read_labels(split))
                for layer in ts.meta.layers:
                    got = ts.read_tokens(split, layer)[:, 0]  # (N, T, D_tap)
                    assert got.dtype == np.float32 and np.array_equal(got, want[tap][layer]), (split, tap, layer)


def test_a_pooled_tap_is_convert_keep_of_the_full_tap(data: Path, tmp_path: Path) -> None:
    full = tiny_config(data, tmp_path / "full.zarr", taps="mlp_hidden")
    gap = tiny_config(data, tmp_path / "gap.zarr", taps="mlp_hidden:gap")
    extract_store(full, progress=False)
    extract_store(gap, progress=False)
    light = tmp_path / "light.zarr"
    convert_store(ConvertConfig(src=str(full.out) + "/taps/mlp_hidden", dst=light, keep="cls,gap,registers"),
                  progress=False)
    with open_store(gap.out, tap="mlp_hidden") as pooled, open_store(light) as converted:
        assert pooled.meta.layout.keep == ("cls", "gap", "registers") and pooled.meta.num_tokens == 2
        assert pooled.meta.tap == {"name": "mlp_hidden", "module": "blocks.{layer}.mlp.act",
                                   "keep": ["cls", "gap", "registers"]}
        for split in pooled.splits:
            for layer in pooled.meta.layers:
                a, b = pooled.read_tokens(split, layer), converted.read_tokens(split, layer)
                assert a.dtype == b.dtype == np.float16 and a.tobytes() == b.tobytes()
    assert read_all(gap.out).keys() == read_all(full.out).keys()  # the block outputs: untouched by a tap's pooling
    copy = tmp_path / "copy.zarr"
    convert_store(ConvertConfig(src=full.out, dst=copy, dtype="float32"), progress=False)
    with open_store(copy) as c:  # a converted copy holds block outputs only: it lists no taps it lacks
        assert c.meta.taps is None and verify_store(copy).ok


def test_launched_units_refuse_taps(data: Path, tmp_path: Path) -> None:
    from epcache.launch.units import plan_extract_units

    cfg = tiny_config(data, tmp_path / "s.zarr", taps="attn_norm")
    with pytest.raises(ConfigError, match="cannot be launched yet"):
        plan_extract_units(cfg, 2, tmp_path / "run", progress=False)
    assert not (tmp_path / "s.zarr").exists()


def test_provenance_keys_of_block_and_tap_stores_differ(data: Path, tmp_path: Path) -> None:
    plain = tiny_config(data, tmp_path / "plain.zarr", splits={"val": "val"})
    tapped = tiny_config(data, tmp_path / "tapped.zarr", splits={"val": "val"}, taps="attn_norm,mlp_out")
    extract_store(plain, progress=False)
    extract_store(tapped, progress=False)
    with open_store(plain.out) as p, open_store(tapped.out) as t:
        doc = p.meta_document()
        assert "taps" not in doc and "tap" not in doc  # a store without taps: its document as before
        keys = {p.provenance, t.provenance}
        for name in ("attn_norm", "mlp_out"):
            with open_store(tapped.out, tap=name) as ts:
                assert ts.meta.layers == t.meta.layers and ts.meta.dim == t.meta.dim  # same shapes, other values
                assert ts.computed_provenance() == ts.provenance
                keys.add(ts.provenance)
        assert len(keys) == 4
        assert np.array_equal(p.read_tokens("val", 1), t.read_tokens("val", 1))  # hooks change no block output
    with pytest.raises(ConfigError, match="has no tap 'mlp_hidden'"):
        open_store(tapped.out, tap="mlp_hidden")
    with pytest.raises(ConfigError, match="its taps: none"):
        open_store(plain.out, tap="attn_norm")


@pytest.mark.reliability_bad_input
@pytest.mark.parametrize(
    ("extra", "out", "words"),
    [
        (["--taps", "block,mlp_hiden"], "s.zarr", "unknown tap 'mlp_hiden'"),
        (["--taps", "attn_norm", "--model", "resnet18", "--img-size", "64"], "s.zarr", "convnet"),
        (["--taps", "mlp_hidden"], "s.h5", "zarr store"),
    ],
)
def test_cli_refusals_exit_2_and_write_nothing(data: Path, tmp_path: Path, extra: list[str], out: str,
                                               words: str) -> None:
    args = ["extract", "--model", TINY_VIT, "--random-init", "--model-kwargs", json.dumps(TINY_VIT_KWARGS),
            "--data", str(data), "--split", "val=val", "--out", str(tmp_path / out), "--workers", "0", *extra]
    if "--model" in extra:  # the convnet replaces the ViT and its kwargs
        args = [a for a in args if a not in (TINY_VIT, json.dumps(TINY_VIT_KWARGS), "--model-kwargs")]
        args.remove("--model")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert words in result.stderr and "--taps" in result.stderr
    assert not (tmp_path / out).exists()


def test_dry_run_lists_each_tap_with_its_bytes(data: Path, tmp_path: Path) -> None:
    plan = plan_extract(tiny_config(data, tmp_path / "s.zarr", taps="attn_norm,mlp_hidden,mlp_out:gap"))
    sizes = {name: nbytes for name, _, nbytes in plan.taps}
    assert sizes["mlp_hidden"] == 4 * sizes["attn_norm"] == 4 * plan.total_bytes
    assert sizes["mlp_out:gap"] < sizes["attn_norm"]
    text = plan.format_text()
    assert "tap        mlp_hidden     D=768" in text and "4.00x the block outputs" in text
    assert "tap        attn_norm      D=192" in text and "tap        mlp_out:gap" in text
    assert not (tmp_path / "s.zarr").exists()


class _Killed(RuntimeError):
    pass


def test_resume_after_an_interruption_completes_every_tap(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny_config(data, tmp_path / "s.zarr", taps="attn_out,mlp_hidden:gap")
    write_block = FeatureStore.write_block
    calls = {"n": 0}

    def dying(self: FeatureStore, *args: Any, **kwargs: Any) -> None:
        if "taps/mlp_hidden" in self.location:
            calls["n"] += 1
            if calls["n"] == 3:  # mid-run: a block of one tap never lands
                raise _Killed("killed")
        write_block(self, *args, **kwargs)

    monkeypatch.setattr(FeatureStore, "write_block", dying)
    with pytest.raises(_Killed):
        extract_store(cfg, progress=False)
    monkeypatch.setattr(FeatureStore, "write_block", write_block)
    with open_store(cfg.out, tap="mlp_hidden") as tap:
        assert not tap.is_complete()
    assert not verify_store(cfg.out).ok

    with open_store(cfg.out, "a", tap="attn_out") as tap:  # and one block of another tap lost afterwards
        mark_blocks_missing(tap, [("val", 1, 0)])
    result = extract_store(cfg, progress=False)
    assert result.status == "complete" and result.resumed
    assert sum(result.samples.values()) < 11  # the missing blocks, not the whole dataset

    clean = tiny_config(data, tmp_path / "clean.zarr", taps="attn_out,mlp_hidden:gap")
    extract_store(clean, progress=False)
    for tap in (None, "attn_out", "mlp_hidden"):
        loc = cfg.out if tap is None else f"{cfg.out}/taps/{tap}"
        ref = clean.out if tap is None else f"{clean.out}/taps/{tap}"
        got, want = read_all(loc), read_all(ref)
        assert got.keys() == want.keys()
        assert all(got[k].tobytes() == want[k].tobytes() for k in want), tap
    assert verify_store(cfg.out).ok


def test_a_deleted_tap_is_rebuilt_by_a_rerun(data: Path, tmp_path: Path) -> None:
    import shutil

    cfg = tiny_config(data, tmp_path / "s.zarr", splits={"val": "val"}, taps="attn_norm")
    extract_store(cfg, progress=False)
    before = read_all(f"{cfg.out}/taps/attn_norm")
    shutil.rmtree(Path(cfg.out) / "taps" / "attn_norm")
    assert "tap attn_norm" in verify_store(cfg.out).problems[0]
    result = extract_store(cfg, progress=False)
    assert result.status == "complete" and result.resumed
    after = read_all(f"{cfg.out}/taps/attn_norm")
    assert all(after[k].tobytes() == before[k].tobytes() for k in before)


def test_verify_catches_an_edited_tap_chunk(data: Path, tmp_path: Path) -> None:
    cfg = tiny_config(data, tmp_path / "s.zarr", splits={"val": "val"}, taps="attn_norm", dtype="float32")
    extract_store(cfg, progress=False)
    assert verify_store(cfg.out).ok
    layer_dir = Path(cfg.out) / "taps" / "attn_norm" / "splits" / "val" / "layers" / "1"
    chunk = next(p for p in sorted(layer_dir.rglob("*")) if p.is_file() and p.name != "zarr.json")
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    report = verify_store(cfg.out)
    assert not report.ok and not report.bad_blocks  # the block outputs are intact
    assert any(p.startswith("tap attn_norm: split=val layer=1") and "checksum" in p for p in report.problems)
    result = CliRunner().invoke(app, ["verify", str(cfg.out)])
    assert result.exit_code != 0 and "tap attn_norm" in result.output
    assert "fix: delete each damaged tap's directory" in result.output and "metadata itself" not in result.output
    info = CliRunner().invoke(app, ["info", str(cfg.out)])
    assert info.exit_code == 0 and "tap         attn_norm   D=192" in info.output


def test_repair_refuses_a_tap_store_alone(data: Path, tmp_path: Path) -> None:
    from epcache.extract import extract_config_from_store

    cfg = tiny_config(data, tmp_path / "s.zarr", splits={"val": "val"}, taps="mlp_out")
    extract_store(cfg, progress=False)
    with pytest.raises(ConfigError, match="re-run the extraction of the parent store"):
        extract_config_from_store(f"{cfg.out}/taps/mlp_out", data=data)
    assert extract_config_from_store(cfg.out, data=data).taps == "mlp_out"  # repair of the parent keeps its taps


def test_the_layout_doc_example_reads_a_tap_as_epcache_does(data: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import re

    text = (Path(__file__).resolve().parents[2] / "cache_layout.md").read_text(encoding="utf-8")
    section = text[text.index("\n### 2.7 ") : text.index("\n## 3.")]
    (example,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    cfg = tiny_config(data, tmp_path / "store.zarr", taps="mlp_hidden", dtype="float32")
    extract_store(cfg, progress=False)
    monkeypatch.chdir(tmp_path)
    scope: dict[str, Any] = {}
    exec(example, scope)  # the block verbatim, as the document shows it
    with open_store(cfg.out, tap="mlp_hidden") as tap:
        want = tap.read_tokens("val", tap.meta.layers[-1])
    assert scope["h"].shape[-1] == 4 * 192 and np.array_equal(scope["h"], want)
    assert np.array_equal(scope["cls_hidden"], want[:, 0, 0])
