"""`epcache extract --quantize`, the size table of `--dry-run` and `info`, and probing a quantised store."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from epcache.cli import app
from epcache.demo._shapes import ShapesConfig, make_shapes_dataset
from epcache.store import describe_store, open_store, verify_store

runner = CliRunner()
TINY = ["--model", "vit_tiny_patch16_224", "--random-init", "--img-size", "32", "--workers", "0", "--no-progress",
        "--layers", "-1:"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    return make_shapes_dataset(root, ShapesConfig(num_classes=3, train_per_class=6, val_per_class=2, size=32))


def _sizes(text: str) -> dict[str, str]:
    return dict(re.findall(r"^  (\S+)\s+([\d.]+ [KMGT]?B)\s", text, flags=re.MULTILINE))


def test_dry_run_prints_every_option(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "dry.zarr"
    args = ["extract", *TINY, "--data", str(data), "--out", str(out), "--dry-run", "--quantize", "int8"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    sizes = _sizes(r.output)
    assert set(sizes) == {"float32", "float16", "bfloat16", "int8-channel", "int8-token", "fp8-e4m3", "2x2-pooled",
                          "light"}
    assert "int8-channel codes + scales" in r.output and "<- this store" in r.output
    # vit_tiny at 32 px: T = 1 + 2x2 = 5, D = 192; 24 samples (18 train, 6 val), 1 layer
    assert sizes["float16"] == "45.0 KB" and sizes["float32"] == "90.0 KB"
    # int8 per channel: 1 byte a value + one float32 per channel per chunk (one chunk per split here)
    assert sizes["int8-channel"] == f"{(24 * 5 * 192 + 2 * 192 * 4) / 1024:.1f} KB"
    assert sizes["2x2-pooled"] == f"{24 * 2 * 192 * 2 / 1024:.1f} KB"  # 1 prefix + 1x1 pooled grid
    assert sizes["light"] == f"{24 * 2 * 192 * 2 / 1024:.1f} KB"  # CLS + the one gap token (--keep)
    assert not out.exists()


def test_extract_quantized_then_info_verify_and_probe(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "q.zarr"
    r = runner.invoke(app, ["extract", *TINY, "--data", str(data), "--out", str(out), "--quantize", "int8"])
    assert r.exit_code == 0, r.output
    ref = tmp_path / "f.zarr"
    assert runner.invoke(app, ["extract", *TINY, "--data", str(data), "--out", str(ref)]).exit_code == 0
    with open_store(out) as q, open_store(ref) as f:
        assert q.meta.quantization == "int8-channel" and q.format_version == "1.2"
        x, y = f.read_tokens("val", 11).astype(np.float32), q.read_tokens("val", 11).astype(np.float32)
        assert np.abs(x - y).max() <= np.abs(x).max() / 127  # at most one int8 step of the largest channel
        assert q.provenance != f.provenance  # the quantisation is part of what the tokens are
    info = runner.invoke(app, ["info", str(out)])
    assert info.exit_code == 0 and "stored as int8-channel" in info.output and "<- this store" in info.output
    assert describe_store(out).quantization == "int8-channel"
    assert verify_store(out).ok
    run = tmp_path / "run"
    p = runner.invoke(app, ["probe", "--store", str(out), "--head", "linear", "--epochs", "2", "--warmup", "1",
                            "--batch-size", "8", "--no-progress", "--out", str(run)])
    assert p.exit_code == 0, p.output
    row = json.loads((run / "results.jsonl").read_text().splitlines()[0])
    assert 0.0 <= row["metrics"]["eval"]["top1"] <= 1.0


def test_info_json_lists_sizes(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "t.h5"
    r = runner.invoke(app, ["extract", *TINY, "--data", str(data), "--out", str(out), "--quantize", "int8-token"])
    assert r.exit_code == 0, r.output
    info = describe_store(out)
    sizes = {o["name"]: o["bytes"] for o in info.sizes}
    assert sizes["int8-token"] == 24 * 5 * 192 + 24 * 5 * 4  # one float32 scale per token
    assert sizes["float16"] == 2 * 24 * 5 * 192


def test_bad_quantize_value_exits_2(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "bad.zarr"
    r = runner.invoke(app, ["extract", *TINY, "--data", str(data), "--out", str(out), "--quantize", "int4"])
    assert r.exit_code == 2, r.output
    assert "unknown quantisation 'int4'" in r.output and "Traceback" not in r.output
    assert not out.exists()
