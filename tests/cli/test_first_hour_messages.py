"""What a new user reads in the first hour: convnet layouts, dry-run time, derived stores in `ls`, attention."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from extract_helpers import make_imagefolder
from probe_helpers import write_store
from typer.testing import CliRunner

from epcache.cli import app
from epcache.extract._estimate import format_duration

runner = CliRunner()
CONVNET = ["--model", "resnet18", "--random-init", "--img-size", "64", "--workers", "0", "--no-progress"]
TIME_LINE = re.compile(r"^time\s+~\d+(\.\d)? (s|min|h) on cpu \(estimate: measured 1 batch of \d+ images; "
                       r"forward only, decoding not included\)$", re.MULTILINE)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("imgs"), splits={"train": 6, "val": 3})


def test_dry_run_of_a_convnet_names_its_layout_and_estimates_the_time(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "rn.zarr"
    r = runner.invoke(app, ["extract", *CONVNET, "--data", str(data), "--out", str(out), "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "T=4: no prefix tokens (convnet feature map) + 2x2 patches" in r.output
    assert "None" not in r.output and "0 prefix" not in r.output
    assert TIME_LINE.search(r.output), r.output
    assert not out.exists()  # measuring wrote nothing


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a CUDA device")
def test_dry_run_on_a_missing_cuda_device_says_it_could_not_measure(data: Path, tmp_path: Path) -> None:
    r = runner.invoke(app, ["extract", *CONVNET, "--data", str(data), "--out", str(tmp_path / "x.zarr"), "--dry-run",
                            "--device", "cuda"])
    assert r.exit_code == 0, r.output
    assert "time       not measured: torch sees no CUDA device for --device cuda" in r.output


def test_durations_are_rough() -> None:
    assert [format_duration(s) for s in (0.2, 42, 720, 3 * 3600 + 1800)] == ["1 s", "42 s", "12 min", "3.5 h"]


def test_info_of_a_convnet_store_has_no_cls_at_none(data: Path, tmp_path: Path) -> None:
    store = tmp_path / "rn.zarr"
    r = runner.invoke(app, ["extract", *CONVNET, "--data", str(data), "--out", str(store)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["info", str(store)])
    assert r.exit_code == 0, r.output
    assert "T=4: no prefix tokens (convnet feature map) + 2x2 patches" in r.output and "CLS at None" not in r.output
    vit = write_store(tmp_path / "vit.zarr", n_train=8, n_val=4)
    r = runner.invoke(app, ["info", str(vit)])
    assert "T=17: 1 prefix (CLS at 0, 0 registers) + 4x4 patches" in r.output


def test_ls_shows_that_a_converted_store_is_derived(tmp_path: Path) -> None:
    from epcache.convert import ConvertConfig, convert_store

    src = write_store(tmp_path / "src.zarr", n_train=16, n_val=8)
    convert_store(ConvertConfig(src, tmp_path / "derived" / "small.zarr", layers="1", dtype="float32"), progress=False)
    r = runner.invoke(app, ["ls", str(tmp_path)])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("derived/small.zarr"))
    block = lines[at + 1: next((j for j in range(at + 1, len(lines)) if not lines[j].startswith(" ")), len(lines))]
    derived = [line for line in block if "derived from" in line]
    assert len(derived) == 1 and "src.zarr" in derived[0] and "by epcache convert" in derived[0]
    assert "layers" in derived[0] and "dtype=float32" in derived[0]
    src_at = next(i for i, line in enumerate(lines) if line.startswith("src.zarr"))
    assert "derived from" not in lines[src_at + 1]  # the source itself is not derived
    r = runner.invoke(app, ["ls", str(tmp_path), "--json"])
    import json

    entries = {Path(e["location"]).name: e for e in json.loads(r.output)}
    assert entries["small.zarr"]["derived_from"]["ops"] and entries["src.zarr"]["derived_from"] is None


@pytest.mark.reliability_bad_input
def test_attention_on_a_run_without_attentive_heads_says_what_to_run(tmp_path: Path) -> None:
    store = write_store(tmp_path / "s.zarr", n_train=40, n_val=16)
    run = tmp_path / "run"
    r = runner.invoke(app, ["probe", "--store", str(store), "--head", "linear", "--epochs", "1", "--warmup", "0",
                            "--batch-size", "16", "--no-progress", "--device", "cpu", "--out", str(run)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["attention", str(run)])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "this run has no attentive config (its heads: linear" in r.output
    assert "pass --config ID" not in r.output and "no --config ID would work" in r.output
    assert f"epcache probe --store {store} --head ep --out {run}" in r.output
    assert f"epcache attention {run}" in r.output
