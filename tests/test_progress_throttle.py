"""A slow loop of many quick steps says a line every few seconds, not one per step, and always its closing line."""

from __future__ import annotations

import pytest

import epcache._progress
from epcache._progress import SlowSteps


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_many_quick_steps_past_the_threshold_say_one_line_per_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(epcache._progress.time, "perf_counter", clock)
    said: list[str] = []
    steps = SlowSteps(said.append)  # the default spacing: SLOW_AFTER_S (5 s) between lines
    for i in range(45):  # a 45-value C path, each value 0.5 s: 22.5 s in all
        clock.now += 0.5
        steps.step(lambda i=i: f"C {i + 1}/45")
    steps.done(lambda: "C path done")
    # first line once 5 s have passed (step 10), then one every 5 s: steps 20, 30, 40
    assert said == ["C 10/45", "C 20/45", "C 30/45", "C 40/45", "C path done"]


def test_every_zero_still_says_each_step(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(epcache._progress.time, "perf_counter", clock)
    said: list[str] = []
    steps = SlowSteps(said.append, every_s=0.0)
    for i in range(3):
        clock.now += 6.0
        steps.step(lambda i=i: f"step {i}")
    assert said == ["step 0", "step 1", "step 2"]
