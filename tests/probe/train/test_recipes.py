"""Recipes, defaults that work from 20 samples up, one resolved config, fingerprints, ranking."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from epcache.cli import app
from epcache.errors import ConfigError
from epcache.probe import ProbeConfig, probe_store, read_results
from epcache.probe.config.protocol import adapted_batch, resolve_protocol
from epcache.probe.config.recipes import RECIPES, get_recipe
from epcache.probe.results.rows import format_summary
from epcache.report import write_report
from epcache.report._tables import best_by, group_seeds
from epcache.store import BackboneMeta, SplitSpec, StoreMeta, TokenLayout, create_store, open_store

D = 32  # EP's default 32 queries need D divisible by 32
GRID = (2, 2)


def separable_store(path: Path, *, n_train: int, n_val: int, num_classes: int, seed: int = 0) -> Path:
    """Every token = its class mean (unit-norm, far apart) + noise: nearest class mean is 100% on val."""
    meta = StoreMeta(
        backbone=BackboneMeta("toy", "random-init", "1.0", "random-init", None, 1),
        layout=TokenLayout(num_prefix=1, cls_index=0, num_registers=0, grid=GRID),
        layers=(0,), final_norm=False, dtype="float16", dim=D, num_tokens=1 + GRID[0] * GRID[1],
        preprocessing={"input_size": [3, 32, 32]},
    )
    rng = np.random.default_rng(seed)
    means = 3.0 * np.linalg.qr(rng.standard_normal((D, D)))[0][:num_classes]
    classes = [f"c{i}" for i in range(num_classes)]
    with create_store(path, meta) as st:
        for split, n in (("train", n_train), ("val", n_val)):
            y = np.arange(n) % num_classes
            st.add_split(SplitSpec(split, y, [f"{split}/{i}" for i in range(n)], classes, views=1, permutation_seed=1),
                         chunk_samples=16)
            stored_y = y[st.read_order(split)]
            x = means[stored_y][:, None, None, :] + 0.5 * rng.standard_normal((n, 1, meta.num_tokens, D))
            for b in range(st.split(split).num_blocks):
                lo, hi = st.block_range(split, b)
                st.write_block(split, 0, b, x[lo:hi].astype(np.float16))
    return path


def ncm_accuracy(store: Path) -> float:
    st = open_store(store)
    gap = lambda split: st.read_tokens(split, 0)[:, 0, 1:].astype(np.float64).mean(1)  # noqa: E731
    xtr, ytr, xva, yva = gap("train"), st.read_labels("train"), gap("val"), st.read_labels("val")
    means = np.stack([xtr[ytr == c].mean(0) for c in range(int(ytr.max()) + 1)])
    pred = np.argmin(((xva[:, None] - means[None]) ** 2).sum(-1), 1)
    return float((pred == yva).mean())


@pytest.mark.slow  # three full default-recipe sweeps (up to 1000 samples, 10 classes)
@pytest.mark.parametrize(("n_train", "num_classes"), [(20, 4), (50, 10), (1000, 10)])
def test_defaults_run_and_learn_from_20_samples_up(tmp_path: Path, n_train: int, num_classes: int) -> None:
    store = separable_store(tmp_path / "s.zarr", n_train=n_train, n_val=200, num_classes=num_classes)
    assert ncm_accuracy(store) == 1.0
    res = probe_store(ProbeConfig(store=str(store), head=("linear", "ep"), device="cpu"), progress=False)
    trained = [r for r in res.rows if not r["config"].get("solver")]  # beside them: the linear family's ridge
    p = trained[0]["protocol"]
    assert p["recipe"] == "auto" and p["total_steps"] >= 1000 and p["warmup_steps"] == round(0.1 * p["total_steps"])
    assert len({r["config"]["lr"] for r in trained}) == 12  # the lr grid, trained fused and chosen on the holdout
    kinds = best_by(group_seeds(res.rows), lambda g: g.kind)
    assert set(kinds) == {"linear", "ep", "ridge"}
    for kind, group in kinds.items():  # the probe's own choice per kind, the closed-form linear fit included
        assert group.eval_top1[0] >= 0.95, (kind, group.name)
    assert res.best is not None and res.best["metrics"]["eval"]["top1"] >= 0.95
    assert res.notes[0].startswith("plan: 1 solver config (ridge) and 24 configs (2 heads x 12 lrs) on 1 layer;")
    if n_train < 1024:  # the recipe's batch 1024 shrank, said once and recorded in every row
        assert any(n.startswith("recipe auto adapted to this dataset: batch") for n in res.notes)
        assert all(r["protocol"]["adapted"] == p["adapted"] != [] for r in trained)


def test_the_plain_cli_command_works_on_a_20_sample_store(tmp_path: Path) -> None:
    store = separable_store(tmp_path / "s.zarr", n_train=20, n_val=40, num_classes=4)
    res = CliRunner().invoke(app, ["probe", "--store", str(store), "--head", "linear,knn", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "plan: 2 solver configs (knn, ridge) and 12 configs (1 head x 12 lrs)" in res.stderr  # on stderr
    assert "k-NN: the default k list capped at the bank of 16 samples: k = (10, 16)" in res.stderr
    explicit = CliRunner().invoke(app, ["probe", "--store", str(store), "--head", "knn", "--k", "10,20,200"])
    assert explicit.exit_code == 2 and "k=200 is larger than the bank" in explicit.output  # explicit: an error
    assert "best overall: " in res.stdout and "linear[cls] L0" in res.stdout


def test_grid_file_settings_are_the_ones_that_run(tmp_path: Path) -> None:
    store = separable_store(tmp_path / "s.zarr", n_train=200, n_val=40, num_classes=4)
    grid = tmp_path / "g.toml"
    grid.write_text('batch_size = 8\nholdout = 0.25\nshots = 10\nepochs = 3\ndata_seed = 5\n'
                    '[[grid]]\nhead = "linear"\nlr = [0.01]\n', encoding="utf-8")
    # the CLI-side values differ: the grid file's must be the ones that run AND the ones recorded
    res = probe_store(ProbeConfig(store=str(store), grid=str(grid), batch_size=64, epochs=9, device="cpu",
                                  linear_fit="sgd"), progress=False)
    (row,) = res.rows
    assert row["data"]["num_train"] == 4 * 10 and row["data"]["num_holdout"] == 4 * 13  # round(0.25 * 50), half up
    assert row["protocol"]["batch_size"] == 8 and row["protocol"]["data_seed"] == 5 and row["config"]["shots"] == 10
    assert row["timing"]["steps_run"] == 3 * (40 // 8) == row["protocol"]["total_steps"]
    assert len(row["curves"]["eval_top1"]) == 3
    bad = tmp_path / "bad.toml"
    bad.write_text('out = "elsewhere"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"\['out'\] cannot be set in a grid file"):
        probe_store(ProbeConfig(store=str(store), grid=str(bad)), progress=False)


def test_impossible_explicit_requests_fail_together_with_the_fixing_flags(tmp_path: Path) -> None:
    store = separable_store(tmp_path / "s.zarr", n_train=50, n_val=20, num_classes=5)
    with pytest.raises(ConfigError) as err:
        probe_store(ProbeConfig(store=str(store), head=("linear",), batch_size=4096, lr=(0.1,), epochs=2, warmup=5,
                                blr=(0.2,), select="holdout"), progress=False)  # the recipe's 10% holdout: 45 train
    msg = str(err.value)
    assert msg.startswith("3 problem(s) in the sweep, nothing was trained")
    assert "--batch-size 4096 is larger than the 45 training samples" in msg
    assert "--warmup must be between 0 and --epochs (2), got 5" in msg
    assert "give --lr (absolute) or --blr" in msg
    with pytest.raises(ConfigError) as err:  # non-finite values: refused by the config itself, both at once
        ProbeConfig(store=str(store), lr=(float("nan"),), blr=(float("inf"),))
    assert str(err.value) == ("lr values must be finite numbers > 0, got nan; "
                              "blr values must be finite numbers > 0, got inf")
    cli = CliRunner().invoke(app, ["probe", "--store", str(store), "--lr", "inf", "--no-progress"])
    assert cli.exit_code == 2 and "lr values must be finite numbers > 0, got inf" in cli.output
    assert "Traceback" not in cli.output


def test_recipes_resolve_as_documented() -> None:
    errors: list[str] = []
    ep = resolve_protocol(ProbeConfig(store="s", recipe="ep-paper"), get_recipe("ep-paper"), n_train=1_153_051,
                          errors=errors)
    assert (ep.optimizers, ep.momentum, ep.batch_size, ep.epochs, ep.lr_rule) == (("lars",), 0.9, 4096, 90, "blr")
    assert ep.lrs == ((1.6, 0.1),) and ep.passes_per_epoch == 1 and ep.adapted == ()
    assert ep.warmup_steps == 10 * (1_153_051 // 4096) and ep.total_steps == 90 * (1_153_051 // 4096)
    short = resolve_protocol(ProbeConfig(store="s", recipe="ep-paper", epochs=5), get_recipe("ep-paper"),
                             n_train=900, errors=errors)
    assert short.batch_size == 64 and short.lrs == ((0.1 * 64 / 256, 0.1),)  # blr rule on the adapted batch
    assert any("warm-up 0.555556 epochs (recipe 10 of 90)" in a for a in short.adapted)
    dino = resolve_protocol(ProbeConfig(store="s", recipe="dinov2-linear"), get_recipe("dinov2-linear"),
                            n_train=1_153_051, errors=errors)
    assert len(dino.lrs) == 13 and dino.optimizers == ("sgd",) and dino.momentum == 0.9 and dino.warmup_steps == 0
    capi = resolve_protocol(ProbeConfig(store="s", recipe="capi-attentive"), get_recipe("capi-attentive"),
                            n_train=100_000, errors=errors)
    assert capi.betas == (0.9, 0.95) and len(capi.lrs) * len(capi.wd) == 18
    assert errors == []
    assert adapted_batch(1024, 18) == 16 and adapted_batch(1024, 10) == 10 and adapted_batch(1024, 10**6) == 1024
    with pytest.raises(ConfigError, match="unknown recipe 'nope'; choose one of auto, ep-paper"):
        get_recipe("nope")
    out = CliRunner().invoke(app, ["recipes"]).output
    for r in RECIPES.values():
        assert r.name in out and r.source in out


def _row(name: str, seed: int, hold: float, ev: float, *, group: str, kind: str = "linear",
         params: int = 10) -> dict:
    m = lambda top1: {"top1": top1, "balanced_acc": top1, "top5": None, "n": 10, "per_class": []}  # noqa: E731
    return {"id": f"{group}-{seed}", "name": f"{name} seed={seed}", "seed_group": group,
            "config": {"kind": kind, "head": name.split(" ")[0], "layer": 0, "tokens": "gap", "seed": seed,
                       "lr": float(name.split("lr=")[1]), "head_options": {}},
            "params": params, "flops": 1, "metrics": {"holdout": m(hold), "eval": m(ev)}, "selected_epoch": 1,
            "oracle": {"epoch": 1, "eval_top1": ev}, "final": {"epoch": 1, "eval_top1": ev},
            "curves": {"eval_top1": [ev], "holdout_top1": [hold], "train_loss": [1.0]},
            "store": {"backbone": "toy", "path": "s", "provenance": "p"}}


def test_summary_and_report_rank_the_same_way() -> None:
    rows = [
        # same name, different protocols (e.g. other shots): never averaged as seeds
        _row("linear lr=0.1", 0, 0.80, 0.70, group="shots5"), _row("linear lr=0.1", 0, 0.60, 0.90, group="shots10"),
        # a tie on the holdout mean: fewer parameters wins, then the name
        _row("linear lr=0.2", 0, 0.90, 0.60, group="a"), _row("linear lr=0.2", 1, 0.70, 0.62, group="a"),
        _row("linear lr=0.3", 0, 0.80, 0.99, group="b", params=5),
        # the single best seed row (0.95) is in a group whose mean (0.75) loses
        _row("ep lr=1", 0, 0.95, 0.5, group="c", kind="ep"), _row("ep lr=1", 1, 0.55, 0.5, group="c", kind="ep"),
    ]
    groups = group_seeds(rows)
    assert len(groups) == 5 and sorted(g.seeds for g in groups) == [1, 1, 1, 2, 2]
    best_kind = best_by(groups, lambda g: g.kind)
    assert best_kind["linear"].key == "b"  # 0.80 ties with shots5 and with a's mean: fewer params, then name
    summary = format_summary(rows)
    assert "best overall: b-0 linear[gap] L0 lr=0.3" in summary
    assert list(best_kind) == ["linear", "ep"]  # rank order in both


def test_report_groups_seeds_by_fingerprint(tmp_path: Path) -> None:
    store = separable_store(tmp_path / "s.zarr", n_train=120, n_val=40, num_classes=4)
    out = tmp_path / "run"
    for shots in (5, 10):
        probe_store(ProbeConfig(store=str(store), head=("linear",), lr=(0.01,), seeds=(0, 1), shots=shots, epochs=2,
                                out=str(out), device="cpu", linear_fit="sgd"), progress=False)
    rows = read_results(out / "results.jsonl")
    assert len(rows) == 4 and len({r["name"] for r in rows}) == 2  # names repeat across the two runs
    groups = group_seeds(rows)
    assert len(groups) == 2 and all(g.seeds == 2 for g in groups)
    assert {g.rows[0]["config"]["shots"] for g in groups} == {5, 10}
    md = write_report(out, figures=False).markdown.read_text(encoding="utf-8")
    assert "4 configs in 2 groups" in md
