"""The sweep repeated over data seeds: each repeat's own selection, and the spread of what it selected.

eva-style reports quote one number per task: the mean ± std over runs with different data seeds of
the eval top-1 of the config each run selected by its own rule. Averaging per config instead, or
picking the config with the best mean afterwards, would let the eval split choose; so every repeat is
ranked alone (:func:`~epcache.probe.results.ranking.rank_rows`, the ranking every surface uses)
and only the selected numbers are pooled.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from epcache._text import plural
from epcache.probe.results.ranking import best_row, rank_rows

__all__ = ["RepeatSummary", "summarize_repeats"]

STD_RULE = "sample std (n - 1)"  # as the seed means of the summary


@dataclass(frozen=True)
class RepeatSummary:
    """Each repeat's selected config and the mean ± std of their eval top-1 (fractions, not %)."""

    data_seeds: tuple[int, ...]  # repeat order
    selected: tuple[dict[str, Any], ...]  # each repeat's selected row (its best seed group's first seed)
    eval_top1: tuple[float, ...]  # each repeat's selected seed group's mean eval top-1
    honest: bool  # every repeat selected on its holdout or folds (else on eval, and the text says so)

    @property
    def mean(self) -> float:
        return sum(self.eval_top1) / len(self.eval_top1)

    @property
    def std(self) -> float:
        """:data:`STD_RULE`; 0 for a single repeat."""
        n = len(self.eval_top1)
        return math.sqrt(sum((x - self.mean) ** 2 for x in self.eval_top1) / (n - 1)) if n > 1 else 0.0

    def text(self) -> str:
        """The summary's block: one line per repeat, then the mean ± std."""
        rule = "its own selection" if self.honest else "EVAL top-1 (no holdout: not an honest selection)"
        lines = [f"{plural(len(self.data_seeds), 'repeat')} over data seeds {', '.join(map(str, self.data_seeds))}; "
                 f"each ranked by {rule}; the selected config's eval top-1 in %:"]
        for seed, row, top1 in zip(self.data_seeds, self.selected, self.eval_top1, strict=True):
            name = str(row["name"]).rsplit(" seed=", 1)[0]
            lines.append(f"  data_seed {seed}: {100 * top1:6.2f}  {row['id']}  {name}")
        lines.append(f"selected eval top-1 over {plural(len(self.data_seeds), 'repeat')}: {100 * self.mean:.2f} ± "
                     f"{100 * self.std:.2f} (mean ± {STD_RULE} of each repeat's selected config)")
        return "\n".join(lines)


def summarize_repeats(runs: Sequence[Sequence[dict[str, Any]]], data_seeds: Sequence[int]) -> RepeatSummary:
    """Rank each repeat's rows alone and keep its selected config.

    Raises:
        ValueError: a repeat without rows (the caller runs every repeat before summarising).
    """
    selected, top1, honest = [], [], True
    for rows in runs:
        if not rows:
            raise ValueError("a repeat without rows cannot be summarised")
        best = rank_rows(rows)[0]
        honest &= best.honest
        selected.append(best_row(best))
        top1.append(best.mean("eval"))
    return RepeatSummary(tuple(data_seeds), tuple(selected), tuple(top1), honest)
