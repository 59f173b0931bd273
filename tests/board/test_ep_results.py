"""EP benchmark ``results.csv`` rows from a real tiny probe run: picks, variants, units and the row rules."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import torch
from probe_helpers import GRID, D, config, write_store

from epcache.board.ep_results import (
    EP_RESULTS_COLUMNS,
    check_ep_row,
    ep_results_rows,
    export_ep_results,
    parse_describe,
    write_ep_results,
)
from epcache.board.ep_rules import EP_ROW_RULES
from epcache.errors import ConfigError, EpcacheError
from epcache.probe import probe_store, read_results
from epcache.probe.data.reads import InputRead
from epcache.probe.heads import EfficientProbing
from epcache.probe.results.ranking import best_row, oracle_top1, rank_rows
from epcache.store import TokenLayout

DESCRIBE = {"family": "MIM", "method": "Toy", "arch": "ViT-T/16", "pretrain": "IN-1K", "eval": "IN-1K",
            "image_size": "64"}
NUM_CLASSES = 4


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    d = tmp_path_factory.mktemp("epres")
    store = write_store(d / "s.zarr", n_train=96, n_val=40, num_classes=NUM_CLASSES)
    c = config(store, head=("linear", "ep(queries=4)", "ep(queries=8)", "knn"), tokens=("cls", "gap", "patch", "all"),
               epochs=2, k=(3, 5), out=str(d / "run"))
    probe_store(c)
    return read_results(d / "run" / "results.jsonl")


def _best(rows: list[dict[str, Any]], kind: str, tokens: tuple[str, ...]) -> Any:
    """The reference pick: the first group of the one ranking whose representative has that kind and input."""
    return next(g for g in rank_rows(rows) if best_row(g)["config"]["kind"] == kind
                and best_row(g)["input"]["tokens"] in tokens)


def test_a_tiny_run_gives_one_row_that_passes_every_rule(rows: list[dict[str, Any]], tmp_path: Path) -> None:
    (out,) = ep_results_rows(rows, describe=DESCRIBE)
    assert check_ep_row(out) == []
    assert out["model"] == "vit_toy" and out["loader"] == "timm"
    path = tmp_path / "results.csv"
    write_ep_results(path, [out])
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == EP_RESULTS_COLUMNS
        (back,) = list(reader)
    assert back == out
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]  # no temporary left behind


def test_each_arm_is_the_best_of_its_family_by_the_one_ranking(rows: list[dict[str, Any]]) -> None:
    (out,) = ep_results_rows(rows, model="vit_base_patch16", loader="simmim", describe=DESCRIBE)
    assert (out["model"], out["loader"]) == ("vit_base_patch16", "simmim")
    lp = _best(rows, "linear", ("cls",))  # the schema asks for [CLS] and the run has it
    oracle = oracle_top1(lp)
    assert oracle is not None
    assert out["lp"] == f"{100 * oracle[0]:.2f}"
    assert (out["lp_variant"], out["lp_gap"]) == ("cls", "no")
    ep = _best(rows, "ep", ("patch", "all"))
    head = best_row(ep)
    ep_oracle = oracle_top1(ep)
    assert ep_oracle is not None
    assert out["ep"] == f"{100 * ep_oracle[0]:.2f}"
    assert out["ep_queries"] == str(head["config"]["head_options"]["queries"])
    assert out["ep_variant"] == {"patch": "ep", "all": "ep_all"}[head["input"]["tokens"]]
    knn = _best(rows, "knn", ("cls",))  # k-NN reads what the LP read
    assert out["knn"] == f"{100 * knn.mean('eval'):.2f}"
    assert (out["knn_k"], out["knn_T"]) == (str(best_row(knn)["solver"]["k"]), str(best_row(knn)["solver"]["T"]))


def test_queries_sweep_in_one_run_and_the_params_witness_the_query_count(rows: list[dict[str, Any]]) -> None:
    ep_rows = [r for r in rows if r["config"]["kind"] == "ep"]
    assert {r["config"]["head_options"]["queries"] for r in ep_rows} == {4, 8}
    for r in ep_rows:  # the benchmark's audit: EP head = C^2 + Q*C + C*classes + classes
        q = r["config"]["head_options"]["queries"]
        assert r["params"] == D * D + q * D + D * NUM_CLASSES + NUM_CLASSES


def test_pinned_gap_variant_moves_lp_and_knn_to_gap(rows: list[dict[str, Any]]) -> None:
    (out,) = ep_results_rows(rows, describe={**DESCRIBE, "lp_variant": "pos", "gap_reason": "attn_pool"})
    lp = _best(rows, "linear", ("gap",))
    oracle = oracle_top1(lp)
    assert oracle is not None and out["lp"] == f"{100 * oracle[0]:.2f}"
    assert (out["lp_variant"], out["lp_gap"], out["gap_reason"]) == ("pos", "yes", "attn_pool")
    assert out["knn"] == f"{100 * _best(rows, 'knn', ('gap',)).mean('eval'):.2f}"
    assert check_ep_row(out) == []


def test_pinned_ep_variant_restricts_ep(rows: list[dict[str, Any]]) -> None:
    for variant, tokens in (("ep", "patch"), ("ep_all", "all")):
        (out,) = ep_results_rows(rows, describe={**DESCRIBE, "ep_variant": variant})
        oracle = oracle_top1(_best(rows, "ep", (tokens,)))
        assert oracle is not None and out["ep"] == f"{100 * oracle[0]:.2f}" and out["ep_variant"] == variant


def test_without_cls_configs_the_lp_is_gap_and_needs_its_reason(rows: list[dict[str, Any]]) -> None:
    no_cls = [r for r in rows if r["input"]["tokens"] != "cls"]
    (out,) = ep_results_rows(no_cls, describe=DESCRIBE)
    assert (out["lp_variant"], out["lp_gap"], out["gap_reason"]) == ("pos", "yes", "")
    assert [v.split(":")[0] for v in check_ep_row(out)] == ["gap_reason"]
    (out,) = ep_results_rows(no_cls, describe={**DESCRIBE, "gap_reason": "no_cls"})
    assert check_ep_row(out) == []
    oracle = oracle_top1(_best(rows, "ep", ("patch",)))  # no CLS: tokens all cannot be ep_all
    assert oracle is not None and (out["ep"], out["ep_variant"]) == (f"{100 * oracle[0]:.2f}", "ep")
    with pytest.raises(ConfigError, match="no_cls"):
        ep_results_rows(no_cls, describe={**DESCRIBE, "gap_reason": "no_cls", "ep_variant": "ep_all"})


def test_export_writes_what_the_rows_say_and_describe_parses_words(rows: list[dict[str, Any]], tmp_path: Path) -> None:
    words = [f"{k}={v}" for k, v in DESCRIBE.items()] + ["pretrain=DFN-2B + COYO, HQITP"]
    about = parse_describe(words[:3] + words[4:])
    assert about["pretrain"] == "DFN-2B + COYO, HQITP"
    out = export_ep_results(tmp_path / "results.csv", rows, describe=about)
    with (tmp_path / "results.csv").open(newline="") as f:
        assert list(csv.DictReader(f)) == out
    for bad in (["family"], ["family=MIM", "family=JEA"]):
        with pytest.raises(ConfigError, match="describe"):
            parse_describe(bad)


def test_a_store_without_ep_rows_is_refused_unless_waiting(rows: list[dict[str, Any]], tmp_path: Path) -> None:
    (out,) = ep_results_rows([r for r in rows if r["config"]["kind"] != "ep"], describe=DESCRIBE)
    assert out["ep"] == "-"
    assert {v.split(":")[0] for v in check_ep_row(out)} == {"numbers", "reproducible"}
    with pytest.raises(ConfigError, match="run an EP head"):
        write_ep_results(tmp_path / "r.csv", [out])
    assert not (tmp_path / "r.csv").exists()


def test_configs_the_schema_cannot_describe_never_stand_for_an_arm(rows: list[dict[str, Any]]) -> None:
    (plain,) = ep_results_rows(rows, describe=DESCRIBE)
    odd = [{**r, "config": {**r["config"], "fraction": 0.5},
            **({"seed_group": "half-" + r["seed_group"]} if "seed_group" in r else {})}
           for r in rows]  # a fraction is part of the seed group
    (out,) = ep_results_rows(odd + rows, describe=DESCRIBE)  # odd ones rank equal and come first
    assert out == plain
    mixed = [{**r, "input": {**r["input"], "layer_mix": "concat", "layers": [0, 1]}} for r in rows]
    (out,) = ep_results_rows(mixed, describe=DESCRIBE)
    assert (out["lp"], out["ep"], out["knn"]) == ("-", "-", "")


def test_one_row_per_store_in_first_seen_order(rows: list[dict[str, Any]]) -> None:
    other = [{**r, "store": {**r["store"], "provenance": "f" * 64, "backbone": "vit_other"},
              **({"seed_group": "other-" + r["seed_group"]} if "seed_group" in r else {})}
             for r in rows]  # the store is part of every seed group
    out = ep_results_rows(other + rows, describe=DESCRIBE)
    assert [o["model"] for o in out] == ["vit_other", "vit_toy"]
    assert out[0]["lp"] == out[1]["lp"]


@pytest.mark.parametrize("bad", [{"lp": "1.0"}, {"ep_variant": "ep"}, {"nonsense": "x"}])
def test_describe_gives_only_unmeasured_schema_columns(rows: list[dict[str, Any]], bad: dict[str, str]) -> None:
    if "ep_variant" in bad:  # a pin, not a measurement: allowed
        ep_results_rows(rows, describe={**DESCRIBE, **bad})
        return
    with pytest.raises(ConfigError, match="describe"):
        ep_results_rows(rows, describe={**DESCRIBE, **bad})


EDITS: dict[str, dict[str, Any]] = {
    "columns": {"-arch": None},
    "numbers": {"image_size": "large"},
    "family": {"family": "SSL"},
    "eval": {"eval": "CIFAR100"},
    "lp_gap": {"lp_gap": "maybe"},
    "knn": {"knn_k": ""},
    "gap_reason": {"lp_gap": "yes", "lp_variant": "pos", "gap_reason": "looked better"},
    "waiting": {"verified": "yes", "waiting": "EP re-run at Q=64"},
    "verified": {"verified": "ok"},
    "variants": {"ep_variant": "ep_cls"},
    "reproducible": {"ep_queries": ""},
}


def test_every_rule_has_an_edit() -> None:
    assert set(EDITS) == set(EP_ROW_RULES)


@pytest.mark.parametrize("rule", sorted(EDITS))
def test_each_rule_is_caught_once(rows: list[dict[str, Any]], rule: str, tmp_path: Path) -> None:
    (row,) = ep_results_rows(rows, describe=DESCRIBE)
    for col, value in EDITS[rule].items():
        if col.startswith("-"):
            del row[col[1:]]
        else:
            row[col] = value
    found = [v.split(":")[0] for v in check_ep_row(row)]
    assert found == [rule]
    with pytest.raises(EpcacheError, match=rf"{rule}: .*; fix: .*\[rule: {EP_ROW_RULES[rule][:20]}"):
        write_ep_results(tmp_path / "r.csv", [row])
    assert not (tmp_path / "r.csv").exists()


def test_ep_all_puts_the_cls_among_the_values_only_when_on() -> None:
    """``ep_all`` is EP on tokens ``all``: the CLS changes its output; on ``patch`` (``ep``) it cannot."""
    torch.manual_seed(0)
    layout = TokenLayout(num_prefix=1, cls_index=0, num_registers=0, grid=GRID)
    read = InputRead(frozenset({"patch", "all"}), layout)
    x = torch.randn(3, 1 + GRID[0] * GRID[1], D)
    moved = x.clone()
    moved[:, 0] += 5.0  # only the CLS differs
    head = EfficientProbing(D, queries=4)
    with torch.no_grad():
        off, off_moved = head(read.derive(x, "patch")), head(read.derive(moved, "patch"))
        on, on_moved = head(read.derive(x, "all")), head(read.derive(moved, "all"))
    assert torch.equal(off, off_moved)
    assert not torch.allclose(on, on_moved)
    assert not torch.allclose(on, off)
    assert read.derive(x, "all").shape[1] == read.derive(x, "patch").shape[1] + 1  # [CLS ; patches]


def test_board_cli_writes_ep_results_and_refuses_a_row_missing_its_description(
        rows: list[dict[str, Any]], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from epcache.cli import app

    run = Path(rows[0]["store"]["path"]).parent / "run"
    words = [w for k, v in DESCRIBE.items() for w in ("--describe", f"{k}={v}")]
    r = CliRunner().invoke(app, ["board", str(run), "--format", "ep-results", "--out", str(tmp_path / "b"), *words])
    assert r.exit_code == 0, r.output
    with open(tmp_path / "b" / "results.csv", newline="") as f:
        (written,) = list(csv.DictReader(f))
    assert written == ep_results_rows(rows, describe=DESCRIBE)[0]
    bare = CliRunner().invoke(app, ["board", str(run), "--format", "ep-results", "--out", str(tmp_path / "c")])
    assert bare.exit_code == 2 and "Traceback" not in bare.output and not (tmp_path / "c" / "results.csv").exists()
