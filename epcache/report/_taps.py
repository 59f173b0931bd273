"""Taps and blocks on one axis: the best config of each (tap, block) of one run or of a tap series.

`epcache probe --tap all --out RUNDIR` writes RUNDIR/<tap>/ per tap; each point here is one (tap,
block) cell's best seed group by THE one ranking (:mod:`epcache.probe.results.ranking`, through
:func:`~epcache.report._tables.best_by`), drawn at block ``l`` plus its tap's offset with the eval
top-1's 95% interval (:func:`~epcache.probe.results.intervals.top1_interval`); eval never chooses.
A row's tap is what it recorded (``data.tap``), never its directory's name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from epcache._text import mean_std_text, short_label
from epcache.probe.results.intervals import top1_interval
from epcache.probe.results.ranking import CONFIG_RANKING
from epcache.report._plots import LEGEND, _accuracy_axis, _figure, _finish, _save, require_matplotlib
from epcache.report._tables import ConfigGroup, best_by, group_seeds, input_label, load_rows
from epcache.store.layout.taps import BLOCK, TAPS

__all__ = ["TAP_CAPTION", "TAP_FIGURE", "TAP_ORDER", "TapPoint", "group_tap", "has_taps", "load_series",
           "plot_tap_layers", "series_runs", "tap_layer_points", "tap_layers_figure", "tap_section", "tap_table",
           "write_tap_series"]

TAP_ORDER: tuple[str, ...] = (BLOCK, *TAPS)  # legend and offset order: block, attn_out, attn_norm, mlp_hidden, mlp_out
OFFSET = 0.15  # x distance between the taps of one block (block l sits at l)
TAP_FIGURE = "top1_by_tap_layer.png"
TAP_CAPTION = ("Eval top-1 by backbone block, each block's taps side by side (block, attn_out, attn_norm, mlp_hidden, "
               "mlp_out), best config of each (tap, block), bars: 95% interval.")
_STYLE = {BLOCK: ("o", "tab:blue"), "attn_out": ("s", "tab:orange"), "attn_norm": ("^", "tab:green"),
          "mlp_hidden": ("D", "tab:red"), "mlp_out": ("v", "tab:purple")}


@dataclass(frozen=True)
class TapPoint:
    """One (tap, block) cell: its best seed group and where the figure draws it."""

    tap: str
    layer: int
    x: float  # layer + the tap's offset
    eval_top1: float  # seed mean, in [0, 1]
    eval_lo: float  # 95% interval
    eval_hi: float
    group: ConfigGroup


def group_tap(g: ConfigGroup) -> str:
    """The tap a seed group read, as its rows recorded it (rows before taps read the block outputs)."""
    return str((g.rows[0].get("data") or {}).get("tap") or BLOCK)


def has_taps(rows: Sequence[dict[str, Any]]) -> bool:
    """Whether any row read a tap rather than the block outputs."""
    return any((r.get("data") or {}).get("tap") not in (None, BLOCK) for r in rows)


def series_runs(parent: Path) -> list[Path]:
    """The run directories directly under ``parent`` (each holds results), in name order."""
    if not parent.is_dir():
        return []
    return sorted(p for p in parent.iterdir() if p.is_dir() and any(p.glob("results*.jsonl")))


def load_series(parent: Path) -> list[dict[str, Any]]:
    """Every row of every run under ``parent``."""
    return [row for run in series_runs(parent) for row in load_rows(run)]


def tap_layer_points(groups: Sequence[ConfigGroup]) -> list[TapPoint]:
    """The best single-block config of each (tap, block), by the one ranking, in tap then block order.

    Layer mixes and the pooled output read no one block and are left out, as the block axis of
    :func:`~epcache.report._plots.layers_figure` leaves them.
    """
    single = [g for g in groups if input_label(g) == "single layer"]
    best = best_by(single, lambda g: (group_tap(g), g.layer))
    order = {t: i for i, t in enumerate(TAP_ORDER)}
    points = []
    for (tap, layer), g in best.items():
        lo, hi = top1_interval([r["metrics"]["eval"] for r in g.rows])
        points.append(TapPoint(tap, layer, layer + OFFSET * order.get(tap, len(order)), g.eval_top1[0], lo, hi, g))
    return sorted(points, key=lambda p: (order.get(p.tap, len(order)), p.tap, p.layer))


def tap_layers_figure(points: Sequence[TapPoint], *, title: str) -> Any:
    """Eval top-1 by block with each block's taps side by side, one marker and colour per tap, 95% bars."""
    plt = require_matplotlib()
    fig, ax = _figure(plt)
    for tap in dict.fromkeys(p.tap for p in points):
        pts = [p for p in points if p.tap == tap]
        marker, color = _STYLE.get(tap, ("x", "tab:gray"))
        ys = [100 * p.eval_top1 for p in pts]
        err = [[y - 100 * p.eval_lo for y, p in zip(ys, pts, strict=True)],
               [100 * p.eval_hi - y for y, p in zip(ys, pts, strict=True)]]
        ax.errorbar([p.x for p in pts], ys, yerr=err, fmt=marker, color=color, capsize=3, markersize=7,
                    linestyle="-" if len(pts) > 1 else "none", linewidth=0.8, label=tap, clip_on=False, zorder=3)
    layers = sorted({p.layer for p in points})
    ax.set_xticks(layers, [str(x) for x in layers])
    ax.set_xlim(layers[0] - 0.5, layers[-1] + OFFSET * len(TAP_ORDER) + 0.2)
    _accuracy_axis(ax, [100 * p.eval_lo for p in points] + [100 * p.eval_hi for p in points])
    ax.set_xlabel("backbone block (0 = first); its taps to the right of each block")
    ax.set_ylabel("eval top-1 accuracy (%), 95% interval")
    ax.grid(True, alpha=0.3)
    ax.legend(title="tap (best config\nper block)", **LEGEND)
    return _finish(fig, title=title, labels=[])


def plot_tap_layers(points: Sequence[TapPoint], path: Path, *, title: str) -> Path:
    """Write :func:`tap_layers_figure` to ``path``."""
    return _save(tap_layers_figure(points, title=title), path)


def tap_table(points: Sequence[TapPoint]) -> str:
    """The figure's numbers: one row per (tap, block), the same order."""
    out = ["| tap | block | id | config | seeds | holdout top-1 | eval top-1 | 95% interval |",
           "|---|---:|---|---|---:|---:|---:|---|"]
    for p in points:
        g = p.group
        hold = g.holdout_top1
        out.append(f"| {p.tap} | {p.layer} | `{g.rows[0]['id'][:10]}` | {short_label(g.rows[0]['config'])} | "
                   f"{g.seeds} | {mean_std_text(hold, std=hold is not None and bool(hold[1]))} | "
                   f"{100 * p.eval_top1:.2f} | [{100 * p.eval_lo:.1f}, {100 * p.eval_hi:.1f}] |")
    return "\n".join(out)


def tap_section(points: Sequence[TapPoint]) -> list[str]:
    """report.md's lines for the tap figure's numbers."""
    return ["## Best per tap and block", "",
            f"The best config of each (tap, block) by the ranking ({CONFIG_RANKING}); eval top-1 in % with its 95% "
            "interval: the numbers of the tap figure.", "", tap_table(points), ""]


def write_tap_series(runs: Sequence[Path], rows: Sequence[dict[str, Any]], dest: Path, *, figures: bool,
                     title: str) -> tuple[str, list[Path]]:
    """report.md's text and the figure for a parent directory of tap runs (``epcache probe --tap LIST``)."""
    points = tap_layer_points(group_seeds(rows))
    figs = [plot_tap_layers(points, dest / TAP_FIGURE, title=f"accuracy by block and tap\n{title}")] if figures else []
    taps = {str((r.get("data") or {}).get("tap") or BLOCK) for r in rows}
    lines = [f"# Tap report: {title}", "",
             f"- store: `{_block_store(rows)}`; {len(runs)} runs, one per tap: "
             + ", ".join(f"`{run.name}`" for run in runs),
             f"- taps: {', '.join(sorted(taps, key=lambda t: (*TAP_ORDER, t).index(t)))}",
             f"- each point: the best config of its (tap, block) by {CONFIG_RANKING}; each run's own tables: "
             "`epcache report RUNDIR/<tap>`", ""]
    lines += tap_section(points)
    if figs:
        lines += ["## Figure", "", f"![{TAP_CAPTION}]({TAP_FIGURE})", "", TAP_CAPTION, ""]
    return "\n".join(lines) + "\n", figs


def _block_store(rows: Sequence[dict[str, Any]]) -> str:
    """The store the taps belong to: a block row's store, else a tap store's parent (taps/<name>/ stripped)."""
    for r in rows:
        if (r.get("data") or {}).get("tap") in (None, BLOCK):
            return str(r["store"].get("path", "?"))
    path = str(rows[0]["store"].get("path", "?")).rstrip("/")
    return path.rsplit("/taps/", 1)[0]
