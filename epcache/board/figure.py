"""``board.png``: encoders x head families at a glance, and the paper's accuracy vs probe size.

Drawn from the board's text cells (what ``board.csv`` holds), like the markdown. matplotlib is
the optional ``plot`` extra, imported on the first figure with the headless Agg backend.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from epcache.board.collect import Board
from epcache.errors import ConfigError

__all__ = ["board_figure", "cell_rows"]

_MARKERS = ("o", "*", "s", "^", "v", "D", "P", "X", "h", "<", ">", "p")


def cell_rows(board: Board) -> dict[tuple[str, str], Mapping[str, str]]:
    """The row shown for each (encoder, head family): the input whose selected config scored best on the
    holdout (eval where a row has none), so the figure picks inputs the way the ranking picks configs."""
    best: dict[tuple[str, str], Mapping[str, str]] = {}
    for r in board.rows:
        key = (r["encoder"], r["head_family"])
        if key not in best or _score(r) > _score(best[key]):
            best[key] = r
    return best


def board_figure(board: Board, path: str | Path) -> Path:
    """Write the two panels to ``path`` (PNG) and return it."""
    plt = _pyplot()
    encoders, families = board.encoders, board.families
    fig, (ax_map, ax_size) = plt.subplots(
        1, 2, figsize=(4.5 + 1.1 * len(families) + 5.5, 1.2 + 0.55 * max(len(encoders), 4)),
        gridspec_kw={"width_ratios": [max(len(families), 2), 4]},
    )
    cells = cell_rows(board)
    grid = [[float(cells[(e, f)]["eval_top1"]) * 100 if (e, f) in cells and cells[(e, f)]["eval_top1"]
             else float("nan") for f in families] for e in encoders]
    image = ax_map.imshow(grid, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            if v == v:  # not NaN
                ax_map.text(j, i, f"{v:.1f}", ha="center", va="center", color="white" if v < 60 else "black",
                            fontsize=8)
    ax_map.set_xticks(range(len(families)), families, rotation=30, ha="right")
    ax_map.set_yticks(range(len(encoders)), encoders, fontsize=8)
    ax_map.set_title("eval top-1 (%), holdout-selected", fontsize=9)
    fig.colorbar(image, ax=ax_map, fraction=0.05)
    colors = plt.get_cmap("tab10")
    drawn: set[str] = set()
    for j, fam in enumerate(families):
        for i, enc in enumerate(encoders):
            r = cells.get((enc, fam))
            if r is None or not r["eval_top1"] or int(r["params"] or 0) <= 0:  # solvers: no trained parameters
                continue
            y = float(r["eval_top1"]) * 100
            lo = y - float(r["eval_lo"] or r["eval_top1"]) * 100
            hi = float(r["eval_hi"] or r["eval_top1"]) * 100 - y
            ax_size.errorbar(int(r["params"]), y, yerr=[[lo], [hi]], fmt=_MARKERS[j % len(_MARKERS)],
                             color=colors(i % 10), capsize=2, markersize=7)
            drawn.add(fam)
    ax_size.set_xscale("log")
    ax_size.set_xlabel("head parameters")
    ax_size.set_ylabel("eval top-1 (%) [95%]")
    ax_size.set_title("accuracy vs probe size (trained heads; marker: head, colour: encoder)", fontsize=9)
    handles = [plt.Line2D([], [], color=colors(i % 10), marker="o", ls="", label=e) for i, e in enumerate(encoders)]
    handles += [plt.Line2D([], [], color="gray", marker=_MARKERS[j % len(_MARKERS)], ls="", label=f)
                for j, f in enumerate(families) if f in drawn]
    ax_size.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _score(row: Mapping[str, str]) -> float:
    text = row["holdout_top1"] or row["eval_top1"]
    return float(text) if text else float("-inf")


def _pyplot() -> Any:
    try:
        import matplotlib  # lazy: the plot extra, only when a figure is drawn

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("the board figure needs matplotlib: pip install 'epcache[plot]' (or pass --no-figures)"
                          ) from None
    return plt
