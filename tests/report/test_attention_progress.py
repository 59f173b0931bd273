"""`epcache attention` says the progress of its slow steps (reading and scoring the split), only with progress on."""

from __future__ import annotations

from pathlib import Path

import pytest
from solver_helpers import class_store
from typer.testing import CliRunner

import epcache._progress
from epcache._progress import SlowSteps
from epcache.cli import app
from epcache.probe import ProbeConfig, probe_store


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("att")
    store = class_store(tmp / "s.zarr", n_train=64, n_val=48, dim=32)
    probe_store(ProbeConfig(store=str(store), head=("ep",), tokens=("patch",), lr=(0.01,), epochs=1, device="cpu",
                            out=str(tmp / "run")), progress=False)
    return tmp / "run"


def test_attention_says_its_slow_steps_only_with_progress_on(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    quick = CliRunner().invoke(app, ["attention", str(run), "--images", "0"])
    assert quick.exit_code == 0, quick.output
    assert "attention: scored" not in quick.stderr  # every step under the threshold: nothing said
    monkeypatch.setattr(epcache._progress, "SLOW_AFTER_S", 0.0)
    slow = CliRunner().invoke(app, ["attention", str(run), "--images", "0"])
    assert slow.exit_code == 0, slow.output
    lines = slow.stderr.splitlines()
    assert any(line.startswith("attention: scored ") and line.endswith("/48 (0 s)") for line in lines), lines
    assert sum(line.startswith("attention: scored 48 in ") for line in lines) == 1
    assert "top-1" in slow.stdout and "attention: scored" not in slow.stdout  # progress on stderr, results on stdout
    off = CliRunner().invoke(app, ["attention", str(run), "--images", "0", "--no-progress"])
    assert off.exit_code == 0 and off.stderr == ""


def test_slow_steps_stay_quiet_until_the_threshold_and_without_say(monkeypatch: pytest.MonkeyPatch) -> None:
    said: list[str] = []
    quick = SlowSteps(said.append)  # the 5 s default: a quick step says nothing
    quick.step(lambda: "never")
    with quick.timed("read"):
        pass
    quick.done(lambda: "never")
    assert said == []
    monkeypatch.setattr(epcache._progress, "SLOW_AFTER_S", 0.0)
    slow = SlowSteps(said.append)
    assert list(slow.over([(0, [1, 2]), (2, [3])], total=3, what="scored")) == [(0, [1, 2]), (2, [3])]
    with slow.timed("read 2 images"):
        pass
    assert [s.rsplit(" (", 1)[0].rsplit(" in ", 1)[0] for s in said] == ["scored 2/3", "scored 3/3", "scored 3",
                                                                          "read 2 images"]
    silent = SlowSteps(None)  # progress off
    silent.step(lambda: 1 / 0)  # type: ignore[arg-type,return-value]  # the message is never even built
    list(silent.over([(0, [1])], total=1, what="x"))
    assert len(said) == 4
