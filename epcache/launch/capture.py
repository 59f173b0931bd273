"""How ``epcache submit ... -- extract ARGS`` gets the config that ``epcache extract ARGS`` would run.

``submit`` runs the named command's own option parsing and checks (same help, same errors, same
defaults) inside ``capturing()``; the command hands its finished config to ``handed_to_launcher``
instead of running it. Outside ``capturing()`` that call returns False and the command runs as
always, so no command grows a second, drifting copy of the other's options.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

__all__ = ["capturing", "handed_to_launcher"]

_SINK: ContextVar[list[Any] | None] = ContextVar("epcache_launch_sink", default=None)


def handed_to_launcher(config: Any) -> bool:
    """True when a launcher is collecting the config (the command must then return without running)."""
    sink = _SINK.get()
    if sink is None:
        return False
    sink.append(config)
    return True


@contextmanager
def capturing() -> Iterator[list[Any]]:
    """Collect the configs the commands run inside the block hand over (a list, filled as they do)."""
    sink: list[Any] = []
    token = _SINK.set(sink)
    try:
        yield sink
    finally:
        _SINK.reset(token)
