"""Guards that catch a wrong evaluation before a row is written: class maps, how training ended, anchors."""

from __future__ import annotations

import csv
import dataclasses
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from probe_helpers import config, write_store
from typer.testing import CliRunner

from epcache.board.keys import protocol_key
from epcache.cli import app
from epcache.errors import ConfigError
from epcache.probe import probe_store, read_results
from epcache.probe.data.samples import check_class_maps
from epcache.probe.results.anchor import DEFAULT_TOLERANCE, AnchorMismatchError, check_rows, read_anchors
from epcache.store import class_map_fingerprint, describe_store
from epcache.store.describe.info import format_store_info

runner = CliRunner()
CLASSES = ["c0", "c1", "c2", "c3"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_store(tmp_path_factory.mktemp("guards") / "s.zarr", n_train=120, n_val=40)


def _argv(store: Path, out: Path, *extra: str) -> list[str]:
    return ["probe", "--store", str(store), "--head", "linear,knn", "--layers", "1", "--epochs", "2", "--warmup", "0",
            "--batch-size", "32", "--lr", "0.05", "--seeds", "0,1", "--holdout", "0.2", "--device", "cpu",
            "--no-refit", "--linear-fit", "sgd", "--no-progress", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def first(store: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    out = tmp_path_factory.mktemp("first") / "run"
    r = runner.invoke(app, _argv(store, out))
    assert r.exit_code == 0, r.output
    return out, read_results(out / "results.jsonl")


def _write_anchor(path: Path, rows: list[dict[str, Any]], *, shift: dict[str, float] | None = None,
                  columns: tuple[str, ...] = ("store_provenance", "protocol", "config", "eval_top1")) -> Path:
    """board.csv-like lines from rows: one per (store, protocol, config without seed), the seed mean."""
    cells: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for r in rows:
        key = (r["store"]["provenance"], protocol_key(r), r["name"].rsplit(" seed=", 1)[0])
        cells[key].append(r["metrics"]["eval"]["top1"])
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for (prov, proto, name), tops in cells.items():
            top1 = sum(tops) / len(tops) + sum(d for head, d in (shift or {}).items() if name.startswith(head))
            w.writerow([{"store_provenance": prov, "protocol": proto, "config": name, "eval_top1": top1}.get(c, "")
                        for c in columns])
    return path


# ------------------------------------------------------------------------------------------ class maps


def test_class_map_fingerprint_is_order_sensitive_and_stable() -> None:
    fp = class_map_fingerprint(CLASSES)
    assert len(fp) == 64 and fp == class_map_fingerprint(tuple(CLASSES))
    assert fp != class_map_fingerprint(["c1", "c0", "c2", "c3"])  # same names, other indices
    assert fp != class_map_fingerprint(CLASSES[:3])


def test_mismatched_class_lists_name_both_fingerprints_and_the_first_difference(tmp_path: Path) -> None:
    swapped = ["c0", "c1", "x", "c3"]
    s = write_store(tmp_path / "swap.zarr", n_train=80, n_val=40, val_classes=swapped)
    with pytest.raises(ConfigError) as e:
        probe_store(config(s, out=str(tmp_path / "run")), progress=False)
    msg = str(e.value)
    assert class_map_fingerprint(CLASSES) in msg and class_map_fingerprint(swapped) in msg
    assert "first difference at index 2: 'c2' vs 'x'" in msg and "same class list" in msg
    assert not (tmp_path / "run" / "results.jsonl").exists()
    with pytest.raises(ConfigError, match=r"4 vs 5 classes, the first 4 equal"):
        check_class_maps("train", CLASSES, "val", [*CLASSES, "c4"])
    check_class_maps("train", CLASSES, "val", list(CLASSES))  # equal lists pass


def test_store_info_shows_each_splits_class_map(store: Path) -> None:
    info = describe_store(store)
    fp = class_map_fingerprint(CLASSES)
    assert [s.class_map for s in info.splits] == [fp, fp]
    assert info.to_json()["splits"][0]["class_map"] == fp
    text = format_store_info(info)
    assert sum(f"class map {fp[:16]}" in line for line in text.splitlines()) == 2


# ------------------------------------------------------------------------------------- rows record it


def test_every_row_records_class_map_stop_and_selection_rule(first: tuple[Path, list[dict[str, Any]]]) -> None:
    _, rows = first
    kinds = {r["config"]["kind"] for r in rows}
    assert kinds == {"linear", "knn"}
    for r in rows:
        assert r["data"]["class_map"] == class_map_fingerprint(CLASSES), r["name"]
        assert r["protocol"]["selection_rule"] == "holdout", r["name"]
        if r["config"]["kind"] == "knn":
            assert r["stop"] == {"epochs_run": 0, "reason": "solver"}
        else:
            assert r["stop"] == {"epochs_run": 2, "reason": "schedule"} and len(r["curves"]["train_loss"]) == 2


# ------------------------------------------------------------------------------------------- anchors


def test_anchor_written_from_a_first_run_passes(store: Path, first: tuple[Path, list[dict[str, Any]]],
                                                tmp_path: Path) -> None:
    _, rows = first
    anchor = _write_anchor(tmp_path / "board.csv", rows)
    assert len(read_anchors(anchor)) == 2 and read_anchors(anchor)[0].tolerance == DEFAULT_TOLERANCE
    out = tmp_path / "run"
    r = runner.invoke(app, _argv(store, out, "--check-anchor", str(anchor)))
    assert r.exit_code == 0, r.output
    assert "matches no config" not in r.output
    again = read_results(out / "results.jsonl")
    assert sorted(x["id"] for x in again) == sorted(x["id"] for x in rows)  # held rows were written after the check
    assert {x["id"]: x["metrics"]["eval"]["top1"] for x in again} == {x["id"]: x["metrics"]["eval"]["top1"]
                                                                      for x in rows}
    heads = [x["head_file"] for x in again if x["config"]["kind"] == "linear"]  # k-NN keeps no head
    assert len(heads) == 2 and all((out / h).is_file() for h in heads)  # and the held heads
    assert json.loads((out / "config.json").read_text())["config"]["check_anchor"] == str(anchor)


@pytest.mark.parametrize("head", ["linear", "knn"])
def test_a_missed_anchor_stops_before_any_row(store: Path, first: tuple[Path, list[dict[str, Any]]], tmp_path: Path,
                                              head: str) -> None:
    _, rows = first
    anchor = _write_anchor(tmp_path / "board.csv", rows, shift={head: 0.25})  # 25 points off: a wrong eval
    out = tmp_path / "run"
    r = runner.invoke(app, _argv(store, out, "--check-anchor", str(anchor)))
    assert r.exit_code == 2, r.output
    assert "measured eval top-1" in r.output and "the anchor (line" in r.output and "Fix:" in r.output
    assert head in r.output.split("measured")[0]  # the config that missed is named first
    assert not (out / "results.jsonl").exists()  # nothing written, not even the configs that matched
    assert not list((out / "heads").glob("*.safetensors"))


def test_a_finished_run_directory_is_checked_without_retraining(store: Path,
                                                                 first: tuple[Path, list[dict[str, Any]]],
                                                                 tmp_path: Path) -> None:
    out, rows = first
    before = (out / "results.jsonl").read_bytes()
    anchor = _write_anchor(tmp_path / "board.csv", rows, shift={"linear": -0.1})
    r = runner.invoke(app, _argv(store, out, "--check-anchor", str(anchor)))
    assert r.exit_code == 2 and "linear" in r.output, r.output
    assert (out / "results.jsonl").read_bytes() == before  # unchanged


def test_an_anchor_matching_nothing_warns(store: Path, first: tuple[Path, list[dict[str, Any]]],
                                          tmp_path: Path) -> None:
    _, rows = first
    anchor = tmp_path / "other.csv"
    anchor.write_text("store_provenance,protocol,config,eval_top1,tolerance\n"
                      f"{rows[0]['store']['provenance']},0123456789abcdef,ep layer=1 patch lr=0.1 wd=0,0.5,1\n")
    r = runner.invoke(app, _argv(store, tmp_path / "run", "--check-anchor", str(anchor)))
    assert r.exit_code == 0, r.output
    warnings = [line for line in r.output.splitlines() if "matches no config of this sweep" in line]
    assert len(warnings) == 1 and "line 2" in warnings[0] and warnings[0].startswith("warning:")
    assert len(read_results(tmp_path / "run" / "results.jsonl")) == len(rows)


def test_a_bad_anchor_file_is_refused_before_any_work(store: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("store_provenance,config\nabc,linear\n")
    out = tmp_path / "run"
    r = runner.invoke(app, _argv(store, out, "--check-anchor", str(bad)))
    assert r.exit_code == 2 and "missing column(s) protocol, eval_top1" in r.output, r.output
    assert not out.exists()
    r = runner.invoke(app, _argv(store, out, "--check-anchor", str(tmp_path / "absent.csv")))
    assert r.exit_code == 2 and "cannot read the anchor file" in r.output, r.output
    bad.write_text("store_provenance,protocol,config,eval_top1\nabc,0123,linear,82\n")  # points, not a fraction
    with pytest.raises(ConfigError, match=r"line 2: eval_top1 '82' is not a fraction"):
        read_anchors(bad)
    (tmp_path / "bad2.csv").write_text("config,eval_top1\nlinear,0.5\n")
    with pytest.raises(ConfigError, match="missing column"):  # the library refuses it before opening the store
        probe_store(config(tmp_path / "no-store.zarr", check_anchor=str(tmp_path / "bad2.csv")), progress=False)
    assert not out.exists()


def test_check_rows_tolerance_and_seed_mean(first: tuple[Path, list[dict[str, Any]]], tmp_path: Path) -> None:
    _, rows = first
    linear = [r for r in rows if r["config"]["kind"] == "linear"]
    mean = sum(r["metrics"]["eval"]["top1"] for r in linear) / len(linear)
    path = tmp_path / "a.csv"
    path.write_text("store_provenance,protocol,config,eval_top1,tolerance\n"
                    f"{linear[0]['store']['provenance']},{protocol_key(linear[0])},{linear[0]['name']},"
                    f"{mean + 0.009},1\n")  # the seed suffix is dropped from the file's name too
    anchors = read_anchors(path)
    assert check_rows(anchors, linear, path=str(path)) == []  # 0.9 points within 1
    tight = [dataclasses.replace(a, tolerance=0.5) for a in anchors]
    with pytest.raises(AnchorMismatchError, match=f"{100 * mean:.2f}%"):
        check_rows(tight, linear, path=str(path))
