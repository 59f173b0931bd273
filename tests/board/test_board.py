"""The board over real runs: three random-init timm encoders, linear, EP and k-NN heads on each."""

from __future__ import annotations

import json
import re
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from epcache import extract_store
from epcache.board import build_board, check_markdown, render_markdown, write_board
from epcache.board.keys import BOARD_COLUMNS, head_family, input_label, protocol_key
from epcache.board.table import BEGIN, END, read_board_csv, write_markdown
from epcache.cli import app
from epcache.errors import ConfigError
from epcache.probe import ProbeConfig, probe_store, read_results
from epcache.probe.results.intervals import bootstrap_mean_ci, wilson
from epcache.probe.results.ranking import best_row, group_by_seed, oracle_top1, rank
from tests.helpers.extract_helpers import make_imagefolder, tiny_config

ENCODERS = {"vit_tiny_patch16_224": {"depth": 2, "img_size": 32},
            "deit_tiny_patch16_224": {"depth": 2, "img_size": 32},
            "vit_small_patch16_224": {"depth": 2, "img_size": 32}}
runner = CliRunner()


def _probe(store: Path, out: Path, **kw: Any) -> Path:
    base: dict[str, Any] = {"store": str(store), "head": ("linear", "ep", "knn"), "lr": (0.01, 0.1), "seeds": (0, 1),
                            "queries": (2,), "epochs": 3, "batch_size": 8, "holdout": 0.25, "device": "cpu",
                            "refit": False, "save_heads": False, "out": str(out), "linear_fit": "sgd"}
    probe_store(ProbeConfig(**{**base, **kw}))
    return out


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A store per encoder and a run per store, plus a rerun of the first store's linear head at another lr."""
    root = tmp_path_factory.mktemp("lab")
    data = make_imagefolder(root / "data", splits={"train": 24, "val": 12})
    runs = []
    for name, kwargs in ENCODERS.items():
        store = root / "stores" / name
        extract_store(tiny_config(data, store, model=name, model_kwargs=kwargs), progress=False)
        runs.append(_probe(store, root / "runs" / name))
    rerun = _probe(root / "stores" / "vit_tiny_patch16_224", root / "runs" / "rerun", head=("linear",), queries=(),
                   lr=(0.01, 0.3))
    return {"root": root, "runs": runs, "rerun": rerun}


def _cells(run_dirs: list[Path]) -> dict[tuple[str, ...], list[dict[str, Any]]]:
    """Every cell's rows as the board must see them: a row id run twice counts once (the later run's)."""
    by_id: dict[str, dict[str, Any]] = {}
    for d in run_dirs:
        for row in read_results(d / "results.jsonl"):
            by_id.pop(row["id"], None)
            by_id[row["id"]] = row
    cells: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
    for row in by_id.values():
        cells[(row["store"]["provenance"], input_label(row), head_family(row), protocol_key(row))].append(row)
    return cells


def test_one_row_per_cell_with_the_rankings_best_config_and_its_interval(lab: dict[str, Any]) -> None:
    dirs = [*lab["runs"], lab["rerun"]]
    board = build_board(dirs)
    cells = _cells(dirs)
    assert len(board.rows) == len(cells) == 9  # 3 encoders x (linear cls, ep patch, knn cls)
    assert board.encoders == sorted(ENCODERS)
    assert board.families == ["ep", "knn", "linear"]
    assert {(r["encoder"], r["input"], r["head_family"]) for r in board.rows} == {
        (e, i, f) for e in ENCODERS for i, f in (("L1 cls", "linear"), ("L1 patch", "ep"), ("L1 cls", "knn"))}
    assert [(r["encoder"], r["input"], r["head_family"]) for r in board.rows] == sorted(
        (r["encoder"], r["input"], r["head_family"]) for r in board.rows)
    for r in board.rows:
        assert set(r) == set(BOARD_COLUMNS) and r["weights"] == "random-init"
        assert r["miou"] == r["pixel_acc"] == ""  # the dense columns: empty for classification rows
        best = rank(group_by_seed(cells[(r["store_provenance"], r["input"], r["head_family"], r["protocol"])]))[0]
        top = best_row(best)
        assert r["config"] == best.name and r["seeds"] == str(len(best.rows)) and r["params"] == str(top["params"])
        evals = [row["metrics"]["eval"]["top1"] for row in best.rows]
        n = top["metrics"]["eval"]["n"]
        lo, hi = wilson(round(evals[0] * n), n) if len(evals) == 1 else bootstrap_mean_ci(evals)
        assert float(r["eval_top1"]) == pytest.approx(sum(evals) / len(evals), abs=1e-6)
        assert (float(r["eval_lo"]), float(r["eval_hi"])) == pytest.approx((lo, hi), abs=1e-6)
        assert r["eval_n"] == str(n) == "12"
        oracle = oracle_top1(best)
        if r["head_family"] == "knn":  # a solver: no epochs, no oracle; one row, a Wilson interval
            assert oracle is None and r["oracle_top1"] == "" and r["seeds"] == "1"
            recorded = top["metrics"]["eval"]["top1_ci"]  # the trainer's own Wilson interval
            assert (float(r["eval_lo"]), float(r["eval_hi"])) == pytest.approx(recorded, abs=1e-6)
        else:
            assert oracle is not None and r["seeds"] == "2"
            assert float(r["oracle_top1"]) == pytest.approx(oracle[0], abs=1e-6)
            assert float(r["oracle_std"]) == pytest.approx(oracle[1], abs=1e-6)
        assert Path(r["run"]) in dirs


def test_a_rerun_joins_its_cell_and_is_said_once(lab: dict[str, Any]) -> None:
    alone = build_board(lab["runs"])
    both = build_board([*lab["runs"], lab["rerun"]])
    assert alone.notes == () and len(both.notes) == 1 and "1 of 9 board cells" in both.notes[0]
    assert len(alone.rows) == len(both.rows)
    linear = next(r for r in both.rows if r["encoder"] == "vit_tiny_patch16_224" and r["head_family"] == "linear")
    rows = _cells([*lab["runs"], lab["rerun"]])[(linear["store_provenance"], linear["input"], "linear",
                                                  linear["protocol"])]
    assert {row["config"]["lr"] for row in rows} == {0.01, 0.1, 0.3}  # both runs' configs, lr=0.01 once
    assert len(rows) == 6
    assert build_board([lab["runs"][0], lab["runs"][0]]).rows == build_board([lab["runs"][0]]).rows


def test_csv_is_the_source_of_the_markdown_and_the_figure(lab: dict[str, Any], tmp_path: Path) -> None:
    board = build_board(lab["runs"])
    files = write_board(board, tmp_path / "board")
    saved = read_board_csv(files.csv)
    assert saved.rows == board.rows
    assert files.csv.read_text().splitlines()[0] == ",".join(BOARD_COLUMNS)
    md = files.markdown.read_text()
    table = render_markdown(saved)
    assert f"{BEGIN}\n{table}\n{END}" in md and check_markdown(files.markdown, board)
    lines = table.splitlines()
    assert len(lines) == 2 + len(board.rows)
    assert all(re.search(r"\| \d+\.\d \[\d+\.\d, \d+\.\d\] \|", line) for line in lines[2:])
    assert sum(" ± " in line for line in lines[2:]) == 6  # linear and EP: two seeds, an oracle mean ± std
    assert files.figure is not None and files.figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert write_board(board, tmp_path / "plain", figures=False).figure is None


def test_check_fails_on_a_stale_table_and_passes_after_write(lab: dict[str, Any], tmp_path: Path) -> None:
    doc = tmp_path / "README.md"
    before, after = "# Lab\r\n\r\nintro text | kept\r\n", "\r\ntail text, kept byte for byte\r\n"
    doc.write_bytes(f"{before}{BEGIN}\r\nold table\r\n{END}{after}".encode())
    runs = [str(d) for d in lab["runs"]]
    stale = runner.invoke(app, ["board", "--check", str(doc), *runs])
    assert stale.exit_code == 1 and str(doc) in stale.output and "stale" in stale.output
    assert len(stale.output.strip().splitlines()) == 1
    wrote = runner.invoke(app, ["board", "--write", str(doc), *runs])
    assert wrote.exit_code == 0, wrote.output
    text = doc.read_bytes().decode()
    assert text.startswith(before + BEGIN) and text.endswith(END + after)
    assert "\n" not in text.replace("\r\n", "")  # a CRLF document stays CRLF, the table too
    assert runner.invoke(app, ["board", "--check", str(doc), *runs]).exit_code == 0
    edited = re.sub(r"\| (\d+)\.(\d) \[", lambda m: f"| {(int(m[1]) + 1) % 100}.{m[2]} [", text, count=1)
    doc.write_bytes(edited.encode())
    again = runner.invoke(app, ["board", "--check", str(doc), *runs])
    assert again.exit_code == 1 and "1 of 11 table lines differ" in again.output
    out = tmp_path / "board"
    assert runner.invoke(app, ["board", *runs, "--out", str(out), "--no-figures"]).exit_code == 0
    assert runner.invoke(app, ["board", "--check", str(doc), "--csv", str(out / "board.csv")]).exit_code == 1
    assert runner.invoke(app, ["board", "--write", str(doc), "--csv", str(out / "board.csv")]).exit_code == 0
    assert runner.invoke(app, ["board", "--check", str(doc), *runs]).exit_code == 0
    assert not write_markdown(doc, build_board(lab["runs"]))  # fresh: the file is left alone


def test_cli_user_errors_exit_2_in_one_line(lab: dict[str, Any], tmp_path: Path) -> None:
    not_run = tmp_path / "not_a_run"
    not_run.mkdir()
    r = runner.invoke(app, ["board", str(lab["runs"][0]), str(not_run), "--out", str(tmp_path / "b")])
    assert r.exit_code == 2 and str(not_run) in r.output and "results.jsonl" in r.output
    assert "Traceback" not in r.output and isinstance(r.exception, SystemExit)
    assert len(r.output.strip().splitlines()) == 1
    plain = tmp_path / "plain.md"
    plain.write_text("# no markers here\n")
    r = runner.invoke(app, ["board", "--check", str(plain), str(lab["runs"][0])])
    assert r.exit_code == 2 and BEGIN in r.output and "--write" in r.output
    assert plain.read_text() == "# no markers here\n"
    assert runner.invoke(app, ["board"]).exit_code == 2
    with pytest.raises(ConfigError, match="is not a run directory"):
        build_board([tmp_path / "missing"])


def test_a_moved_store_falls_back_to_the_rows_record(lab: dict[str, Any], tmp_path: Path) -> None:
    run = tmp_path / "archived"
    shutil.copytree(lab["runs"][1], run)
    lines = (run / "results.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    for row in rows:
        row["store"]["path"] = str(tmp_path / "gone")
    (run / "results.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    board = build_board([run])
    assert {r["encoder"] for r in board.rows} == {rows[0]["store"]["backbone"]}
    assert {r["weights"] for r in board.rows} == {"unknown"}


def test_a_solver_row_without_a_protocol_keys_on_its_data_settings() -> None:
    def solver(**config: object) -> dict[str, Any]:
        base = {"head": "knn(k=[10])", "kind": "knn", "head_options": {"k": [10]}, "layer": 1, "tokens": "cls",
                "seed": 0, "try": 0, "holdout": 0.25, "data_seed": 0, "shots": None, "solver": True}
        return {"config": {**base, **config}}

    assert protocol_key(solver()) == protocol_key(solver(head="knn(k=[20])", head_options={"k": [20]}, layer=3))
    assert protocol_key(solver()) != protocol_key(solver(holdout=0.1))
    assert protocol_key(solver()) != protocol_key(solver(shots=4))
