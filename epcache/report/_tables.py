"""Aggregate results rows: seeds into mean ± std, then best per head kind, per variant, per layer.

Selection follows the probe stage's honest protocol: a group of configs is ranked by its
holdout top-1 (mean over seeds); the eval split only supplies the reported number. Runs
without a holdout fall back to eval top-1 and the report says so.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from epcache.errors import ConfigError

__all__ = ["ConfigGroup", "best_by", "group_seeds", "load_rows"]


@dataclass(frozen=True)
class ConfigGroup:
    """Configs identical except for the seed."""

    name: str  # the config name without " seed=..."
    kind: str  # head kind (linear, ep, mhca, ...)
    head: str  # head spec name, e.g. "ep(queries=8,d_out=1)"
    layer: int
    tokens: str
    params: int
    flops: int
    rows: tuple[dict[str, Any], ...]

    @property
    def seeds(self) -> int:
        return len(self.rows)

    @property
    def eval_top1(self) -> tuple[float, float]:
        return _mean_std([r["metrics"]["eval"]["top1"] for r in self.rows])

    @property
    def holdout_top1(self) -> tuple[float, float] | None:
        hold = [r["metrics"]["holdout"] for r in self.rows]
        if any(h is None for h in hold):
            return None
        return _mean_std([h["top1"] for h in hold])

    @property
    def oracle_top1(self) -> tuple[float, float]:
        return _mean_std([r["oracle"]["eval_top1"] for r in self.rows])

    @property
    def variant(self) -> str:
        """What distinguishes heads in the accuracy-vs-parameters plot: the head spec and its input."""
        return self.head if self.kind != "linear" else f"linear[{self.tokens}]"

    def score(self) -> float:
        """Selection score: holdout top-1 mean, or eval top-1 when the sweep had no holdout."""
        hold = self.holdout_top1
        return hold[0] if hold is not None else self.eval_top1[0]


def load_rows(rundir: Path) -> list[dict[str, Any]]:
    """Every results row of a run directory (``results.jsonl`` and sharded ``results.*.jsonl``).

    Raises:
        ConfigError: no results file, or no rows in it.
    """
    from epcache.probe.results import read_results

    files = sorted(rundir.glob("results*.jsonl"))
    if _is_store(rundir):
        raise ConfigError(
            f"{rundir} is a feature store, not a run directory: train probes from it first with "
            f"`epcache probe --store {rundir} --out RUNDIR`, then run `epcache report RUNDIR`"
        )
    if not rundir.is_dir() or not files:
        raise ConfigError(
            f"{rundir} holds no results.jsonl; pass the RUNDIR of `epcache probe --store STORE --out RUNDIR`"
        )
    seen: dict[str, dict[str, Any]] = {}
    for f in files:
        for row in read_results(f):
            seen.setdefault(row["id"], row)  # a config resumed in two shards counts once
    if not seen:
        raise ConfigError(f"{rundir}: results files are empty; the sweep has not finished a config yet")
    return list(seen.values())


def _is_store(path: Path) -> bool:
    """A zarr store (zarr.json with epcache attributes) or an HDF5 file: what `epcache report` cannot read."""
    if path.is_file():
        return path.suffix.lower() in (".h5", ".hdf5")
    doc = path / "zarr.json"
    try:
        return doc.is_file() and '"epcache"' in doc.read_text(encoding="utf-8", errors="replace")[:100_000]
    except OSError:
        return False


def group_seeds(rows: Iterable[dict[str, Any]]) -> list[ConfigGroup]:
    """Group rows that differ only by seed, in first-seen order."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[r["name"].rsplit(" seed=", 1)[0]].append(r)
    out = []
    for name, members in groups.items():
        c = members[0]["config"]
        out.append(
            ConfigGroup(
                name=name, kind=c["kind"], head=c["head"], layer=int(c["layer"]), tokens=c["tokens"],
                params=int(members[0]["params"]), flops=int(members[0]["flops"]), rows=tuple(members),
            )
        )
    return out


def best_by(groups: Sequence[ConfigGroup], key: Callable[[ConfigGroup], Hashable]) -> dict[Any, ConfigGroup]:
    """Best group (by :meth:`ConfigGroup.score`) for each value of ``key``, e.g. ``lambda g: g.kind``."""
    best: dict[Any, ConfigGroup] = {}
    for g in groups:
        k = key(g)
        if k not in best or g.score() > best[k].score():
            best[k] = g
    return best


def _mean_std(xs: Sequence[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, 0.0
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
