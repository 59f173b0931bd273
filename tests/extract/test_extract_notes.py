"""Settings that do something other than their name suggests are said once or refused.

``--amp`` on the CPU is honoured (CPU autocast; the tokens differ from float32 and the store
records amp), so it is a one-line note, like ``--decode gpu`` falling back. ``--final-norm`` on a
convnet whose final norm sits in its head would store raw maps labelled as normed, so it is
refused, like a ViT whose only final norm is ``fc_norm``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from extract_helpers import make_imagefolder, tiny_config
from typer.testing import CliRunner

from epcache.cli import app
from epcache.errors import ConfigError
from epcache.extract import extract_store, plan_extract
from epcache.store import open_store


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("imgs"), splits={"train": 4})


def _notes(err: str) -> list[str]:
    return [line for line in err.splitlines() if "--amp" in line]


def test_amp_on_the_cpu_is_said_once_and_recorded(folder: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bf16.zarr"
    extract_store(tiny_config(folder, out, splits={"train": "train"}, amp="bf16"), progress=False)
    (line,) = _notes(capsys.readouterr().err)
    assert line.startswith("epcache: --amp bf16 on the CPU") and "bfloat16" in line and "drop --amp" in line
    with open_store(out) as store:
        assert store.meta.preprocessing["amp"] == "bf16" and store.meta.extra["device"] == "cpu"
    extract_store(tiny_config(folder, tmp_path / "fp16.zarr", splits={"train": "train"}, amp="fp16", dry_run=True),
                  progress=False)
    (line,) = _notes(capsys.readouterr().err)
    assert "--amp fp16 on the CPU" in line and "float16" in line
    extract_store(tiny_config(folder, tmp_path / "f32.zarr", splits={"train": "train"}, dry_run=True), progress=False)
    assert _notes(capsys.readouterr().err) == []


@pytest.mark.reliability_bad_input
@pytest.mark.parametrize("model", ["resnet18", "convnext_atto"])
def test_final_norm_on_a_convnet_without_one_is_refused(folder: Path, tmp_path: Path, model: str) -> None:
    out = tmp_path / "c.zarr"
    cfg = tiny_config(folder, out, splits={"train": "train"}, model=model, model_kwargs={}, img_size=64,
                      final_norm=True)
    with pytest.raises(ConfigError, match=rf"{model} is a convnet with no final norm.*drop --final-norm"):
        plan_extract(cfg)
    with pytest.raises(ConfigError, match="convnet with no final norm"):
        extract_store(cfg, progress=False)
    assert not out.exists()


def test_final_norm_on_a_convnet_that_has_one_is_planned(folder: Path, tmp_path: Path) -> None:
    """ConvNeXt with head_norm_first normalises its last map (timm's norm_pre): --final-norm means something."""
    cfg = tiny_config(folder, tmp_path / "c.zarr", splits={"train": "train"}, model="convnext_atto",
                      model_kwargs={"head_norm_first": True}, img_size=64, final_norm=True)
    assert plan_extract(cfg).final_norm


@pytest.mark.reliability_bad_input
def test_cli_final_norm_on_a_convnet_is_one_line(folder: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, [
        "extract", "--model", "resnet18", "--random-init", "--model-kwargs", json.dumps({}), "--img-size", "64",
        "--data", str(folder), "--split", "train=train", "--out", str(tmp_path / "r.zarr"), "--final-norm",
        "--dry-run",
    ])
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert "--final-norm" in result.stderr and "convnet" in result.stderr
