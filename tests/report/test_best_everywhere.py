"""Every surface that says "best" or "oracle" says the same: summary, summary.txt, report.md, attention, ProbeResult."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from probe_helpers import config, write_store
from ranking_helpers import tie_rows
from solver_helpers import class_store

from epcache.probe import probe_store
from epcache.probe.results.ranking import ORACLE_NOTE, best_row, oracle_text, rank_rows
from epcache.probe.results.rows import append_result, format_summary, read_results
from epcache.report import write_report
from epcache.report._attention import find_row


def _summary_best(summary: str) -> str:
    line = next(x for x in summary.splitlines() if x.startswith("best overall: "))
    return line.split()[2]


def _summary_oracles(summary: str) -> dict[str, str]:
    """id (10 characters) -> the oracle cell of the summary table and of the best-overall line."""
    lines = summary.splitlines()
    header = lines[1]
    start = header.index("oracle")
    cells = {x.split()[0]: x[start:].strip() for x in lines[3:] if x[:10].strip() and not x.startswith("best")
             and len(x) > start and x.split()[0] in {r["id"][:10] for r in _ROWS}}
    best = next(x for x in lines if x.startswith("  eval top-1"))
    cells["best"] = best.split(", oracle ", 1)[1]
    return cells


def _report_rows(md: str, section: str) -> list[list[str]]:
    part = md.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return [[c.strip() for c in x.strip("|").split("|")] for x in part.splitlines() if x.startswith("| `")]


_ROWS: list[dict[str, Any]] = []


def _surfaces(run: Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    _ROWS[:] = rows
    summary = format_summary(rows)
    md = write_report(run, figures=False).markdown.read_text(encoding="utf-8")
    attentive = [r for r in rows
                 if r["config"]["kind"] not in ("linear", "dinovit", "mp") and not r["config"].get("solver")]
    attention = find_row(read_results(run / "results.jsonl"), "best")["id"] if attentive else None  # solver-only: none
    return {"summary": summary, "md": md, "attention": attention,
            "report": _report_rows(md, "Best per head kind")[0][0].strip("`"), "ranked": rank_rows(rows)}


def test_hand_built_tie_is_resolved_the_same_everywhere(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    rows = tie_rows()
    for r in rows:
        append_result(run / "results.jsonl", r)
    s = _surfaces(run, rows)
    best = best_row(s["ranked"][0])
    assert best["config"]["lr"] == 0.01  # same holdout top-1 as lr=0.003, lower holdout loss
    assert s["attention"] == best["id"]
    assert _summary_best(s["summary"]) == best["id"][:10] == s["report"][:10]
    want = oracle_text(s["ranked"][0])
    assert want == "75.00 ± 2.83"
    assert _summary_oracles(s["summary"]) == {best["id"][:10]: want, "best": want}
    assert _report_rows(s["md"], "Best per head kind")[0][-1] == want
    all_rows = {c[0].strip("`"): c[-1] for c in _report_rows(s["md"], "All configs")}
    assert all_rows == {best_row(g)["id"][:10]: oracle_text(g) for g in s["ranked"]}
    assert list(all_rows) == [best_row(g)["id"][:10] for g in s["ranked"]]  # the report lists in rank order


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    tmp = tmp_path_factory.mktemp("best")
    store = write_store(tmp / "s.zarr", n_train=80, n_val=16)
    run = tmp / "run"
    res = probe_store(config(store, head=("mhca",), queries=(), lr=(0.01, 0.003), seeds=(0, 1), epochs=3, holdout=0.05,
                             layers=(0,), out=str(run)), progress=False)
    return res, run


def test_a_real_sweep_names_one_best_and_one_oracle(sweep: tuple[Any, Path]) -> None:
    res, run = sweep
    rows = read_results(run / "results.jsonl")
    s = _surfaces(run, rows)
    assert (run / "summary.txt").read_text(encoding="utf-8") == res.summary + "\n" == s["summary"] + "\n"
    best = best_row(s["ranked"][0])
    assert res.best["id"] == s["attention"] == best["id"]
    assert _summary_best(res.summary) == best["id"][:10] == s["report"][:10]
    want = oracle_text(s["ranked"][0])
    assert want != "-" and _summary_oracles(res.summary)["best"] == want
    assert _summary_oracles(res.summary)[best["id"][:10]] == want
    assert {c[0].strip("`"): c[-1] for c in _report_rows(s["md"], "All configs")} == {
        best_row(g)["id"][:10]: oracle_text(g) for g in s["ranked"]}
    assert ORACLE_NOTE.split(";")[0] in s["md"]


def test_solver_fewshot_tries_have_no_oracle_anywhere(tmp_path: Path) -> None:
    store = class_store(tmp_path / "s.zarr", registers=1)
    run = tmp_path / "few"
    res = probe_store(config(store, head=("ncm", "ridge"), queries=(), shots=(1, 5), tries=2, holdout=0.2,
                             out=str(run)), progress=False)
    rows = read_results(run / "results.jsonl")
    s = _surfaces(run, rows)
    assert len(rows) == 8 and all(len(g.rows) == 2 for g in s["ranked"])  # tries are the seeds of a group
    assert all(oracle_text(g) == "-" for g in s["ranked"])
    oracles = _summary_oracles(res.summary)
    assert oracles["best"] == "-" and set(oracles.values()) == {"-"}
    assert {c[-1] for c in _report_rows(s["md"], "All configs")} == {"-"}
    assert _summary_best(res.summary) == best_row(s["ranked"][0])["id"][:10] == s["report"][:10]
    note = " ".join(ORACLE_NOTE.split())
    assert note in " ".join(res.summary.split()) and note in s["md"]  # the footnote says why: no epochs
