"""The lab's benchmark: one table over many run directories and stores.

``board.csv`` is the single source of truth; ``board.md``, the figures and the EP benchmark's
``results.csv`` rows are generated from it. The key and column definitions every writer and
reader shares live in :mod:`epcache.board.keys`.
"""

from typing import TYPE_CHECKING

from epcache._lazy import lazy_face

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


__getattr__, __dir__ = lazy_face(__name__, _FACE, globals())


__all__ = ["Board", "build_board", "check_markdown", "render_markdown", "write_board"]
