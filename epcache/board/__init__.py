"""The lab's benchmark: one table over many run directories and stores.

``board.csv`` is the single source of truth; ``board.md``, the figures and the EP benchmark's
``results.csv`` rows are generated from it. The key and column definitions every writer and
reader shares live in :mod:`epcache.board.keys`.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from epcache.board.collect import Board as Board
    from epcache.board.collect import build_board as build_board
    from epcache.board.table import check_markdown as check_markdown
    from epcache.board.table import render_markdown as render_markdown
    from epcache.board.table import write_board as write_board

# name -> module, imported on first touch: ``keys`` (read by `epcache probe`) loads without the store or torch
_FACE: dict[str, str] = {
    "Board": "epcache.board.collect",
    "build_board": "epcache.board.collect",
    "check_markdown": "epcache.board.table",
    "render_markdown": "epcache.board.table",
    "write_board": "epcache.board.table",
}


def __getattr__(name: str) -> Any:
    """Import a face name the first time it is used."""
    if name in _FACE:
        value = getattr(import_module(_FACE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'epcache.board' has no attribute {name!r}")


__all__ = ["Board", "build_board", "check_markdown", "render_markdown", "write_board"]
