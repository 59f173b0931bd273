"""`epcache extract --weights 'ckpts/*.pth'`: one store per checkpoint over one data plan, steps recorded."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from extract_helpers import tiny_config
from series_helpers import EXTRACT_ARGS, STEPS, series_data, train_checkpoints
from typer.testing import CliRunner

import epcache.extract._series as series_mod
from epcache.cli import app
from epcache.errors import ConfigError, WeightsError
from epcache.extract import Checkpoint, extract_series, is_series, list_checkpoints
from epcache.extract._series import checkpoint_step, series_store
from epcache.store import open_store

runner = CliRunner()


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("series")
    train_checkpoints(root / "ckpts")
    return series_data(root / "data"), root


def test_series_shares_one_plan_and_records_each_step(made: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    data, root = made
    plans = []
    real_prepare = series_mod.prepare
    monkeypatch.setattr(series_mod, "prepare", lambda cfg: plans.append(cfg) or real_prepare(cfg))
    out = root / "stores"
    r = runner.invoke(app, ["extract", "--weights", str(root / "ckpts" / "*.pth"), "--data", str(data),
                            "--out", str(out), *EXTRACT_ARGS])
    assert r.exit_code == 0, r.output
    assert len(plans) == 1  # the data is listed and the plan made once for the four stores
    assert sorted(p.name for p in out.iterdir()) == sorted(f"checkpoint_{s}.zarr" for s in STEPS)
    fingerprints, provenances = set(), set()
    for step in STEPS:
        ckpt = root / "ckpts" / f"checkpoint_{step}.pth"
        with open_store(str(out / f"checkpoint_{step}.zarr")) as store:
            assert store.is_complete()
            rec = store.meta.extra["checkpoint"]
            assert rec["step"] == step
            assert rec["file"] == ckpt.name and rec["location"] == f"../ckpts/{ckpt.name}"  # relative, portable
            assert rec["sha256"] == store.meta.backbone.weights_sha256 == hashlib.sha256(ckpt.read_bytes()).hexdigest()
            fingerprints.add(tuple((n, s.ids_sha256, s.labels_sha256, s.num_samples) for n, s in
                                   sorted(store.splits.items())))
            provenances.add(store.provenance)
    assert len(fingerprints) == 1  # same ids, order and labels in every store
    assert len(provenances) == 4  # different weights: four different stores
    again = runner.invoke(app, ["extract", "--weights", str(root / "ckpts" / "*.pth"), "--data", str(data),
                                "--out", str(out), *EXTRACT_ARGS])
    assert again.exit_code == 0, again.output
    assert again.output.count("already complete") == 4  # a re-run (a killed series resumed) skips finished stores


def test_steps_option_and_library_call(made: tuple[Path, Path], tmp_path: Path) -> None:
    data, root = made
    a, b = root / "ckpts" / "checkpoint_0.pth", root / "ckpts" / "checkpoint_300.pth"
    series = list_checkpoints([f"{b},{a}"], steps=[20, 10])
    assert series == [Checkpoint(a, 10), Checkpoint(b, 20)]  # --steps in listed order, the series in step order
    results = extract_series(tiny_config(data, tmp_path / "lib", random_init=False, splits={"val": "val"}), series,
                             progress=False)
    assert [r.store for r in results] == [series_store(tmp_path / "lib", c) for c in series]
    with open_store(results[0].store) as store:
        assert store.meta.extra["checkpoint"]["step"] == 10


def test_step_rule() -> None:
    assert checkpoint_step(Path("ckpts/checkpoint_12500.pth")) == 12500
    assert checkpoint_step(Path("run3/model_0009999.pth")) == 9999  # the last integer of the stem only
    assert checkpoint_step(Path("teacher_ep10_it2500.pth")) == 2500
    assert is_series(["ckpts/*.pth"]) and is_series(["a.pth,b.pth"]) and is_series(["a.pth", "b.pth"])
    assert not is_series(["ckpts/checkpoint_12500.pth"])
    with pytest.raises(ConfigError, match="--steps"):
        checkpoint_step(Path("checkpoint_final.pth"))


@pytest.mark.parametrize(
    ("weights", "extra", "message"),
    [
        ("{ckpts}/*.safetensors", [], "matches no file"),
        ("{ckpts}/*.pth,{ckpts}/final.pt", [], "cannot read a training step from .*final.pt"),
        ("{ckpts}/*.pth", ["--steps", "1,2"], "--steps lists 2 steps for 4 checkpoints"),
        ("{ckpts}/checkpoint_0.pth,{ckpts}/checkpoint_100.pth", ["--steps", "5,5"], "both read as step 5"),
        ("{ckpts}/*.pth", ["--steps", "1,x,3,4"], "comma-separated integers"),
        ("{ckpts}/*.pth,{ckpts}/missing_400.pth", [], "missing_400.pth does not exist"),
    ],
)
def test_bad_series_exits_2_before_any_store(
    made: tuple[Path, Path], tmp_path: Path, weights: str, extra: list[str], message: str
) -> None:
    data, root = made
    (root / "ckpts" / "final.pt").write_bytes((root / "ckpts" / "checkpoint_0.pth").read_bytes())
    out = tmp_path / "out"
    r = runner.invoke(app, ["extract", "--weights", weights.format(ckpts=root / "ckpts"), "--data", str(data),
                            "--out", str(out), *extra, *EXTRACT_ARGS])
    (root / "ckpts" / "final.pt").unlink()
    assert r.exit_code == 2, r.output
    assert re.search(message, r.output), r.output
    assert not out.exists()  # nothing written, not even the series directory


def test_series_out_must_be_a_directory(made: tuple[Path, Path], tmp_path: Path) -> None:
    data, root = made
    series = list_checkpoints([str(root / "ckpts" / "*.pth")])
    with pytest.raises(ConfigError, match="one store per checkpoint"):
        extract_series(tiny_config(data, tmp_path / "one.zarr", random_init=False), series, progress=False)
    with pytest.raises(WeightsError, match="does not exist"):
        extract_series(tiny_config(data, tmp_path / "d", random_init=False),
                       [*series, Checkpoint(root / "ckpts" / "gone_9.pth", 9)], progress=False)
    assert not (tmp_path / "d").exists()
