"""The sweep's progress bar: an ETA from the measured step rate after warm-up, resumed steps not counted.

tqdm's own rate averages every step since the bar opened, so the first steps (thread pools starting,
the first chunks read from disk, torch.compile) made the first ETA of an EP sweep say 31 minutes for
a run of 4, and a resumed sweep's skipped epochs counted as instant throughput. Here the rate is
measured only over new steps taken after a warm-up (``WARMUP_STEPS`` steps and ``WARMUP_SECONDS``),
and until then the bar says "ETA after warm-up" instead of guessing.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ["WARMUP_SECONDS", "WARMUP_STEPS", "SweepProgress", "format_eta"]

WARMUP_STEPS = 5
WARMUP_SECONDS = 2.0
_BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"


def format_eta(seconds: float) -> str:
    """``1:02:03`` / ``4:05``: the clock format tqdm uses, so the bar reads the same as before."""
    s = max(0, round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class SweepProgress:
    """A tqdm bar over the sweep's optimiser steps whose ETA comes from :meth:`rate`.

    ``skip(n)``: steps already done by an earlier run (resumed epochs) move the bar without
    counting as throughput. ``update(n)``: steps taken now. The clock is injectable for tests.
    """

    def __init__(self, total: int, *, desc: str, enabled: bool, clock: Callable[[], float] = time.perf_counter,
                 bar: Any = None) -> None:
        if bar is None:
            from tqdm import tqdm  # the bar's import stays out of `import epcache.probe`

            bar = tqdm(total=total, unit="step", file=sys.stderr, disable=not enabled, desc=desc, leave=False,
                       bar_format=_BAR_FORMAT)
        self.bar = bar
        self.total = total
        self.clock = clock
        self.done = 0  # steps on the bar: skipped and new
        self.new = 0  # steps taken by this process
        self._warm: tuple[float, int] | None = None  # (time, new steps) when warm-up ended
        self._first: float | None = None
        self._status = ""

    # the context manager and tqdm's postfix API, so runners can treat this as the bar
    def __enter__(self) -> SweepProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()

    def skip(self, n: int) -> None:
        if n > 0:
            self.done += n
            self.bar.update(n)
            self._refresh()

    def update(self, n: int = 1) -> None:
        now = self.clock()
        if self._first is None:
            self._first = now
        self.done += n
        self.new += n
        if self._warm is None and self.new >= WARMUP_STEPS and now - self._first >= WARMUP_SECONDS:
            self._warm = (now, self.new)
        self.bar.update(n)
        self._refresh()

    def rate(self) -> float | None:
        """New steps per second since warm-up ended; None until a step after it was measured."""
        if self._warm is None:
            return None
        t0, n0 = self._warm
        dt, dn = self.clock() - t0, self.new - n0
        return dn / dt if dn > 0 and dt > 0 else None

    def eta(self) -> str:
        rate = self.rate()
        if rate is None:
            return "ETA after warm-up"
        return f"ETA {format_eta((self.total - self.done) / rate)} at {rate:.3g} step/s"

    def set_postfix_str(self, text: str) -> None:
        self._status = text
        self._refresh()

    def _refresh(self) -> None:
        self.bar.set_postfix_str(", ".join(p for p in (self._status, self.eta()) if p), refresh=False)
