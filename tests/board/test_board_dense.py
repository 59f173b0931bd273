"""Dense rows on the board: their own ``miou`` / ``pixel_acc`` columns, the top-1 columns empty, and the
csv, the markdown and ``--check`` agreeing with each other as for classification rows."""

from __future__ import annotations

from pathlib import Path

import pytest
from dense_helpers import dense_store
from typer.testing import CliRunner

from epcache.board import build_board, check_markdown, render_markdown, write_board
from epcache.board.keys import BOARD_COLUMNS
from epcache.board.table import BEGIN, DENSE_HEADER, END, read_board_csv
from epcache.cli import app
from epcache.probe import ProbeConfig, probe_store

runner = CliRunner()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("board-dense")
    out = root / "run"
    result = probe_store(ProbeConfig(store=str(dense_store(root)), head=("dense-logreg(Cs=[1.0])", "knn"),
                                     layers=(1,), out=str(out)), progress=False)
    return out, list(result.rows)


def test_dense_rows_fill_the_miou_columns_only(run: tuple[Path, list[dict]]) -> None:
    out, rows = run
    board = build_board([out])
    by_family = {r["head_family"]: r for r in board.rows}
    assert set(by_family) == {"dense-logreg", "knn"} and {"miou", "pixel_acc"} <= set(BOARD_COLUMNS)
    dense = by_family["dense-logreg"]
    row = next(r for r in rows if r.get("task") == "dense")
    assert float(dense["miou"]) == pytest.approx(row["metrics"]["eval"]["miou"], abs=1e-6)
    assert float(dense["pixel_acc"]) == pytest.approx(row["metrics"]["eval"]["pixel_acc"], abs=1e-6)
    assert dense["eval_top1"] == dense["holdout_top1"] == dense["oracle_top1"] == ""
    assert dense["input"] == "L1 patches" and dense["eval_n"] == str(row["data"]["num_eval"])
    assert by_family["knn"]["miou"] == by_family["knn"]["pixel_acc"] == "" and by_family["knn"]["eval_top1"]


def test_csv_markdown_and_check_agree(run: tuple[Path, list[dict]], tmp_path: Path) -> None:
    out, _ = run
    board = build_board([out])
    files = write_board(board, tmp_path / "board", figures=False)
    saved = read_board_csv(files.csv)
    assert saved.rows == board.rows
    table = render_markdown(saved)
    header = table.splitlines()[0]
    assert header.endswith(" | ".join(DENSE_HEADER) + " |")
    assert all(len(line.split(" | ")) == len(header.split(" | ")) for line in table.splitlines()[2:])
    assert f"{BEGIN}\n{table}\n{END}" in files.markdown.read_text() and check_markdown(files.markdown, board)
    doc = tmp_path / "doc.md"
    doc.write_text(f"# Lab\n{BEGIN}\nold\n{END}\n")
    assert runner.invoke(app, ["board", "--check", str(doc), str(out)]).exit_code == 1
    assert runner.invoke(app, ["board", "--write", str(doc), str(out)]).exit_code == 0
    assert runner.invoke(app, ["board", "--check", str(doc), str(out)]).exit_code == 0
