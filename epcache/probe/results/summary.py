"""The printed summary (and summary.txt): the ranked table, the best config, its intervals and the holdout's limits.

The selection top-1 of a single row (holdout, or pooled cross-validation), which the ranking reads
and whose column is named after the rule that ran (selection.py), carries its 95% Wilson interval in the
table (``71.30 [66.2, 76.0]``), and the best config's eval top-1 its own on the best-overall line;
the table leaves the eval interval to results.jsonl, so a row fits 100 columns. Means over seeds or
few-shot tries are mean ± std; the best config's mean also gets a percentile bootstrap interval.
When the selection score is too noisy to tell the leading configs apart, the summary says so once,
with its size per class, because then the ranking is a coin toss among them.
"""

from __future__ import annotations

import textwrap
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from epcache._text import FLOP_UNIT, format_flops, mean_std_text, percent, plural
from epcache._text import short_label as label
from epcache.probe.results.intervals import BOOTSTRAP_METHOD, INTERVAL_METHOD, top1_interval
from epcache.probe.results.ranking import (
    DENSE_RANKING,
    best_row,
    config_ranking,
    group_by_seed,
    is_dense,
    oracle_note,
    oracle_text,
    rank_rows,
)
from epcache.probe.results.selection import (
    final_heads,
    holdout_warning,
    row_rule,
    rule_header,
    rule_legend,
    rules_of,
    score_name,
    solver_choice,
)

__all__ = ["dense_summary", "format_summary", "holdout_warning", "repeats_text", "row_label", "seed_summary",
           "short_label"]


def format_summary(rows: Sequence[dict[str, Any]], *, top: int = 1) -> str:
    """Text summary: the best seed group per head kind, the best overall, and seed mean ± std.

    Every "best" here is :func:`epcache.probe.results.ranking.rank` and every oracle
    :func:`~epcache.probe.results.ranking.oracle_text`, as in the report and ``epcache attention
    --config best``, so all of them name the same config and print the same numbers. The eval
    column is the eval split at each config's selected epoch. Epochs are 1-based.
    """
    if not rows:
        return "no results"
    dense = [r for r in rows if is_dense(r)]
    rows = [r for r in rows if not is_dense(r)]
    if not rows:
        return dense_summary(dense)
    text = _classification_summary(rows, top=top)
    return text + "\n" + dense_summary(dense) if dense else text


def dense_summary(rows: Sequence[dict[str, Any]]) -> str:
    """The dense rows in rank order (:data:`DENSE_RANKING`): chosen params, holdout and eval mIoU, the floor."""
    lines = [_wrap(f"dense: {plural(len(rows), 'config')}; ranked by {DENSE_RANKING}; mIoU and pixel accuracy in %, "
                   "majority = the most frequent train class everywhere (eval mIoU)")]
    body = []
    for g in rank_rows(rows):
        r = best_row(g)
        ev = r["metrics"]["eval"]
        chosen = ",".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.get("chosen", {}).items()
                          if k not in ("seed", "holdout", "memory_size", "epochs", "batch_size", "refit", "n_iter"))
        body.append((r["id"][:10], r["kind"], ",".join(map(str, r["input"]["layers"])), chosen or "-",
                     _pct(r["metrics"]["holdout"]["miou"]), _pct(ev["miou"]), _pct(ev["pixel_acc"]),
                     _pct(ev.get("majority_miou"))))
    lines.append(_table(("id", "head", "layer", "chosen", "holdout mIoU", "eval mIoU", "pixel acc", "majority"),
                        body))
    best = best_row(rank_rows(rows)[0])
    lines.append(f"best dense: {best['id'][:10]} {best['name']}: eval mIoU {_pct(best['metrics']['eval']['miou'])}")
    return "\n".join(lines)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * float(x):.2f}"


def _classification_summary(rows: Sequence[dict[str, Any]], *, top: int) -> str:
    groups = rank_rows(rows)
    honest = all(g.honest for g in groups)
    rules = rules_of(rows)
    column = rule_header(rules)
    score = score_name(rules)
    crit = f"{score} top-1" if honest else "EVAL top-1 (no holdout: not an honest selection)"
    pooled = "pooled over the folds, " if honest and column.startswith("cv") else ""
    lines = [_wrap(f"{plural(len(rows), 'config')} in {plural(len(groups), 'seed group')}; ranked by {crit} "
                   f"({pooled}seed mean, ties below); accuracies in %")]
    header = ("id", "config", "params", f"{FLOP_UNIT}/img", column, "eval", "oracle")
    body = []
    by_kind: dict[str, list[Any]] = defaultdict(list)
    for g in groups:
        by_kind[g.rows[0]["config"]["kind"]].append(g)
    for kind in by_kind:  # dict order = rank order of each kind's best group
        for g in by_kind[kind][:top]:
            body.append(_summary_cells(g, per_row=column == "select"))
    lines.append(_table(header, body))
    legend = rule_legend(rows)
    if legend:
        lines.append(_wrap(legend))
    heads = final_heads(rows)
    if heads:
        lines.append(_wrap(heads))
    best = groups[0]
    r0 = best_row(best)
    ev = best.mean_std("eval")
    assert ev is not None
    if len(best.rows) > 1:
        lo, hi = top1_interval([r["metrics"]["eval"] for r in best.rows])
        top1 = f"{mean_std_text(ev)} [{_pct1(lo)}, {_pct1(hi)}] ({repeats_text(best.rows)})"
    else:
        top1 = _with_ci(r0["metrics"]["eval"])
    lines.append(f"best overall: {r0['id'][:10]} {row_label(r0)}\n  eval top-1 {top1}, {_epoch_text(r0)}, "
                 f"oracle {oracle_text(best)}")
    multi = [g for g in groups if len(g.rows) > 1]
    if multi:
        lines.append("seeds (mean ± std):")
        lines.append(_table(("config", "seeds", "holdout top-1", "eval top-1"), [  # holdout first, as above
            (row_label(g.rows[0]), repeats_text(g.rows),
             mean_std_text(g.mean_std("holdout")), mean_std_text(g.mean_std("eval")))
            for g in multi
        ]))
    lines.append(_wrap(f"intervals: [lo, hi] after one row's top-1: {INTERVAL_METHOD} (Wilson score; every row's "
                       "holdout and eval interval is in results.jsonl)"
                       + (f"; after the best overall's mean: {BOOTSTRAP_METHOD}" if len(best.rows) > 1 else "")))
    if honest:
        warning = holdout_warning(groups)
        if warning:
            lines.append(_wrap(warning))
        lines.append(_wrap(f"ranking: {config_ranking(score)}"))
    lines.append(_wrap(oracle_note(solver_choice(rules))))
    return "\n".join(lines)


def repeats_text(rows: Sequence[dict[str, Any]]) -> str:
    """How many runs a mean is over, named for what varied: head-init seeds, few-shot tries, or both.

    Solver rows record their try as ``seed`` too, so a seed equal to the try is not a second axis.
    """
    configs = [r["config"] for r in rows]
    tries = {c.get("try") for c in configs if c.get("try") is not None}
    seeds = {c.get("seed") for c in configs if c.get("seed") is not None and c.get("seed") != c.get("try")}
    if len(tries) > 1 and len(seeds) > 1:
        return f"{plural(len(seeds), 'seed')} × {plural(len(tries), 'try', 'tries')}"
    if len(tries) > 1:
        return plural(len(rows), "try", "tries")
    return plural(len(rows), "seed")


def row_label(row: dict[str, Any]) -> str:
    """:func:`short_label`, with the shots a row really used where a class had fewer rows than asked."""
    text = short_label(row["config"])
    data = row.get("data") or {}
    used, asked = data.get("shots_used"), data.get("shots_asked")
    if used is None or asked is None or used >= asked:
        return text
    honest = f" {used}-shot (asked {asked})"
    return text.replace(f" {asked}-shot", honest) if f" {asked}-shot" in text else text + honest


def seed_summary(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std of eval / holdout top-1 over rows identical except for the seed (>= 2 seeds)."""
    out = []
    for g in group_by_seed(rows):
        if len(g.rows) < 2:
            continue
        out.append({"name": g.name, "label": short_label(g.rows[0]["config"]), "seed_group": g.key,
                    "seeds": len(g.rows), "eval_top1": g.mean_std("eval"), "holdout_top1": g.mean_std("holdout")})
    return out


def short_label(config: dict[str, Any]) -> str:
    return label(config)


def _epoch_text(row: dict[str, Any]) -> str:
    """Which epoch was kept; a solver has none (it is fitted once, its hyperparameter chosen on the holdout)."""
    if row["config"].get("solver") or not row.get("selected_epoch"):
        return "fitted once (solver: no epochs)"
    return f"selected epoch {row['selected_epoch']} of {len(row['curves']['eval_top1'])}"


def _with_ci(m: dict[str, Any] | None) -> str:
    """One row's top-1 with its interval (recorded, or from n and top1 for rows written before intervals)."""
    if m is None:
        return "-"
    if m.get("top1_ci") is None and not m.get("n"):
        return percent(m["top1"])
    lo, hi = top1_interval([m])
    return f"{percent(m['top1'])} [{_pct1(lo)}, {_pct1(hi)}]"


def _pct1(x: float) -> str:
    return f"{100 * x:.1f}"


def _summary_cells(g: Any, *, per_row: bool = False) -> tuple[str, ...]:
    """Short label and numbers of a seed group; the full config is in results.jsonl (the id finds it).

    ``per_row``: the table mixes selection rules, so each selection score is prefixed with its own.
    """
    r = g.rows[0]
    multi = len(g.rows) > 1
    score = mean_std_text(g.mean_std("holdout")) if multi else _with_ci(r["metrics"]["holdout"])
    return (
        r["id"][:10],
        row_label(r),
        f"{r['params']:,}",
        format_flops(r["flops"]),
        f"{row_rule(r)} {score}" if per_row else score,
        mean_std_text(g.mean_std("eval"), std=multi),  # its interval: results.jsonl, and the best's line below
        oracle_text(g),
    )


def _wrap(text: str) -> str:
    """A note of the summary within 100 columns (the terminal it is printed to)."""
    return textwrap.fill(text, width=100, subsequent_indent="  ", break_on_hyphens=False)


def _table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def fmt(row: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()

    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *(fmt(r) for r in body)])
