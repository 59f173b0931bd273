"""The reliability campaign's tally: passed tests per ``reliability_*`` marker, printed at the end.

A plugin (tests/conftest.py loads it) rather than a conftest of tests/campaigns/reliability, so that
the pytest-xdist controller, which collects nothing, prints the tally too.

Every test of the campaign carries one of the four markers registered in pyproject.toml
(parametrized cases count one each). The counts cover the whole pytest run, so marked tests
elsewhere in the suite are counted too. The closing line reads e.g.
``reliability campaign: 14 kills, 35 corruptions, 104 bad inputs, 3 disk-full (all passed)``.

``--reliability-tally FILE`` carries the tally across pytest runs: each run adds its outcomes to
FILE (a JSON object, created when absent) and prints the tally of all of them, so the last of
CI's runs (the fast suite, the parallel campaigns, the serial ones) prints the whole campaign's.
A test run twice keeps its latest outcome. Only the pytest-xdist controller reads and writes FILE.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

MARKERS = {  # marker -> how the summary names it (singular, plural)
    "reliability_kill": ("kill", "kills"),
    "reliability_corruption": ("corruption", "corruptions"),
    "reliability_bad_input": ("bad input", "bad inputs"),
    "reliability_diskfull": ("disk-full", "disk-full"),
}


class _Tally:
    """Outcomes of the marked tests, keyed by node id (one outcome per test, setup to teardown)."""

    def __init__(self) -> None:
        self.marker_of: dict[str, str] = {}
        self.outcome: dict[str, str] = {}

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            for name in MARKERS:
                if item.get_closest_marker(name) is not None:
                    self.marker_of[item.nodeid] = name
                    break

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.nodeid not in self.marker_of:  # under pytest-xdist only the report's keywords name the marker
            name = next((k for k in MARKERS if k in report.keywords), None)
            if name is None:
                return
            self.marker_of[report.nodeid] = name
        if report.failed:
            self.outcome[report.nodeid] = "failed"
        elif report.skipped:
            self.outcome.setdefault(report.nodeid, "skipped")
        elif report.when == "call" and self.outcome.get(report.nodeid) != "failed":
            self.outcome[report.nodeid] = "passed"

    def carry(self, path: Path) -> None:
        """Merge the earlier runs' outcomes kept in ``path`` under this run's, and keep them all there."""
        earlier = json.loads(path.read_text()) if path.is_file() else {}
        for nodeid, (marker, outcome) in earlier.items():
            if nodeid not in self.outcome:
                self.marker_of[nodeid] = marker
                self.outcome[nodeid] = outcome
        kept = {nodeid: [self.marker_of[nodeid], outcome] for nodeid, outcome in sorted(self.outcome.items())}
        path.write_text(json.dumps(kept, separators=(",", ":")) + "\n")

    def summary(self) -> str | None:
        if not self.outcome:
            return None
        counts = {k: Counter() for k in MARKERS}  # type: dict[str, Counter[str]]
        for nodeid, outcome in self.outcome.items():
            counts[self.marker_of[nodeid]][outcome] += 1
        parts = []
        for name, (one, many) in MARKERS.items():
            n = counts[name]["passed"]
            parts.append(f"{n} {one if n == 1 else many}")
        failed = sum(c["failed"] for c in counts.values())
        skipped = sum(c["skipped"] for c in counts.values())
        if failed:
            state = f"{failed} failed"
        elif skipped:
            state = f"all run passed, {skipped} skipped"
        else:
            state = "all passed"
        return f"reliability campaign: {', '.join(parts)} ({state})"


_TALLY = _Tally()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--reliability-tally", metavar="FILE", default=None,
                     help="add this run's reliability outcomes to FILE and print the tally of all runs kept there")


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin("epcache-reliability-tally"):
        config.pluginmanager.register(_TALLY, "epcache-reliability-tally")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    kept = config.getoption("--reliability-tally")
    if kept is not None and not hasattr(config, "workerinput"):  # an xdist worker's outcomes reach the controller
        _TALLY.carry(Path(kept))
    line = _TALLY.summary()
    if line is not None:
        terminalreporter.write_sep("=", "reliability")
        terminalreporter.write_line(line)
