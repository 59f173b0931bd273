"""Suite presets: ``--protocol vtab1k`` (train800/val200 selects, train800val200 refits, test scored once) and
``--repeats N`` (the sweep over data seeds, reported as the mean ± std of each repeat's selected config)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from probe_helpers import config, make_meta, write_store
from typer.testing import CliRunner

from epcache.cli import app
from epcache.errors import ConfigError
from epcache.probe import probe_store
from epcache.probe.data.select import split_vtab
from epcache.probe.results.ranking import group_by_seed

TINY = {"head": "linear", "tokens": "gap", "queries": (), "epochs": 2, "warmup": 0, "batch_size": 100, "min_steps": 0,
        "lr": "0.01,0.1"}


def _store(path: Path, n_train: int, n_eval: int = 120, splits: tuple[str, ...] = ("train", "test")) -> Path:
    return write_store(path, n_train=n_train, n_val=n_eval, meta=make_meta(dim=8, layers=(0,)), chunk_samples=100,
                       splits=splits)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("suite")
    return {"big": _store(root / "big.zarr", 1200), "small": _store(root / "small.zarr", 500),
            "plain": _store(root / "plain.zarr", 160, 60, ("train", "val"))}


def _vtab(store: Path, **kw: object) -> object:
    base = {"protocol": "vtab1k", "eval_split": "test", "holdout": None, "refit": True, "layers": "0"}
    return config(store, **(base | TINY | kw))


def test_vtab1k_selects_on_200_refits_on_1000_and_scores_the_test_split_once(stores: dict, tmp_path: Path) -> None:
    result = probe_store(_vtab(stores["big"], out=str(tmp_path / "run")), progress=False)
    assert len(result.rows) == 2
    for row in result.rows:
        d, p = row["data"], row["protocol"]
        assert (d["num_train"], d["num_holdout"], d["num_eval"]) == (800, 200, 120)
        assert row["metrics"]["holdout"]["n"] == 200 and row["metrics"]["eval"]["n"] == 120
        assert row["refit"]["enabled"] is True and row["refit"]["train_size"] == 1000
        assert p["suite"] == "vtab1k" and p["selection_rule"] == "holdout" and p["refit"] is True
        assert (p["holdout_size"], p["train_size"]) == (200, 800) and p["holdout_rule"].startswith("vtab1k:")
        assert "repeats" not in p
    plan_line = result.notes[0]
    assert "train 800 / holdout 200 / eval 120" in plan_line and "protocol vtab1k" in plan_line
    # a vtab1k config is not the holdout-0.2 config of the same store: its own id
    plain = probe_store(config(stores["big"], eval_split="test", holdout=0.2, refit=True, layers="0", **TINY),
                        progress=False)
    assert {r["id"] for r in plain.rows}.isdisjoint({r["id"] for r in result.rows})
    assert plain.rows[0]["data"]["num_train"] == 960  # the plain holdout trains on all the other rows


def test_split_vtab_takes_exactly_800_and_200_stratified_and_the_seed_draws_another() -> None:
    labels = np.repeat([0, 1, 2], [500, 300, 200])  # exactly 1,000 rows: all of them are train800val200
    a = split_vtab(labels, np.ones(1000, bool), rows=1000, holdout=200, seed=0)
    assert (len(a.train), len(a.holdout)) == (800, 200)
    assert np.array_equal(np.union1d(a.train, a.holdout), np.arange(1000))
    assert not np.intersect1d(a.train, a.holdout).size
    assert np.bincount(labels[a.holdout]).tolist() == [100, 60, 40]
    b = split_vtab(labels, np.ones(1000, bool), rows=1000, holdout=200, seed=1)
    assert not np.array_equal(a.holdout, b.holdout)
    again = split_vtab(labels, np.ones(1000, bool), rows=1000, holdout=200, seed=0)
    assert np.array_equal(a.holdout, again.holdout)
    more = np.repeat([0, 1, 2, 3], [7, 400, 400, 400])  # more than 1,000: a stratified 1,000 first
    usable = np.ones(len(more), bool)
    usable[:3] = False  # skipped rows are never drawn
    c = split_vtab(more, usable, rows=1000, holdout=200, seed=0)
    rows = np.union1d(c.train, c.holdout)
    assert len(rows) == 1000 and rows.min() >= 3
    assert np.bincount(more[rows]).tolist() == [4, 332, 332, 332]  # 1000 x 4/1204 = 3.32: the largest remainder
    assert np.bincount(more[c.train]).min() >= 1  # every class keeps a training row


def test_vtab1k_is_refused_on_a_small_store_and_with_the_flags_it_fixes(stores: dict) -> None:
    with pytest.raises(ConfigError, match=r"needs 1,000 usable rows in the train split 'train'.*it has 500"):
        probe_store(_vtab(stores["small"]), progress=False)
    for given, named in (({"holdout": 0.1}, "--holdout 0.1"), ({"select": "cv5"}, "--select cv5"),
                         ({"refit": False}, "--no-refit"), ({"shots": 5}, "--shots 5"),
                         ({"head": "linear,knn"}, "solver heads knn")):
        with pytest.raises(ConfigError, match="--protocol vtab1k fixes the selection") as e:
            probe_store(_vtab(stores["big"], **given), progress=False)
        assert named in str(e.value) and "drop --protocol vtab1k" in str(e.value)
    with pytest.raises(ConfigError, match="--eval-split test"):
        probe_store(_vtab(stores["big"], eval_split="train"), progress=False)
    with pytest.raises(ConfigError, match="--protocol must be one of none, vtab1k"):
        probe_store(_vtab(stores["big"], protocol="vtab2k"), progress=False)


def test_repeats_run_the_sweep_per_data_seed_and_report_the_selected_mean_and_std(stores: dict,
                                                                                    tmp_path: Path) -> None:
    out = tmp_path / "run"
    kw = TINY | {"repeats": 3, "data_seed": 5, "layers": "0", "out": str(out)}
    result = probe_store(config(stores["plain"], **kw), progress=False)
    assert len(result.rows) == 6 and len(group_by_seed(result.rows)) == 6  # seed groups stay apart per data seed
    rep = result.repeats
    assert rep is not None and rep.data_seeds == (5, 6, 7)
    for i, (seed, selected) in enumerate(zip(rep.data_seeds, rep.selected, strict=True)):
        mine = [r for r in result.rows if r["config"]["data_seed"] == seed]
        assert len(mine) == 2 and selected in mine
        assert all(r["protocol"]["repeats"] == 3 and r["protocol"]["repeat"] == i for r in mine)
        assert selected["metrics"]["holdout"]["top1"] == max(r["metrics"]["holdout"]["top1"] for r in mine)
    top1 = np.array([r["metrics"]["eval"]["top1"] for r in rep.selected])
    assert rep.eval_top1 == pytest.approx(tuple(top1))
    assert rep.mean == pytest.approx(top1.mean()) and rep.std == pytest.approx(top1.std(ddof=1))
    assert f"{100 * top1.mean():.2f} ± {100 * top1.std(ddof=1):.2f}" in result.summary
    assert f"{100 * top1.mean():.2f} ± " in (out / "summary.txt").read_text()
    assert all((out / f"summary.repeat-{i}.txt").is_file() and (out / f"plan.repeat-{i}.json").is_file()
               for i in range(3))
    again = probe_store(config(stores["plain"], **kw), progress=False)  # a rerun skips every repeat's rows
    assert sorted(again.skipped) == sorted(r["id"] for r in result.rows)
    assert again.repeats is not None and again.repeats.mean == pytest.approx(rep.mean)


def test_repeats_that_cannot_vary_anything_are_refused(stores: dict) -> None:
    c = config(stores["plain"], head="knn", holdout=0.0, select="holdout", repeats=2, layers="0")
    with pytest.raises(ConfigError, match="--repeats 2 would repeat identical numbers"):
        probe_store(c, progress=False)


@pytest.mark.parametrize(("which", "argv", "message"), [
    ("big", ["--protocol", "vtab1k", "--eval-split", "test", "--holdout", "0.1"], "cannot take --holdout 0.1"),
    ("big", ["--protocol", "vtab1k", "--eval-split", "test", "--no-refit"], "cannot take --no-refit"),
    ("small", ["--protocol", "vtab1k", "--eval-split", "test", "--head", "linear"], "needs 1,000 usable rows"),
    ("plain", ["--repeats", "0"], "repeats"),
    ("plain", ["--head", "knn", "--holdout", "0", "--select", "holdout", "--repeats", "2"], "identical numbers"),
])
def test_cli_refusals_exit_2_with_one_line(stores: dict, which: str, argv: list[str], message: str) -> None:
    res = CliRunner().invoke(app, ["probe", "--store", str(stores[which]), "--layers", "0", "--device", "cpu",
                                   "--no-progress", *argv])
    assert res.exit_code == 2, res.output
    assert message in res.output


def test_a_grid_file_may_set_repeats_but_not_the_preset(stores: dict, tmp_path: Path) -> None:
    grid = tmp_path / "sweep.toml"
    grid.write_text("repeats = 2\ndata_seed = 3\n", encoding="utf-8")
    result = probe_store(config(stores["plain"], grid=str(grid), **(TINY | {"lr": 0.1, "layers": "0"})),
                         progress=False)
    assert result.repeats is not None and result.repeats.data_seeds == (3, 4) and len(result.rows) == 2
    grid.write_text('protocol = "vtab1k"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"\['protocol'\] cannot be set in a grid file"):
        probe_store(config(stores["big"], grid=str(grid), eval_split="test", **TINY), progress=False)
