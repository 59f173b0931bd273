"""`epcache heads` and the unknown-head errors list the solver heads (knn, ridge, logreg, ncm) too."""

from __future__ import annotations

from pathlib import Path

import pytest
from probe_helpers import write_store
from typer.testing import CliRunner

from epcache.cli import app
from epcache.errors import HeadSpecError
from epcache.probe.heads import HeadSpec, known_heads_text, list_heads
from epcache.probe.names import DENSE_KINDS, SOLVER_KINDS
from epcache.probe.solvers.listing import solver_heads

runner = CliRunner()


def test_heads_lists_every_solver_head_with_what_it_fits_and_costs() -> None:
    r = runner.invoke(app, ["heads", "--dim", "64", "--classes", "10", "--patches", "16", "--queries", "4"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("solver heads:"))
    assert any(line.startswith("ep ") for line in lines[:start])  # the trained heads' table comes first
    section = lines[start:next(i for i, line in enumerate(lines) if line.startswith("dense heads:"))]
    rows = {line.split()[0]: line for line in section if line.split() and line.split()[0] in SOLVER_KINDS}
    assert list(rows) == list(SOLVER_KINDS)
    # saved numbers at D=64, C=10: (D+1)C for ridge, DC+C for logreg, D+CD+C for ncm, none for k-NN
    assert rows["ridge"].split()[1] == "650" and rows["logreg"].split()[1] == "650"
    assert rows["ncm"].split()[1] == "714" and rows["knn"].split()[1] == "0"
    assert sum(line.strip().startswith("cost:") for line in section) == len(SOLVER_KINDS)
    assert sum(line.strip().startswith("options:") for line in section) == len(SOLVER_KINDS)
    assert "least squares" in rows["ridge"] and "logistic regression" in rows["logreg"]
    assert max(len(line) for line in lines) <= 100


def test_heads_lists_every_dense_head_last_with_its_defaults() -> None:
    r = runner.invoke(app, ["heads", "--dim", "64", "--classes", "10"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    section = lines[next(i for i, line in enumerate(lines) if line.startswith("dense heads:")):]
    rows = {line.split()[0]: line for line in section if line.split() and line.split()[0] in DENSE_KINDS}
    assert list(rows) == list(DENSE_KINDS)
    # learned numbers at D=64, C=10: DC+C for the logistic head, BatchNorm's 2D more for seg-linear, none for memories
    assert rows["dense-logreg"].split()[1] == "650" and rows["seg-linear"].split()[1] == "778"
    assert rows["dense-knn"].split()[1] == "0" and rows["hummingbird"].split()[1] == "0"
    text = "\n".join(section)
    assert "ks=[1,3,10,30]" in text and "Cs=[13 values 0.0001..100]" in text and "temperature=0.02" in text
    assert max(len(line) for line in lines) <= 100


def test_every_trained_kind_is_listed_by_the_table_too() -> None:
    r = runner.invoke(app, ["heads"])
    assert r.exit_code == 0, r.output
    first_words = {line.split()[0] for line in r.output.splitlines() if line.split()}
    assert set(list_heads()) | set(SOLVER_KINDS) | set(DENSE_KINDS) <= first_words


def test_solver_rows_follow_the_solver_kinds() -> None:
    assert [s.kind for s in solver_heads(768, 1000)] == list(SOLVER_KINDS)
    assert next(s for s in solver_heads(768, 1000) if s.kind == "logreg").params == 769_000


@pytest.mark.reliability_bad_input
def test_unknown_head_spec_names_both_families() -> None:
    with pytest.raises(HeadSpecError) as info:
        HeadSpec.parse("epp")
    message = str(info.value)
    assert "unknown head kind 'epp'" in message and "registered kinds: abmilp, aim" in message
    for kind in SOLVER_KINDS:
        assert kind in message
    assert "`epcache heads` lists them all" in message
    assert known_heads_text() in message


@pytest.mark.reliability_bad_input
def test_probe_with_an_unknown_head_names_the_solver_heads(tmp_path: Path) -> None:
    store = write_store(tmp_path / "s.zarr", n_train=40, n_val=16)
    r = runner.invoke(app, ["probe", "--store", str(store), "--head", "linear,knnn", "--no-progress"])
    assert r.exit_code == 2 and "Traceback" not in r.output
    line = next(x for x in r.output.splitlines() if "unknown head kind 'knnn'" in x)
    for kind in (*SOLVER_KINDS, "linear", "ep", "mhca"):
        assert kind in line
    assert "`epcache heads` lists them all" in line
