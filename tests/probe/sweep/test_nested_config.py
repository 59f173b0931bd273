"""ProbeConfig is read nested by concern (``c.optim.lr``) but built, changed and recorded by flat names.

The flat names are what the command line, grid files and every run directory's ``config.json``
use, so a flat construction and the nested one are the same config, ``dataclasses.replace`` with a
flat name changes the right group, and ``to_json()`` writes exactly the flat record it always has.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from epcache._docs import leaf_fields
from epcache.errors import ConfigError
from epcache.probe import ProbeConfig
from epcache.probe.config.probe_config import (
    DataConfig,
    HeadsConfig,
    InputsConfig,
    OptimConfig,
    RunConfig,
    SolverConfig,
    section_of,
)
from epcache.probe.sweep.grid import resolve_request

SECTIONS = {"inputs": InputsConfig, "heads": HeadsConfig, "optim": OptimConfig, "data": DataConfig,
            "solvers": SolverConfig, "run": RunConfig}

# a value other than the default for every setting, as the command line or a grid file would give it
FLAT: dict[str, Any] = dict(
    store="s.zarr", grid="g.toml", head=("linear", "ep"), queries=(4, 8), d_out=(2,), num_heads=(3,),
    layers=(-1, "last"), tokens=("cls", "patch"), layer_mix=("concat",), recipe="ep-paper", lr=(1e-3,), blr=(0.1,),
    wd=(0.05,), optimizer=("adamw",), seeds=(0, 1), epochs=3, warmup=0.5, batch_size=16, min_steps=10, data_seed=7,
    holdout=0.2, shots=5, fraction=0.5, train_split="tr", eval_split="va", eval_store="e.zarr", out="runs/x",
    device="cpu", in_memory=False, allow_incomplete=True, dtype="float64", amp="none", compile=True, fused=False,
    save_heads=False, prefetch=2, shuffle_chunks=8, eval_cache_mb=64.0, eval_curve=False, shard="0/2",
    trust_store=True, cache_dir="/tmp/cache", cache_max_gb=1.5, k=(5, 10), temperature=(0.1,), c_preset="clip",
    tries=3, standardize=True, refit=False, select="cv3", linear_fit="sgd", check_anchor="board.csv",
    protocol="vtab1k", repeats=5, tap="mlp_hidden",
)

# config.json as the flat ProbeConfig wrote it before the settings were grouped: keys, order and values
EXPECTED_JSON: dict[str, Any] = {
    "store": "s.zarr", "head": ["linear", "ep"], "queries": [4, 8], "d_out": [2], "num_heads": [3],
    "layers": [-1, "last"], "tokens": ["cls", "patch"], "layer_mix": ["concat"], "recipe": "ep-paper",
    "lr": [0.001], "blr": [0.1], "wd": [0.05], "optimizer": ["adamw"], "seeds": [0, 1], "epochs": 3, "warmup": 0.5,
    "batch_size": 16, "min_steps": 10, "data_seed": 7, "holdout": 0.2, "shots": 5, "fraction": 0.5,
    "train_split": "tr", "eval_split": "va", "eval_store": "e.zarr", "grid": "g.toml", "out": "runs/x",
    "device": "cpu", "in_memory": False, "allow_incomplete": True, "dtype": "float64", "amp": "none",
    "compile": True, "fused": False, "save_heads": False, "prefetch": 2, "shuffle_chunks": 8, "eval_cache_mb": 64.0,
    "eval_curve": False, "shard": "0/2", "trust_store": True, "cache_dir": "/tmp/cache", "cache_max_gb": 1.5,
    "k": [5, 10], "temperature": [0.1], "c_preset": "clip", "tries": 3,
    "standardize": True, "refit": False, "select": "cv3", "linear_fit": "sgd", "check_anchor": "board.csv",
    "protocol": "vtab1k", "repeats": 5, "tap": "mlp_hidden",
}


def _nested() -> ProbeConfig:
    groups = {name: cls(**{f.name: FLAT[f.name] for f in dataclasses.fields(cls)}) for name, cls in SECTIONS.items()}
    return ProbeConfig(store=FLAT["store"], grid=FLAT["grid"], **groups)


def test_flat_construction_equals_nested_construction() -> None:
    flat = ProbeConfig(**FLAT)
    assert flat == _nested()
    assert (flat.optim.lr, flat.data.holdout, flat.run.out, flat.heads.queries) == ((1e-3,), 0.2, "runs/x", (4, 8))
    assert flat.inputs.layers == (-1, "last") and flat.solvers.k == (5, 10)


def test_flat_settings_override_the_group_that_holds_them() -> None:
    c = ProbeConfig(store="s.zarr", optim=OptimConfig(lr=(1e-3,), epochs=2), epochs=5)
    assert (c.optim.lr, c.optim.epochs) == ((1e-3,), 5)


def test_replace_routes_a_flat_name_into_its_group() -> None:
    c = ProbeConfig(**FLAT)
    changed = dataclasses.replace(c, shots=None, lr=3e-3, out="runs/y")
    assert (changed.data.shots, changed.optim.lr, changed.run.out) == (None, (3e-3,), "runs/y")
    assert {k: v for k, v in changed.flat().items() if k not in ("shots", "lr", "out")} == {
        k: v for k, v in c.flat().items() if k not in ("shots", "lr", "out")}
    grid_merge = dataclasses.replace(c, optim=OptimConfig(recipe="auto"))  # a whole group, as replace passes them
    assert grid_merge.optim == OptimConfig() and grid_merge.data == c.data


def test_to_json_is_flat_and_the_same_record_as_before() -> None:
    doc = ProbeConfig(**FLAT).to_json()
    assert doc == EXPECTED_JSON and list(doc) == list(EXPECTED_JSON)
    assert ProbeConfig(**doc) == ProbeConfig(**FLAT)  # config.json / plan.json of a run directory reads back


def test_from_cli_and_a_grid_file_take_the_flat_names(tmp_path: Any) -> None:
    grid = tmp_path / "g.toml"
    grid.write_text('epochs = 3\n[[grid]]\nhead = "linear"\nlr = [1e-3]\n[[grid]]\nhead = "ep"\nqueries = [4]\n',
                    encoding="utf-8")
    request = resolve_request(ProbeConfig.from_cli(store="s.zarr", grid=str(grid), holdout="0", k="5,10"))
    assert request.config.optim.epochs == 3 and request.config.data.holdout == 0.0
    assert [(b.heads.head, b.optim.lr, b.heads.queries) for b in request.blocks] == [
        (("linear",), (1e-3,), ()), (("ep",), (), (4,))]
    assert request.config.solvers.k == (5, 10)


def test_every_flat_name_maps_to_exactly_one_group() -> None:
    names = [f.name for f in leaf_fields(ProbeConfig)]
    assert len(names) == len(set(names)) == len(EXPECTED_JSON)
    assert set(names) == set(EXPECTED_JSON) == set(ProbeConfig(store="s.zarr").flat())
    for name in names:
        group = section_of(name)
        holders = [g for g, cls in SECTIONS.items() if name in {f.name for f in dataclasses.fields(cls)}]
        assert holders == ([group] if group else []), name
    assert {section_of("store"), section_of("grid")} == {""}


def test_an_unknown_flat_name_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"unknown ProbeConfig field\(s\) \['learning_rate'\]; accepted: \["):
        ProbeConfig(store="s.zarr", learning_rate=(1e-3,))
    with pytest.raises(ConfigError, match=r"unknown ProbeConfig field\(s\) \['lrs'\]"):
        dataclasses.replace(ProbeConfig(store="s.zarr"), lrs=(1e-3,))


def test_a_group_is_checked_with_the_rest_in_one_message() -> None:
    with pytest.raises(ConfigError) as err:
        ProbeConfig(store="s.zarr", optim=OptimConfig(epochs=0), tries=0)
    assert str(err.value).startswith("epochs must be an integer >= 1") and "; tries must be" in str(err.value)
    with pytest.raises(ConfigError, match="ProbeConfig optim: expected OptimConfig, got dict"):
        ProbeConfig(store="s.zarr", optim={"epochs": 2})  # type: ignore[arg-type]


def test_help_lists_every_setting_under_its_group() -> None:
    text = ProbeConfig.__doc__ or ""
    for name, cls in SECTIONS.items():
        assert f"    {name} ({cls.__name__}):" in text
        for f in dataclasses.fields(cls):
            assert f"        {f.name} (" in text and str(f.metadata["doc"]) in text
