"""The reliability tally counts right under pytest-xdist and across the pytest runs CI makes.

CI runs the campaigns twice (in parallel, then the tests that must run alone), so a tally that
only counted one run, or only what one worker saw, would print the wrong campaign total.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HELPERS = Path(__file__).resolve().parent / "helpers"

INI = """[pytest]
markers =
    serial: runs alone
    reliability_kill: k
    reliability_corruption: c
    reliability_bad_input: b
    reliability_diskfull: d
"""

CASES = """import pytest

@pytest.mark.reliability_kill
@pytest.mark.parametrize("k", range(3))
def test_kill(k):
    pass

@pytest.mark.reliability_bad_input
@pytest.mark.parametrize("k", range(4))
def test_bad(k):
    pass

@pytest.mark.reliability_corruption
def test_corrupt():
    pass

@pytest.mark.serial
@pytest.mark.reliability_kill
def test_kill_alone():
    pass

@pytest.mark.serial
@pytest.mark.reliability_diskfull
@pytest.mark.parametrize("k", range(2))
def test_full(k):
    pass

def test_unmarked():
    pass
"""


def _pytest(root: Path, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HELPERS), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "reliability_tally",
                           "--rootdir", str(root), "-c", str(root / "pytest.ini"), *args, str(root)],
                          cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _tally_line(out: str) -> str:
    lines = [line for line in out.splitlines() if line.startswith("reliability campaign:")]
    assert len(lines) == 1, out
    return lines[0]


def test_two_runs_one_with_xdist_workers_add_up_to_the_whole_tally(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text(INI)
    (tmp_path / "test_cases.py").write_text(CASES)
    kept = tmp_path / "tally.json"
    parallel = _pytest(tmp_path, "-n", "2", "-m", "not serial", f"--reliability-tally={kept}")
    assert _tally_line(parallel) == ("reliability campaign: 3 kills, 1 corruption, 4 bad inputs, 0 disk-full "
                                     "(all passed)")
    alone = _pytest(tmp_path, "-m", "serial", f"--reliability-tally={kept}")
    assert _tally_line(alone) == "reliability campaign: 4 kills, 1 corruption, 4 bad inputs, 2 disk-full (all passed)"
    assert len(json.loads(kept.read_text())) == 11  # one entry per marked test, the unmarked one left out


def test_without_the_option_a_run_counts_itself_only(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text(INI)
    (tmp_path / "test_cases.py").write_text(CASES)
    out = _pytest(tmp_path)
    assert _tally_line(out) == "reliability campaign: 4 kills, 1 corruption, 4 bad inputs, 2 disk-full (all passed)"
    assert not list(tmp_path.glob("*.json"))
