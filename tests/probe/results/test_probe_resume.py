"""A sweep killed with SIGKILL resumes at its last checkpoint and writes the rows it would have written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from probe_helpers import write_store

from epcache.probe import read_results
from epcache.probe.results.rows import load_checkpoint

REPO = Path(__file__).resolve().parents[3]
EPOCHS = 20
SCRIPT = """
import sys
from epcache.probe import ProbeConfig, probe_store
probe_store(ProbeConfig(store=sys.argv[1], out=sys.argv[2], head="linear,ep", tokens="gap,patch", queries=4,
                        layers="all", lr="0.01,0.05", seeds="0,1", epochs={epochs}, warmup=2, batch_size=16,
                        optimizer="lars", holdout=0.2, device="cpu", linear_fit="sgd"), progress=False)
"""


def run(store: Path, out: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT.format(epochs=EPOCHS), str(store), str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def finish(proc: subprocess.Popen[bytes]) -> None:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()


def without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "timing"} for r in rows]


@pytest.mark.slow
def test_killed_sweep_resumes_with_identical_rows(tmp_path: Path) -> None:
    store = write_store(tmp_path / "s.zarr", n_train=320, n_val=64)
    out = tmp_path / "killed"
    proc = run(store, out)
    ckpt_dir = out / "ckpt"
    deadline = time.monotonic() + 240
    while not (ckpt_dir.is_dir() and any(ckpt_dir.glob("*.safetensors"))):
        assert proc.poll() is None, proc.communicate()[1].decode()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    (ckpt,) = ckpt_dir.glob("*.safetensors")
    loaded = load_checkpoint(ckpt)
    assert loaded is not None
    _, state = loaded
    assert 0 <= state["epoch"] < EPOCHS - 1, "the run finished before it could be killed"
    assert len(state["train_loss"][0]) == state["epoch"] + 1
    assert not read_results(out / "results.jsonl")  # nothing finished: two layers, the first one interrupted

    finish(run(store, out))  # resume
    reference = tmp_path / "reference"
    finish(run(store, reference))  # never interrupted
    resumed_rows = read_results(out / "results.jsonl")
    reference_rows = read_results(reference / "results.jsonl")
    assert len(resumed_rows) == 2 * 2 * 2 * 2  # (linear, ep) x 2 layers x 2 lr x 2 seeds
    resumed_first = [r for r in resumed_rows if r["config"]["layer"] == 0]
    assert all(r["timing"]["resumed_after_epoch"] == state["epoch"] + 1 for r in resumed_first)
    assert without_timing(resumed_rows) == without_timing(reference_rows)
    for r in reference_rows:  # the saved heads are identical too
        assert (out / r["head_file"]).read_bytes() == (reference / r["head_file"]).read_bytes()
    resolved, ref = (json.loads((d / "config.json").read_text()) for d in (out, reference))
    assert resolved["runs"] == ref["runs"] and resolved["config"]["out"] == str(out)
