"""One ranking of configs, shared by the probe summary and the report, so the two always agree.

Rows are first grouped into seed groups: rows identical in everything but the head-init seed,
i.e. the same head, input, optimisation point AND the same protocol (recipe, length, batch,
holdout, shots, data seed, store). A row's ``seed_group`` is the hash of exactly that, so rows
from runs with other shots, epochs or data seeds are never averaged as if they were seeds.

Groups are ranked by the holdout (the honest selection): seed-mean holdout top-1, then seed-mean
holdout balanced accuracy, then fewer parameters, then name and group key, so ties are broken
the same way everywhere. Without a holdout the eval split is used, and callers must say so.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["SeedGroup", "group_by_seed", "rank", "rank_key", "seed_group_key"]


def seed_group_key(row: dict[str, Any]) -> str:
    """The row's seed group; rows written before fingerprints get one from their config minus the seed."""
    key = row.get("seed_group")
    if key:
        return str(key)
    config = {k: v for k, v in row.get("config", {}).items() if k not in ("seed", "try")}  # seeds, few-shot draws
    store = row.get("store", {}).get("provenance")
    doc = {"config": config, "store": store, "name": row["name"].rsplit(" seed=", 1)[0]}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class SeedGroup:
    """Rows that differ only by the head-init seed."""

    key: str
    rows: tuple[dict[str, Any], ...]

    @property
    def name(self) -> str:
        return str(self.rows[0]["name"]).rsplit(" seed=", 1)[0]

    @property
    def honest(self) -> bool:
        return all(r["metrics"]["holdout"] is not None for r in self.rows)

    def mean(self, split: str, metric: str = "top1") -> float:
        return _mean([float(r["metrics"][split][metric]) for r in self.rows])

    def mean_std(self, split: str, metric: str = "top1") -> tuple[float, float] | None:
        if any(r["metrics"][split] is None for r in self.rows):
            return None
        xs = [float(r["metrics"][split][metric]) for r in self.rows]
        m = _mean(xs)
        sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
        return m, sd


def group_by_seed(rows: Iterable[dict[str, Any]]) -> list[SeedGroup]:
    """Seed groups in first-seen order."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[seed_group_key(r)].append(r)
    return [SeedGroup(k, tuple(v)) for k, v in groups.items()]


def rank_key(group: SeedGroup, *, honest: bool | None = None) -> tuple[Any, ...]:
    """Sort key, smallest first = best: (-top-1, loss, -balanced accuracy, params, name, key).

    The mean cross-entropy breaks top-1 ties (frequent on small holdouts) as it does for the
    epoch selection; rows without a recorded loss sort after those with one.

    ``honest`` (default: whether the group has a holdout) picks the holdout or the eval split.
    """
    use_holdout = group.honest if honest is None else honest
    split = "holdout" if use_holdout else "eval"
    top1 = group.mean(split, "top1")
    bal = group.mean(split, "balanced_acc")
    losses = [r["metrics"][split].get("loss") for r in group.rows]
    loss = _mean([float(x) for x in losses]) if all(x is not None for x in losses) else math.inf
    top1 = top1 if math.isfinite(top1) else -math.inf
    bal = bal if math.isfinite(bal) else -math.inf
    loss = loss if math.isfinite(loss) else math.inf
    return (-top1, loss, -bal, int(group.rows[0].get("params", 0)), group.name, group.key)


def rank(groups: Sequence[SeedGroup]) -> list[SeedGroup]:
    """Groups best first; the holdout decides when every group has one, else (dishonestly) eval."""
    honest = all(g.honest for g in groups)
    return sorted(groups, key=lambda g: rank_key(g, honest=honest))


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan
