"""`epcache report`: a markdown report with the results tables and the figures of a run directory."""

from __future__ import annotations

from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

from epcache._fs.oserror import os_errors
from epcache._text import FLOP_UNIT, format_flops, mean_std_text, plural, short_label
from epcache.probe.results.ranking import (
    CONFIG_RANKING,
    EPOCH_SELECTION,
    ORACLE_NOTE,
    best_row,
    is_dense,
    oracle_text,
    rank,
)
from epcache.report._classes import class_names, confusion_note, per_class_table, plot_confusion
from epcache.report._dense import DENSE_FIGURE, dense_lines, dense_panel, plot_dense_masks
from epcache.report._files import write_atomically
from epcache.report._mix_plot import input_label, plot_mixes
from epcache.report._model import model_title
from epcache.report._plots import plot_curves, plot_layers, plot_params
from epcache.report._tables import METRICS, ConfigGroup, best_by, check_metric, group_seeds, load_rows
from epcache.report._taps import (
    TAP_CAPTION,
    TAP_FIGURE,
    has_taps,
    load_series,
    plot_tap_layers,
    series_runs,
    tap_layer_points,
    tap_section,
    write_tap_series,
)

__all__ = ["Report", "write_report"]

RESUME_HINT = "Run the same command again once there is room"


@dataclass(frozen=True)
class Report:
    markdown: Path
    figures: list[Path] = field(default_factory=list)
    num_configs: int = 0


def write_report(rundir: str | PathLike[str], out: str | PathLike[str] | None = None, *,
                 figures: bool = True, metric: str = "top1") -> Report:
    """Write ``report.md`` (and PNG figures) for a run directory; ``out`` defaults to ``RUNDIR/report``.

    ``metric`` (``top1`` or ``mean-per-class``, :data:`~epcache.report._tables.METRICS`) is the
    accuracy the headline and the tables show; which config is best never depends on it (the one
    ranking of :mod:`epcache.probe.results.ranking`). A figure with nothing to draw is not written
    (a solver-only run has no learning curves).

    Raises:
        ConfigError: no results in ``rundir``, or figures asked for without matplotlib.
        DiskFullError, FileSystemError: ``out`` cannot be written; every file is written whole or
            not at all (a figure or report.md already there stays as it was).
    """
    check_metric(metric)
    run = Path(rundir)
    dest = Path(out) if out is not None else run / "report"
    runs = [] if any(run.glob("results*.jsonl")) else series_runs(run)
    if runs:  # `epcache probe --tap LIST --out RUNDIR`: one run per tap under RUNDIR
        rows = load_series(run)
        if has_taps(rows):
            with os_errors(action=f"epcache report into {dest}", resume_hint=RESUME_HINT):
                dest.mkdir(parents=True, exist_ok=True)
                md, figs = write_tap_series(runs, rows, dest, figures=figures, title=model_title(rows[0]))
                path = write_atomically(dest / "report.md", lambda tmp: tmp.write_text(md, encoding="utf-8"))
                return Report(markdown=path, figures=figs, num_configs=len(rows))
    rows = load_rows(run)
    with os_errors(action=f"epcache report into {dest}", resume_hint=RESUME_HINT):
        dense = [r for r in rows if is_dense(r)]
        rows = [r for r in rows if not is_dense(r)]
        if not rows:
            return _write_dense_only(run, dense, dest, figures=figures)
        report = _write(rows, dest, figures=figures, metric=metric)
        return report if not dense else _add_dense(report, run, dense, dest, figures=figures)


def _dense_part(run: Path, dense: list[dict], dest: Path, *, figures: bool) -> tuple[list[str], list[Path]]:
    """The dense section's lines and its mask figure (of the ranking's best dense row)."""
    figs: list[Path] = []
    if figures:
        panel = dense_panel(run, dense)
        figs.append(plot_dense_masks(panel, dest / DENSE_FIGURE,
                                     title=f"best dense row: {panel.row['name']} (eval images)"))
    return dense_lines(dense, figs[0].name if figs else None), figs


def _add_dense(report: Report, run: Path, dense: list[dict], dest: Path, *, figures: bool) -> Report:
    lines, figs = _dense_part(run, dense, dest, figures=figures)
    md = report.markdown.read_text(encoding="utf-8") + "\n" + "\n".join(lines)
    path = write_atomically(dest / "report.md", lambda tmp: tmp.write_text(md, encoding="utf-8"))
    return Report(markdown=path, figures=[*report.figures, *figs], num_configs=report.num_configs + len(dense))


def _write_dense_only(run: Path, dense: list[dict], dest: Path, *, figures: bool) -> Report:
    dest.mkdir(parents=True, exist_ok=True)
    backbone = model_title(dense[0])
    store = dense[0]["store"]
    lines, figs = _dense_part(run, dense, dest, figures=figures)
    md = "\n".join([f"# Probe report: {backbone}", "",
                    f"- store: `{store.get('path', '?')}` (provenance `{str(store.get('provenance', '?'))[:16]}`)",
                    f"- {plural(len(dense), 'dense config')}", "", *lines])
    path = write_atomically(dest / "report.md", lambda tmp: tmp.write_text(md, encoding="utf-8"))
    return Report(markdown=path, figures=figs, num_configs=len(dense))


def _write(rows: list[dict], dest: Path, *, figures: bool, metric: str) -> Report:
    groups = group_seeds(rows)
    dest.mkdir(parents=True, exist_ok=True)
    backbone = model_title(rows[0])
    honest = all(g.holdout_top1 is not None for g in groups)
    best = best_row(rank(groups)[0])
    names = class_names(best)
    figs: list[Path] = []
    taps = has_taps(rows)
    if figures:
        if any(g.params > 0 for g in groups):  # k-NN alone learns no parameters: nothing to place on the x axis
            figs.append(plot_params(groups, dest / "top1_vs_params.png", title=f"accuracy vs probe size\n{backbone}"))
        figs.append(plot_layers(groups, dest / "top1_vs_layer.png", title=f"accuracy by layer\n{backbone}"))
        if taps:  # a run on one tap: the tap's points beside the blocks, as a tap series draws them
            figs.append(plot_tap_layers(tap_layer_points(groups), dest / TAP_FIGURE,
                                        title=f"accuracy by block and tap\n{backbone}"))
        if any(not g.rows[0]["config"].get("solver") for g in groups):  # solver heads have no epochs
            figs.append(plot_curves(groups, dest / "curves.png",
                                    title=f"learning curves of the selected configs\n{backbone}"))
        if len({(input_label(g), g.tokens) for g in groups}) > 1:  # mixes or token sources: several inputs
            figs.append(plot_mixes(groups, dest / "top1_by_input.png", title=f"{backbone}: top-1 by layers and tokens"))
        if confusion_note(best) is None:
            figs.append(plot_confusion(best, names, dest / "confusion.png",
                                       title=f"eval confusion of the best config\n{short_label(best['config'])}"))
    md = _markdown(rows, groups, backbone=backbone, honest=honest, figures=[f.name for f in figs], metric=metric,
                   names=names)
    if taps:
        md += "\n" + "\n".join(tap_section(tap_layer_points(groups)))
    path = write_atomically(dest / "report.md", lambda tmp: tmp.write_text(md, encoding="utf-8"))
    return Report(markdown=path, figures=figs, num_configs=len(rows))


def _markdown(rows: list[dict], groups: list[ConfigGroup], *, backbone: str, honest: bool,
              figures: list[str], metric: str, names: list[str]) -> str:
    store = rows[0]["store"]
    top = rank(groups)[0]
    best = best_row(top)
    label = METRICS[metric][1]
    crit = (f"ranked by {CONFIG_RANKING} (holdout: part of train; eval split scored once); "
            f"each config's epoch: {EPOCH_SELECTION}" if honest
            else "NO holdout: selected on eval top-1 (not an honest selection)")
    lines = [
        f"# Probe report: {backbone}",
        "",
        f"- store: `{store.get('path', '?')}` (provenance `{str(store.get('provenance', '?'))[:16]}`)",
        (f"- {plural(len(rows), 'config')}, one seed each" if len(groups) == len(rows) else
         f"- {plural(len(rows), 'config')} in {plural(len(groups), 'group')} (configs that differ only by seed)")
        + f"; selection: {crit}",
        f"- accuracies in %, mean ± std over seeds; {ORACLE_NOTE}",
        "- `id`: the config id in results.jsonl (first seed), for `epcache attention RUNDIR --config ID`; "
        "`config`: head, layer (`L`) and lr, the full settings are in results.jsonl",
        "",
        "## Headline",
        "",
        f"Best config (the ranking above, whatever the metric shown): `{best['id'][:10]}` "
        f"{short_label(best['config'])}: eval {label} {_acc(top.eval_score(metric))} %, "
        f"holdout {label} {_acc(top.holdout_score(metric))} %"
        + ("" if metric == "top1" else f" (eval top-1 {_acc(top.eval_top1)} %)") + ".",
        "",
        "## Best per head kind",
        "",
        _table(list(best_by(groups, lambda g: g.kind).values()), metric),  # rank order, as the probe summary
        "",
        "## Best per head kind and layer",
        "",
        _table(sorted(best_by(groups, lambda g: (g.kind, g.layer)).values(), key=lambda g: (g.kind, g.layer)),
               metric),
        "",
        "## Per class (best config)",
        "",
        f"Eval accuracy of each class for `{best['id'][:10]}` (first seed); their mean is the mean-per-class "
        f"accuracy ({100 * best['metrics']['eval']['balanced_acc']:.2f} %).",
        "",
        per_class_table(best, names),
        "",
    ]
    note = confusion_note(best)
    if note is not None:
        lines += [note, ""]
    if figures:
        lines += ["## Figures", ""]
        captions = {
            "top1_vs_params.png": "Eval top-1 vs trainable parameters (best config of each head variant).",
            "top1_vs_layer.png": "Eval top-1 by backbone layer (best config of each head kind per layer).",
            "curves.png": "Learning curves of the selected config of each head kind (dot: selected epoch).",
            "top1_by_input.png": "Eval top-1 per input (single layer, layer mix, pooled output) and token "
            "source, best config of each, one panel per head kind.",
            "confusion.png": "Eval confusion matrix of the best config (rows: true class, normalised per row).",
            TAP_FIGURE: TAP_CAPTION,
        }
        for f in figures:
            lines += [f"![{captions.get(f, f)}]({f})", "", captions.get(f, ""), ""]
    lines += ["## All configs", "", _table(rank(groups), metric)]
    return "\n".join(lines) + "\n"


def _table(groups: list[ConfigGroup], metric: str = "top1") -> str:
    """One row per seed group; the same columns in the same order in every table of the report."""
    label = METRICS[metric][1]
    head = f"| id | config | params | {FLOP_UNIT}/img | seeds | holdout {label} | eval {label} | oracle top-1 |"
    out = [head, "|---|---|---:|---:|---:|---:|---:|---:|"]
    for g in groups:
        hold = g.holdout_score(metric)
        out.append(
            f"| `{g.rows[0]['id'][:10]}` | {short_label(g.rows[0]['config'])} | {g.params:,} | "
            f"{format_flops(g.flops)} | {g.seeds} | {_acc(hold)} | {_acc(g.eval_score(metric))} | {oracle_text(g)} |"
        )
    return "\n".join(out)


def _acc(ms: tuple[float, float] | None) -> str:
    """A table cell: the ± part only where seeds differ (one seed prints its accuracy alone)."""
    return mean_std_text(ms, std=ms is not None and bool(ms[1]))
