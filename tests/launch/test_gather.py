"""A sweep launched as layer units gathers to the rows of one process, bit for bit (float64).

Also: every layer is one unit with all of that layer's configs; ``gather`` refuses to merge while
a unit is missing and names it with the re-submit command; the gathered run directory reads as a
single-process run (``results.jsonl`` ranked, ``summary.txt``, heads, ``epcache report``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from launch_helpers import LAYERS, probe_config, rows_by_id, write_probe_store
from typer.testing import CliRunner

from epcache.cli import app
from epcache.errors import ConfigError
from epcache.launch import IncompleteRunError, LaunchOptions, gather, read_plan, submit
from epcache.probe import probe_store
from epcache.probe.results.ranking import group_by_seed, rank
from epcache.probe.results.rows import read_results
from epcache.report import write_report


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_probe_store(tmp_path_factory.mktemp("store") / "s.zarr")


@pytest.fixture(scope="module")
def single(store: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    return rows_by_id(probe_store(probe_config(store, tmp_path_factory.mktemp("single") / "run"), progress=False).rows)


def test_four_layer_units_gather_to_the_rows_of_one_process(store: Path, single: dict, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = submit(run_dir, probe_config(store, None), LaunchOptions(progress=False))
    plan = read_plan(run_dir)
    assert [u["layers"] for u in plan.units] == [[layer] for layer in LAYERS]  # a layer's configs stay together
    assert set(result.outcomes.values()) == {"done"}
    gathered = result.gathered
    # 4 layers x (2 heads x 2 lrs + the linear family's least-squares fit)
    assert gathered is not None and len(gathered.rows) == len(single) == 20
    assert rows_by_id(gathered.rows) == single  # float64: every metric and curve bit-identical
    on_disk = read_results(run_dir / "results.jsonl")
    assert [r["id"] for r in on_disk] == [r["id"] for g in rank(group_by_seed(on_disk)) for r in g.rows]  # ranked
    assert (run_dir / "summary.txt").read_text().strip() == gathered.summary
    assert len(list((run_dir / "heads").glob("*.safetensors"))) == 20
    assert write_report(run_dir, figures=False).num_configs == 20
    assert json.loads((run_dir / "COMPLETE").read_text())["rows"] == 20
    assert gather(run_dir).rows == gathered.rows  # gathering again changes nothing


def test_gather_names_a_missing_unit(store: Path, single: dict, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    submit(run_dir, probe_config(store, None), LaunchOptions(only=("layer000", "layer002", "layer003"),
                                                             wait=False, progress=False))
    with pytest.raises(IncompleteRunError, match=r"1 of 4 units did not finish: layer001\. .*"
                                                 rf"epcache submit {run_dir} --only layer001"):
        gather(run_dir)
    r = CliRunner().invoke(app, ["gather", str(run_dir)])
    assert r.exit_code == 2 and "layer001" in r.output and "Traceback" not in r.output
    assert not (run_dir / "results.jsonl").exists() and not (run_dir / "COMPLETE").exists()
    r = CliRunner().invoke(app, ["submit", str(run_dir), "--only", "layer001", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert rows_by_id(read_results(run_dir / "results.jsonl")) == single


def test_cli_submit_of_a_probe_command_with_a_grid_file(store: Path, single: dict, tmp_path: Path) -> None:
    """The options after `--` are `epcache probe`'s own; a grid file that sets no layers keeps layer units."""
    run_dir, grid = tmp_path / "run", tmp_path / "sweep.toml"
    grid.write_text('dtype = "float64"\n')
    args = ["probe", "--store", str(store), "--head", "linear,ep", "--queries", "2", "--lr", "1e-3,3e-3",
            "--layers", "all", "--optimizer", "adamw", "--epochs", "2", "--warmup", "1", "--batch-size", "32",
            "--grid", str(grid)]
    r = CliRunner().invoke(app, ["submit", str(run_dir), "--no-progress", "--", *args])
    assert r.exit_code == 0, r.output
    assert f"next: epcache report {run_dir}" in r.output
    assert len(read_plan(run_dir).units) == len(LAYERS)
    assert rows_by_id(read_results(run_dir / "results.jsonl")) == single


@pytest.mark.reliability_bad_input
def test_probe_launch_refusals(store: Path, tmp_path: Path) -> None:
    import dataclasses

    cfg = probe_config(store, None)
    with pytest.raises(ConfigError, match="drop --shard"):
        submit(tmp_path / "a", dataclasses.replace(cfg, shard="0/2"), LaunchOptions(progress=False))
    with pytest.raises(ConfigError, match="is not the run directory"):
        submit(tmp_path / "b", dataclasses.replace(cfg, out=str(tmp_path / "elsewhere")), LaunchOptions(progress=False))
    probe_store(dataclasses.replace(cfg, layers=(0,), head=("ep",), lr=(1e-3,), out=str(tmp_path / "plain")),
                progress=False)
    before = (tmp_path / "plain" / "results.jsonl").read_bytes()
    with pytest.raises(ConfigError, match="already holds the results of a sweep"):  # gather would replace them
        submit(tmp_path / "plain", cfg, LaunchOptions(progress=False))
    assert (tmp_path / "plain" / "results.jsonl").read_bytes() == before
    submit(tmp_path / "c", cfg, LaunchOptions(wait=False, only=("layer000",), progress=False))
    with pytest.raises(ConfigError, match="another configuration"):  # a run directory holds one job
        submit(tmp_path / "c", dataclasses.replace(cfg, epochs=3), LaunchOptions(progress=False))
