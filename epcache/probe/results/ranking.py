"""One ranking of configs and one oracle, shared by every surface that says "best" or "oracle".

Rows are first grouped into seed groups: rows identical in everything but the head-init seed
(or the few-shot try), i.e. the same head, input, optimisation point AND the same protocol
(recipe, length, batch, holdout, shots, data seed, store). A row's ``seed_group`` is the hash of
exactly that, so rows from runs with other shots, epochs or data seeds are never averaged as if
they were seeds.

The rules that run are written once here, each next to the text that describes it, so a row's
recorded ``protocol.selection``, the summary and the report cannot say something else:

- :data:`EPOCH_SELECTION` / :func:`epoch_improves`: which epoch of one config is kept;
- :data:`CONFIG_RANKING` / :func:`rank_key` / :func:`rank`: which seed group is best;
- :data:`ORACLE_RULE` / :func:`oracle_top1` / :func:`oracle_text`: the paper's "best epoch on val".
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from epcache._text import mean_std_text

__all__ = [
    "CONFIG_RANKING",
    "DENSE_RANKING",
    "EPOCH_SELECTION",
    "NO_HOLDOUT_SELECTION",
    "ORACLE_NOTE",
    "ORACLE_RULE",
    "SeedGroup",
    "best_per",
    "best_row",
    "config_ranking",
    "epoch_improves",
    "epoch_selection",
    "group_by_seed",
    "is_dense",
    "oracle_note",
    "oracle_text",
    "oracle_top1",
    "rank",
    "rank_key",
    "rank_rows",
    "seed_group_key",
]

EPOCH_SELECTION = "holdout top-1; ties: lower holdout cross-entropy, then the earlier epoch"
NO_HOLDOUT_SELECTION = "last epoch (no holdout)"
ORACLE_RULE = "mean ± std over seeds (few-shot tries) of each seed's max-over-epochs eval top-1"


def config_ranking(score: str = "holdout") -> str:
    """:data:`CONFIG_RANKING` naming the split the selection scored (``holdout``, ``cv5``, ``selection``)."""
    return (f"seed-mean {score} top-1; ties: lower seed-mean {score} cross-entropy, higher balanced "
            "accuracy, fewer parameters, then name")


def oracle_note(chosen: str = "on the holdout") -> str:
    """:data:`ORACLE_NOTE` saying how solver hyperparameters were chosen (the rule that ran, in the summary)."""
    return (f"oracle: {ORACLE_RULE} (the paper's protocol, never used to select); '-': solver heads "
            f"(no epochs: their hyperparameter is chosen {chosen}) or no per-epoch eval curve")


CONFIG_RANKING = config_ranking()
DENSE_RANKING = "holdout mIoU (whole train images held out); ties: name"
ORACLE_NOTE = oracle_note()


def epoch_selection(has_holdout: bool) -> str:
    """The text recorded as ``protocol.selection``: the rule :func:`epoch_improves` applies."""
    return EPOCH_SELECTION if has_holdout else NO_HOLDOUT_SELECTION


def epoch_improves(top1: float, loss: float, best_top1: float, best_loss: float) -> bool:
    """Whether an epoch replaces the kept one (:data:`EPOCH_SELECTION`).

    Strict in both parts: a full tie keeps the earlier epoch. Small holdouts tie often on top-1
    (4 held-out samples are 100% right after a few steps), so the cross-entropy decides. Without a
    holdout the trainer scores an epoch by its number, so every epoch improves and the last is kept.
    """
    return top1 > best_top1 or (top1 == best_top1 and loss < best_loss)


def seed_group_key(row: dict[str, Any]) -> str:
    """The row's seed group; rows written before fingerprints get one from their config minus the seed."""
    key = row.get("seed_group")
    if key:
        return str(key)
    config = {k: v for k, v in row.get("config", {}).items() if k not in ("seed", "try")}  # seeds, few-shot draws
    store = row.get("store", {}).get("provenance")
    doc = {"config": config, "store": store, "name": row["name"].rsplit(" seed=", 1)[0]}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Grouped(Protocol):
    """Anything holding one seed group's rows (:class:`SeedGroup`, the report's ``ConfigGroup``)."""

    @property
    def key(self) -> str: ...

    @property
    def rows(self) -> tuple[dict[str, Any], ...]: ...


G = TypeVar("G", bound=Grouped)


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
        return _honest(self)

    def mean(self, split: str, metric: str = "top1") -> float:
        return _mean([float(r["metrics"][split][metric]) for r in self.rows])

    def mean_std(self, split: str, metric: str = "top1") -> tuple[float, float] | None:
        if any(r["metrics"][split] is None for r in self.rows):
            return None
        return _mean_std([float(r["metrics"][split][metric]) for r in self.rows])


def group_by_seed(rows: Iterable[dict[str, Any]]) -> list[SeedGroup]:
    """Seed groups in first-seen order."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[seed_group_key(r)].append(r)
    return [SeedGroup(k, tuple(v)) for k, v in groups.items()]


def rank_key(group: Grouped, *, honest: bool | None = None) -> tuple[Any, ...]:
    """Sort key, smallest first = best (:data:`CONFIG_RANKING`): (-top-1, loss, -balanced accuracy, params, name, key).

    Rows without a recorded loss sort after those with one. ``honest`` (default: whether the group
    has a holdout) picks the holdout or the eval split.
    """
    use_holdout = _honest(group) if honest is None else honest
    split = "holdout" if use_holdout else "eval"
    metrics = [r["metrics"][split] for r in group.rows]
    if is_dense(group.rows[0]):  # DENSE_RANKING: holdout mIoU only (a dense row always has one)
        miou = _mean([float(m["miou"]) for m in metrics])
        miou = miou if math.isfinite(miou) else -math.inf
        return (-miou, 0.0, 0.0, 0, str(group.rows[0]["name"]), group.key)
    top1 = _mean([float(m["top1"]) for m in metrics])
    bal = _mean([float(m["balanced_acc"]) for m in metrics])
    losses = [m.get("loss") for m in metrics]
    loss = _mean([float(x) for x in losses]) if all(x is not None for x in losses) else math.inf
    top1 = top1 if math.isfinite(top1) else -math.inf
    bal = bal if math.isfinite(bal) else -math.inf
    loss = loss if math.isfinite(loss) else math.inf
    name = str(group.rows[0]["name"]).rsplit(" seed=", 1)[0]
    return (-top1, loss, -bal, int(group.rows[0].get("params", 0)), name, group.key)


def is_dense(row: dict[str, Any]) -> bool:
    """A dense head's row (``task: "dense"``): scored by mIoU, ranked among dense rows only."""
    return row.get("task") == "dense"


def rank(groups: Sequence[G]) -> list[G]:
    """Groups best first: the one ranking behind every "best" of the summary, report and CLI.

    Classification groups come first, by :data:`CONFIG_RANKING`; dense groups follow, ranked among
    themselves by :data:`DENSE_RANKING` (a top-1 and an mIoU are never compared).

    The holdout decides when every group has one, else (dishonestly, and callers say so) eval.
    Callers that want the best of a subset (attentive heads, one kind) rank everything and filter,
    so the honesty of the ranking never depends on the subset.
    """
    honest = all(_honest(g) for g in groups if not is_dense(g.rows[0]))
    return sorted(groups, key=lambda g: (is_dense(g.rows[0]), rank_key(g, honest=honest or is_dense(g.rows[0]))))


def rank_rows(rows: Iterable[dict[str, Any]]) -> list[SeedGroup]:
    """Seed groups of ``rows``, best first (:func:`rank` of :func:`group_by_seed`)."""
    return rank(group_by_seed(rows))


def best_per(ranked: Sequence[G], key: Callable[[G], Hashable]) -> dict[Any, G]:
    """The first (best) group for each value of ``key``, in rank order; ``ranked`` comes from :func:`rank`."""
    best: dict[Any, G] = {}
    for g in ranked:
        best.setdefault(key(g), g)
    return best


def best_row(group: Grouped) -> dict[str, Any]:
    """The row that stands for a group (its id in every table, its head for ``--config best``): the first seed."""
    return group.rows[0]


def oracle_top1(group: Grouped) -> tuple[float, float] | None:
    """:data:`ORACLE_RULE`; None for solver rows (no epochs) and runs that scored eval only at the end."""
    xs = []
    for r in group.rows:
        oracle = r.get("oracle") or {}
        if not oracle.get("epoch") or oracle.get("eval_top1") is None:  # solver: epoch 0; no curve: None
            return None
        xs.append(float(oracle["eval_top1"]))
    return _mean_std(xs) if xs else None


def oracle_text(group: Grouped) -> str:
    """The oracle as every surface prints it: ``mean ± std`` over several seeds, the number for one, else ``-``."""
    return mean_std_text(oracle_top1(group), std=len(group.rows) > 1)


def _honest(group: Grouped) -> bool:
    return all(r["metrics"]["holdout"] is not None for r in group.rows)


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def _mean_std(xs: Sequence[float]) -> tuple[float, float]:
    m = _mean(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, sd
