"""Progress lines for work that turns out slow: silence for a quick step, a line per step once it has run a while.

A bar over a one-second fit is noise, and a minute-long fit with no output looks hung. So a loop
whose length depends on the data (the logistic C path, `epcache attention`'s read-and-score pass)
reports through :class:`SlowSteps`: nothing until :data:`SLOW_AFTER_S` seconds have passed since
it started, then at most one line every :data:`SLOW_AFTER_S` seconds (a fast loop of many steps
would otherwise print one line per step: a 45-value C path printed 45), plus the closing line.
``say=None`` (progress off) prints nothing at all. Tests set :data:`SLOW_AFTER_S` to 0 instead of
sleeping, which also makes every step a line.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sized
from contextlib import contextmanager
from typing import TypeVar

__all__ = ["SLOW_AFTER_S", "SlowSteps"]

SLOW_AFTER_S = 5.0  # seconds of work before its steps are said (read when a SlowSteps starts)

T = TypeVar("T", bound=Sized)


class SlowSteps:
    """Says a step's line once the work has run for ``after_s`` seconds; ``every_s`` spaces the lines out.

    The default (``None``) spaces them ``after_s`` apart, so a slow loop speaks every few seconds
    however many steps it has; ``every_s=0`` says every step past the threshold, for loops whose
    every step is itself long.
    """

    def __init__(self, say: Callable[[str], None] | None, *, every_s: float | None = None) -> None:
        self._say = say
        self.after_s = SLOW_AFTER_S
        self._every = self.after_s if every_s is None else every_s
        self._start = time.perf_counter()
        self._last: float | None = None  # when the last line was said

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._start

    def step(self, message: Callable[[], str]) -> None:
        """Say ``message()`` if the work is slow and the last line is ``every_s`` old (built only when said)."""
        if self._say is None:
            return
        now = time.perf_counter()
        if now - self._start < self.after_s or (self._last is not None and now - self._last < self._every):
            return
        self._last = now
        self._say(message())

    def done(self, message: Callable[[], str]) -> None:
        """The closing line: said when the work as a whole was slow."""
        if self._say is not None and self.elapsed >= self.after_s:
            self._say(message())

    def over(self, chunks: Iterable[tuple[int, T]], *, total: int, what: str) -> Iterator[tuple[int, T]]:
        """``chunks`` (``(start, rows)`` pairs) passed through, with ``what N/total (S s)`` lines while slow."""
        done = 0
        for start, rows in chunks:
            yield start, rows
            done += len(rows)
            self.step(lambda: f"{what} {done:,}/{total:,} ({self.elapsed:.0f} s)")  # noqa: B023
        self.done(lambda: f"{what} {done:,} in {self.elapsed:.1f} s")

    @contextmanager
    def timed(self, what: str) -> Iterator[None]:
        """One step of its own: ``what in S s`` when that step alone took longer than the threshold."""
        start = time.perf_counter()
        yield
        took = time.perf_counter() - start
        if self._say is not None and took >= self.after_s:
            self._say(f"{what} in {took:.1f} s")
