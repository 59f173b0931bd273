"""The thin CLI: help, version, the heads table, error handling (exit code 2, no traceback)."""

from __future__ import annotations

from typer.testing import CliRunner

from epcache.cli import app

runner = CliRunner()


def test_help_lists_commands() -> None:
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0
    for cmd in ("info", "heads"):
        assert cmd in r.output


def test_heads_table_matches_paper_counts() -> None:
    r = runner.invoke(app, ["heads", "--dim", "768", "--classes", "1000", "--patches", "196"])
    assert r.exit_code == 0, r.output
    ep32 = next(line for line in r.output.splitlines() if "queries=32,d_out=1" in line)
    assert "1,383,400" in ep32
    linear = next(line for line in r.output.splitlines() if line.startswith("linear"))
    assert "769,000" in linear


def test_heads_bad_option_is_a_user_error() -> None:
    r = runner.invoke(app, ["heads", "--queries", "eight"])
    assert r.exit_code == 2
    assert "--queries takes comma-separated integers" in r.output
    assert "Traceback" not in r.output
    r = runner.invoke(app, ["heads", "--dim", "768", "--queries", "7"])
    assert r.exit_code == 2 and "Traceback" not in r.output
