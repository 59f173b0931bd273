"""The selection rule the rows ran, in the summary's words: its column, legend, final heads and overlap warning.

The summary must not call a pooled cross-validation score a "holdout" nor suggest a rule that
already ran, so every sentence here is generated from the rows: a row's rule is its recorded
``protocol.selection_rule`` (``holdout``, ``cvK``, ``none``); rows that record none (solver heads,
rows written before cross-validation) selected on a holdout when they have a holdout metric. The
selection score's ``n`` is the holdout's size, or under cv the training rows (each scored once).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from epcache._text import plural
from epcache.probe.data.folds import CV_BELOW
from epcache.probe.results.intervals import intervals_overlap, wilson
from epcache.probe.results.ranking import SeedGroup, best_row

__all__ = ["CV_SUGGEST_BELOW", "final_heads", "holdout_warning", "row_rule", "rule_header", "rule_legend",
           "score_name", "solver_choice"]

# a holdout warning suggests --select cv5 only below this many training rows (train + holdout): cv5 trains
# every config 5 times on 4/5 of them plus the refit, which on cached tokens stays cheap up to about ten times
# the size where "auto" starts choosing it
CV_SUGGEST_BELOW = 10 * CV_BELOW


def row_rule(row: dict[str, Any]) -> str:
    """The rule that selected a row: ``holdout``, ``cvK`` or ``none`` (no selection score)."""
    rule = (row.get("protocol") or {}).get("selection_rule")
    if rule in ("holdout", "none") or str(rule).startswith("cv"):
        return str(rule)
    return "holdout" if row["metrics"].get("holdout") is not None else "none"


def rules_of(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The distinct rules of ``rows`` in first-seen order."""
    return list(dict.fromkeys(row_rule(r) for r in rows))


def rule_header(rules: Sequence[str]) -> str:
    """The selection column's header: the one rule that ran (``holdout``, ``cv5``), or ``select`` when rows differ."""
    scored = [r for r in rules if r != "none"]
    if len(scored) > 1:
        return "select"
    return scored[0] if scored else "holdout"


def score_name(rules: Sequence[str]) -> str:
    """The score the ranking read, in its sentence: ``holdout``, ``cv5`` or ``selection`` (mixed rules)."""
    header = rule_header(rules)
    return "selection" if header == "select" else header


def solver_choice(rules: Sequence[str]) -> str:
    """How a solver's hyperparameter was chosen, for the oracle legend."""
    return "on the holdout" if rule_header(rules) == "holdout" else "by the selection rule"


def rule_legend(rows: Sequence[dict[str, Any]]) -> str | None:
    """The legend of the selection column (None when every row was held out: the header says it all)."""
    rules = rules_of(rows)
    header = rule_header(rules)
    if header == "holdout":
        return None
    parts = []
    for rule in rules:
        sizes = sorted({int(r["metrics"]["holdout"]["n"]) for r in rows
                        if row_rule(r) == rule and (r["metrics"].get("holdout") or {}).get("n")})
        n = "" if not sizes else str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]} to {sizes[-1]}"
        if rule.startswith("cv"):
            text = f"stratified {rule[2:]}-fold cross-validation over {n or 'the'} training rows, pooled"
        elif rule == "holdout":
            text = f"{n or 'the'} held-out training rows"
        else:
            text = "no selection: the last epoch"
        parts.append(text if header != "select" else f"{rule} = {text}")
    if header == "select":
        return "select: per row, " + "; ".join(parts)
    return f"{header}: " + "; ".join(parts)


def final_heads(rows: Sequence[dict[str, Any]]) -> str | None:
    """Whether the final heads were refit and on how many rows, from the rows' ``refit`` sections."""
    parts: dict[str, None] = {}
    refit = [r for r in rows if isinstance(r.get("refit"), dict) and r["refit"].get("enabled")]
    refit_sizes = sorted({int(r["refit"]["train_size"]) for r in refit})
    if refit_sizes:
        n = str(refit_sizes[0]) if len(refit_sizes) == 1 else f"{refit_sizes[0]} to {refit_sizes[-1]}"
        held = " (train + holdout)" if any(row_rule(r) == "holdout" for r in refit) else ""
        parts[f"refit on all {n} training rows{held} for each config's selected steps"] = None
    for r in rows:
        refit = r.get("refit")
        if isinstance(refit, dict) and not refit.get("enabled"):
            parts[f"the selection model ({refit.get('reason', 'no refit')})"] = None
    solver_sizes = sorted({int(r["data"]["num_refit"]) for r in rows
                           if r["config"].get("solver") and (r.get("data") or {}).get("num_refit")})
    if solver_sizes:
        n = str(solver_sizes[0]) if len(solver_sizes) == 1 else f"{solver_sizes[0]} to {solver_sizes[-1]}"
        parts[f"solver heads fitted on {n} rows at their chosen hyperparameter"] = None
    return "final heads: " + "; ".join(parts) if parts else None


def holdout_warning(ranked: Sequence[SeedGroup]) -> str | None:
    """The warning when the best group's selection interval overlaps the next-ranked groups' (None when not).

    A seed group's interval is the Wilson interval of its seed-mean top-1 over the selection's
    images: its seeds are scored on the same images, so they add no samples. Rows written before
    intervals were recorded carry ``n`` and ``top1``, which is all this needs. The advice speaks the
    best's rule: under cv, more data cannot be held out, so more seeds or a tie; under a holdout, a
    larger one, or cv5 where the training set is small enough and no row already ran cv.
    """
    if len(ranked) < 2:
        return None
    cis = [_group_ci(g) for g in ranked]
    if cis[0] is None:
        return None
    overlapping = sum(1 for ci in cis[1:] if ci is not None and intervals_overlap(cis[0], ci))
    if not overlapping:
        return None
    best = best_row(ranked[0])
    hold = best["metrics"]["holdout"]
    per_class = [int(n) for n in hold.get("per_class_n") or [] if n]
    counts = ""
    if per_class:
        lo, hi = min(per_class), max(per_class)
        counts = f", {lo} per class" if lo == hi else f", {lo} to {hi} per class"
    top = f"the top {overlapping + 1} configs"
    rule = row_rule(best)
    if rule.startswith("cv"):
        return (f"warning: the {rule} scores ({plural(int(hold['n']), 'training row')}, each scored once by the fold "
                f"model that did not train on it{counts}) cannot separate {top}: their 95% intervals overlap the "
                "best's, so their order is mostly chance; more seeds (--seeds) average out the head-init noise, else "
                "treat them as tied")
    rules = {row_rule(r) for g in ranked for r in g.rows}
    size = _training_size(best)
    cv_cheap = not any(r.startswith("cv") for r in rules) and (size is None or size < CV_SUGGEST_BELOW)
    return (f"warning: the holdout ({hold['n']} images{counts}) cannot separate {top}: their 95% holdout "
            "intervals overlap the best's, so their order is mostly chance; more holdout data (--holdout)"
            + (" or --select cv5" if cv_cheap else "") + " would")


def _training_size(row: dict[str, Any]) -> int | None:
    """The rows the selection drew from (train + holdout), None where the row does not record them."""
    p, d = row.get("protocol") or {}, row.get("data") or {}
    if p.get("train_size") is not None:
        return int(p["train_size"]) + int(p.get("holdout_size") or 0)
    if d.get("num_train") is not None:
        return int(d["num_train"]) + int(d.get("num_holdout") or 0)
    return None


def _group_ci(g: SeedGroup) -> tuple[float, float] | None:
    hold = [r["metrics"]["holdout"] for r in g.rows]
    if any(m is None or not m.get("n") for m in hold):
        return None
    n = int(hold[0]["n"])
    return wilson(round(g.mean("holdout") * n), n)
