"""Sweep grids: comma lists, cartesian products, canonical names and ids, TOML grids, validation."""

from __future__ import annotations

from pathlib import Path

import pytest
from probe_helpers import make_meta

from epcache.errors import ConfigError, UnknownLayerError
from epcache.probe import ProbeConfig, expand_sweep
from epcache.probe.config.probe_config import parse_heads, parse_layers, parse_list

META = make_meta(dim=16, layers=(0, 1))


def expand(**kw: object) -> list:
    cfg = ProbeConfig(store="s.zarr", **kw)  # type: ignore[arg-type]
    return expand_sweep(cfg, META, num_classes=4, store_provenance="p", eval_provenance="p")


def test_parse_helpers() -> None:
    assert parse_list("1e-3, 3e-3", float) == (0.001, 0.003)
    assert parse_list("4,8,16", int) == (4, 8, 16)
    assert parse_list(None) == ()
    assert parse_heads("linear,ep(queries=8,d_out=2),mhca") == ("linear", "ep(queries=8,d_out=2)", "mhca")
    assert parse_layers("all") == ("all",)
    assert parse_layers("9,10,11") == (9, 10, 11)
    with pytest.raises(ConfigError, match="x"):
        parse_list("1,x", int)
    with pytest.raises(ConfigError, match="unbalanced"):
        parse_heads("ep(queries=8")
    with pytest.raises(ConfigError, match="block index"):
        parse_layers("first")


def test_config_normalises_scalars_and_comma_strings() -> None:
    cfg = ProbeConfig(store="s", head="linear,ep", queries=8, lr="1e-3,3e-3", seeds=[0, 1], layers=1)  # type: ignore[arg-type]
    assert cfg.heads.head == ("linear", "ep")
    assert cfg.heads.queries == (8,)
    assert cfg.optim.lr == (0.001, 0.003)
    assert cfg.optim.seeds == (0, 1)
    assert cfg.inputs.layers == (1,)
    with pytest.raises(ConfigError, match="queries"):
        ProbeConfig(store="s", queries=[True])  # type: ignore[list-item]


def test_cartesian_product_applies_head_options_only_where_accepted() -> None:
    runs = expand(head="linear,ep", queries="4,8", lr="0.01,0.1", seeds="0,1", tokens="gap,patch")
    kinds = [r.head.kind for r in runs]
    assert kinds.count("linear") == 1 * 2 * 2  # queries does not multiply linear heads
    assert kinds.count("ep") == 2 * 2 * 2
    assert {r.tokens for r in runs if r.head.kind == "linear"} == {"gap"}
    assert {r.tokens for r in runs if r.head.kind == "ep"} == {"patch"}
    assert len({r.id for r in runs}) == len(runs)
    assert all(r.layer == 1 for r in runs)  # default: last stored layer


def test_names_and_ids_are_canonical_and_independent_of_the_sweep() -> None:
    alone = expand(head="ep", queries=8, lr=0.001, wd=0.0, seeds=0)
    sweep = expand(head="linear,ep", queries="4,8", lr="0.001,0.01", wd="0,1e-4", seeds="0,1")
    assert alone[0].name == "ep(queries=8,d_out=1) layer=1 patch lr=0.001 wd=0 seed=0"
    match = [r for r in sweep if r.name == alone[0].name]
    assert len(match) == 1 and match[0].id == alone[0].id
    # the id covers every setting that changes the numbers, the store's provenance included
    other = expand_sweep(ProbeConfig(store="s", head="ep", queries=8, lr=0.001), META, num_classes=4,
                         store_provenance="another store", eval_provenance="p")
    assert other[0].name == alone[0].name and other[0].id != alone[0].id
    assert expand(head="ep", queries=8, lr=0.001, epochs=30)[0].id != alone[0].id


def test_blr_scales_with_batch_size() -> None:
    runs = expand(head="ep", queries=4, blr="0.1,0.2", batch_size=512)
    assert [(r.lr, r.blr) for r in runs] == [(0.2, 0.1), (0.4, 0.2)]
    assert expand(head="ep", queries=4, lr=0.5)[0].blr is None


def test_layers_all_and_unknown_layer() -> None:
    assert sorted({r.layer for r in expand(head="ep", queries=4, layers="all")}) == [0, 1]
    with pytest.raises(UnknownLayerError, match="no layer"):
        expand(head="ep", queries=4, layers="7")


def test_every_invalid_config_is_reported_in_one_error() -> None:
    with pytest.raises(ConfigError) as err:
        expand(head="linear,ep,nosuchhead", queries="3,4", tokens="patch", lr=0.1, blr=0.2, optimizer="adamax")
    msg = str(err.value)
    assert "nothing was trained" in msg
    assert "unknown head kind 'nosuchhead'" in msg
    assert "D divisible by d_out*M" in msg and "M=3" in msg  # queries=3 does not divide D=16
    assert "linear" in msg and "cannot read tokens ['patch']" in msg
    assert "give --lr (absolute) or --blr" in msg
    assert "unknown optimizer ['adamax']" in msg
    # a field's own value is refused by the config itself, every refused field in one message
    with pytest.raises(ConfigError) as err:
        ProbeConfig(store="s", lr=-1.0, epochs=0)
    assert str(err.value) == "lr values must be finite numbers > 0, got -1.0; epochs must be an integer >= 1, got 0"


def test_option_given_for_no_head_and_cls_on_store_without_cls() -> None:
    with pytest.raises(ConfigError, match="--queries was given but none of the heads"):
        expand(head="linear", queries=8)
    with pytest.raises(ConfigError, match="give --lr .* not both"):
        expand(head="ep", queries=4, lr=0.1, blr=0.2)


def test_explicit_head_spec_options_win_over_axes() -> None:
    runs = expand(head="ep(queries=2),ep", queries="4,8", lr=0.001)
    assert sorted(r.head.kwargs["queries"] for r in runs) == [2, 4, 8]


def test_toml_grid_is_a_union_of_sub_grids(tmp_path: Path) -> None:
    grid = tmp_path / "sweep.toml"
    grid.write_text(
        'epochs = 3\nwarmup = 1\nbatch_size = 64\n\n'
        '[[grid]]\nhead = "linear"\ntokens = ["cls", "gap"]\nlr = [0.001, 0.01]\n\n'
        '[[grid]]\nhead = "ep"\nqueries = [4, 8]\nlr = 0.01\n',
        encoding="utf-8",
    )
    runs = expand(grid=str(grid))
    assert len(runs) == 2 * 2 + 2
    assert all(r.settings.epochs == 3 and r.settings.batch_size == 64 for r in runs)
    assert {r.tokens for r in runs if r.head.kind == "linear"} == {"cls", "gap"}


def test_toml_grid_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("heads = ['ep']\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="unknown key"):
        expand(grid=str(bad))
    shared = tmp_path / "shared.toml"
    shared.write_text('[[grid]]\nhead = "ep"\nepochs = 2\n[[grid]]\nhead = "linear"\nepochs = 3\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="epochs differs"):
        expand(grid=str(shared))
    broken = tmp_path / "broken.toml"
    broken.write_text("epochs = = 3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        expand(grid=str(broken))
    with pytest.raises(ConfigError, match="does not exist"):
        expand(grid=str(tmp_path / "missing.toml"))
