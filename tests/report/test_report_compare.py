"""`epcache report RUN_A RUN_B`: each run's best by the one ranking, and the protocol settings that differ."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from probe_helpers import config, write_store
from typer.testing import CliRunner

from epcache.cli import app
from epcache.errors import ConfigError
from epcache.probe import probe_store
from epcache.probe.results.ranking import best_row, rank_rows
from epcache.report import report_runs, write_report

runner = CliRunner()


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("compare")
    store = write_store(tmp / "s.zarr", n_train=48, n_val=16)
    a, b = tmp / "a", tmp / "b"
    probe_store(config(store, head=("linear",), queries=(), epochs=2, layers=(0,), out=str(a)), progress=False)
    probe_store(config(store, head=("linear",), queries=(), epochs=3, batch_size=16, layers=(0,), out=str(b)),
                progress=False)
    return a, b


def _best_id(run: Path) -> str:
    rows = [json.loads(x) for x in (run / "results.jsonl").read_text().splitlines()]
    return best_row(rank_rows(rows)[0])["id"][:10]


def test_cli_compares_runs_without_touching_their_reports(two_runs: tuple[Path, Path]) -> None:
    a, b = two_runs
    own = write_report(a, figures=False).markdown
    before = own.read_text()
    r = runner.invoke(app, ["report", str(a), str(b)])
    assert r.exit_code == 0, r.output
    md = (a / "compare" / "compare.md").read_text()
    assert own.read_text() == before and not (a / "compare" / "report.md").exists()
    best = md.split("## Best of each run\n", 1)[1].split("\n## ", 1)[0]
    lines = [x for x in best.splitlines() if x.startswith(f"| `{a}`") or x.startswith(f"| `{b}`")]
    assert [x.split("|")[3].strip() for x in lines] == [f"`{_best_id(a)}`", f"`{_best_id(b)}`"]
    diffs = {x.split("|")[1].strip(): [c.strip() for c in x.split("|")[2:4]]
             for x in md.split("## Protocol differences\n", 1)[1].splitlines() if x.startswith("| ")}
    assert diffs["epochs"] == ["2", "3"] and diffs["batch_size"] == ["32", "16"]
    assert "lr_rule" not in diffs and "store_provenance" not in diffs and "recipe" not in diffs  # the same


def test_library_writes_where_asked_and_lists_no_difference_for_one_protocol(two_runs: tuple[Path, Path],
                                                                            tmp_path: Path) -> None:
    a, _ = two_runs
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "results.jsonl").write_text((a / "results.jsonl").read_text())
    cmp = report_runs([a, copy], tmp_path / "out")
    assert cmp.markdown == tmp_path / "out" / "compare.md" and cmp.differences == ()
    assert "None: every recorded protocol setting" in cmp.markdown.read_text()
    with pytest.raises(ConfigError, match="at least two"):
        report_runs([a])


def test_a_path_that_is_not_a_run_is_refused_before_anything_is_written(two_runs: tuple[Path, Path],
                                                                         tmp_path: Path) -> None:
    a, _ = two_runs
    out = tmp_path / "out"
    r = runner.invoke(app, ["report", str(a), str(tmp_path / "missing"), "--out", str(out)])
    assert r.exit_code == 2
    assert "missing holds no results.jsonl" in r.output and len(r.output.strip().splitlines()) == 1
    assert not out.exists()
    r = runner.invoke(app, ["report", str(a), str(a)])
    assert r.exit_code == 2 and "twice" in r.output
