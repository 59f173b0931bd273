"""`epcache extract` / `epcache models` through the CLI: real runs, dry runs and user errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from epcache.cli import app
from epcache.demo._shapes import ShapesConfig, make_shapes_dataset
from epcache.store import open_store

runner = CliRunner()
TINY = ["--model", "vit_tiny_patch16_224", "--random-init", "--img-size", "32", "--workers", "0", "--no-progress"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    return make_shapes_dataset(root, ShapesConfig(num_classes=3, train_per_class=6, val_per_class=2, size=32))


def test_models_lists_paper_backbones() -> None:
    r = runner.invoke(app, ["models"])
    assert r.exit_code == 0
    assert "mae_vitb" in r.output and "vit_base_patch16_224.mae" in r.output


def test_extract_then_info(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.zarr"
    r = runner.invoke(app, ["extract", *TINY, "--data", str(data), "--out", str(out), "--layers", "-2:"])
    assert r.exit_code == 0, r.output
    with open_store(out) as st:
        assert st.is_complete() and st.meta.layers == (10, 11)
        assert st.split("train").num_samples == 18 and st.split("val").num_samples == 6
    r = runner.invoke(app, ["extract", *TINY, "--data", str(data), "--out", str(out), "--layers", "-2:"])
    assert r.exit_code == 0 and "already complete" in r.output


def test_dry_run_writes_nothing(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "dry.zarr"
    r = runner.invoke(app, ["extract", *TINY, "--data", str(data), "--out", str(out), "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "layers" in r.output and "total" in r.output
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "vit_nope", "--random-init"], "unknown model"),
        (["--model", "vit_tiny_patch16_224", "--random-init", "--layers", "40"], "layer"),
        (["--model", "vit_tiny_patch16_224", "--random-init", "--split", "train"], "NAME=SUBDIR"),
        (["--model", "vit_tiny_patch16_224"], "--random-init"),
    ],
)
def test_bad_input_exits_2_without_a_store(data: Path, tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "bad.zarr"
    r = runner.invoke(app, ["extract", *args, "--img-size", "32", "--workers", "0", "--data", str(data),
                            "--out", str(out)])
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
    assert not out.exists()


def test_missing_data_root(tmp_path: Path) -> None:
    r = runner.invoke(app, ["extract", *TINY, "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o.zarr")])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert not (tmp_path / "o.zarr").exists()
