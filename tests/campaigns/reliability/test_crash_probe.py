"""Crash campaign for `epcache probe`: SIGKILL a real sweep at seeded random moments, resume, compare rows.

A resumed sweep must write the rows an uninterrupted one writes (every field but ``timing``) and
the same head files, wherever the kill landed: during startup, inside an epoch, while a
checkpoint or a results line was being written, or after the last row.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import epcache
from epcache.cli import app

probe_helpers = pytest.importorskip("probe_helpers", reason="the probe stage's test helpers are not there")
read_results = pytest.importorskip("epcache.probe").read_results

# the kill moments are fractions of a reference run's measured length: alone on the cores
pytestmark = pytest.mark.serial
runner = CliRunner()
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1",
             "PYTHONPATH": os.pathsep.join([str(Path(epcache.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
ARGS = ["probe", "--head", "linear,ep", "--queries", "4", "--layers", "all", "--tokens", "gap,patch",
        "--lr", "0.01,0.05", "--epochs", "8", "--warmup", "1", "--batch-size", "16", "--optimizer", "adamw",
        "--holdout", "0.2", "--device", "cpu", "--no-progress", "--linear-fit", "sgd"]  # 8 configs, 2 layer groups


def _rows(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "timing"} for r in read_results(run / "results.jsonl")]


def test_probe_sweep_survives_random_kills(tmp_path: Path) -> None:
    store = probe_helpers.write_store(tmp_path / "s.zarr", n_train=160, n_val=48)
    t0 = time.monotonic()
    ref = subprocess.run([sys.executable, "-m", "epcache", *ARGS, "--store", str(store), "--out",
                          str(tmp_path / "ref")], env=CHILD_ENV, capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr
    length = time.monotonic() - t0
    want = _rows(tmp_path / "ref")
    assert len(want) == 8

    rng = random.Random(0)
    plan = (  # (anchor, seconds after it): startup, inside the first layer group, after its rows
        [("start", rng.uniform(0.5, 0.4 * length)) for _ in range(2)]
        + [("checkpoint", rng.uniform(0.0, 1.5)) for _ in range(2)]
        + [("row", rng.uniform(0.0, 1.5)) for _ in range(2)]
    )
    outcomes: dict[str, list] = {"killed": [], "rows_before_resume": []}
    for pair in (list(enumerate(plan))[i : i + 2] for i in range(0, len(plan), 2)):
        outcomes["killed"] += _kill_at(store, tmp_path, pair)
    for k in range(len(plan)):
        run = tmp_path / f"k{k}"
        done_before = len(read_results(run / "results.jsonl")) if (run / "results.jsonl").exists() else 0
        outcomes["rows_before_resume"].append(done_before)
        r = runner.invoke(app, [*ARGS, "--store", str(store), "--out", str(run)])
        assert r.exit_code == 0 and "Traceback" not in r.output, r.output
        assert _rows(run) == want, k
        for row in read_results(tmp_path / "ref" / "results.jsonl"):
            assert (run / row["head_file"]).read_bytes() == (tmp_path / "ref" / row["head_file"]).read_bytes()
    print(f"\nprobe kills: {outcomes}")
    assert sum(outcomes["killed"]) >= 4 and any(outcomes["rows_before_resume"])


def _kill_at(store: Path, tmp_path: Path, jobs: list[tuple[int, tuple[str, float]]]) -> list[bool]:
    """Run the jobs' sweeps side by side; SIGKILL each ``delay`` s after its anchor shows on disk."""
    children = {
        k: subprocess.Popen([sys.executable, "-m", "epcache", *ARGS, "--store", str(store), "--out",
                             str(tmp_path / f"k{k}")], env=CHILD_ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
        for k, _ in jobs
    }
    start = time.monotonic()
    due: dict[int, float] = {}
    deadline = start + 300
    while any(c.poll() is None for c in children.values()):
        assert time.monotonic() < deadline
        for k, (anchor, delay) in jobs:
            run = tmp_path / f"k{k}"
            if k not in due and (
                anchor == "start"
                or (anchor == "checkpoint" and any(run.glob("ckpt/*.safetensors")))
                or (anchor == "row" and (run / "results.jsonl").is_file() and (run / "results.jsonl").stat().st_size)
            ):
                due[k] = time.monotonic() + delay
            if k in due and time.monotonic() >= due[k] and children[k].poll() is None:
                children[k].send_signal(signal.SIGKILL)
        time.sleep(0.01)
    codes = [children[k].wait() for k, _ in jobs]
    assert all(c in (0, -signal.SIGKILL) for c in codes), codes
    return [c == -signal.SIGKILL for c in codes]
