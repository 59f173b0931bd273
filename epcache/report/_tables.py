"""Aggregate results rows: seeds into mean ± std, then best per head kind, per variant, per layer.

Every "best" and every oracle is the probe summary's: :func:`epcache.probe.results.ranking.rank`
and :func:`~epcache.probe.results.ranking.oracle_top1`, on the same rows. Runs without a holdout
fall back to eval top-1 and the report says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from epcache.errors import ConfigError
from epcache.probe.results.ranking import best_per, group_by_seed, oracle_top1, rank
from epcache.probe.results.rows import read_results

__all__ = ["METRICS", "ConfigGroup", "best_by", "check_metric", "group_seeds", "input_label", "load_rows"]

# `--metric` name -> (the key in a row's metrics, the column label); the ranking ignores it
METRICS: dict[str, tuple[str, str]] = {"top1": ("top1", "top-1"), "mean-per-class": ("balanced_acc", "mean-per-class")}


def check_metric(metric: str) -> str:
    """The row key of a ``--metric`` name.

    Raises:
        ConfigError: an unknown name.
    """
    if metric not in METRICS:
        raise ConfigError(f"unknown --metric {metric!r}; choose {' or '.join(METRICS)}")
    return METRICS[metric][0]


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
    key: str = ""  # the seed group (protocol fingerprint minus the seed)

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

    def eval_score(self, metric: str = "top1") -> tuple[float, float]:
        """Seed mean ± std of the eval split's ``metric`` (a :data:`METRICS` name)."""
        key = check_metric(metric)
        return _mean_std([r["metrics"]["eval"][key] for r in self.rows])

    def holdout_score(self, metric: str = "top1") -> tuple[float, float] | None:
        """As :meth:`eval_score` on the holdout; None when a seed has no holdout."""
        key = check_metric(metric)
        hold = [r["metrics"]["holdout"] for r in self.rows]
        return None if any(h is None for h in hold) else _mean_std([h[key] for h in hold])

    @property
    def oracle_top1(self) -> tuple[float, float] | None:
        """:func:`epcache.probe.results.ranking.oracle_top1`: None for solver heads and runs without an eval curve."""
        return oracle_top1(self)

    @property
    def variant(self) -> str:
        """What distinguishes heads in the accuracy-vs-parameters plot: the head spec and its input."""
        return self.head if self.kind != "linear" else f"linear[{self.tokens}]"


def input_label(g: ConfigGroup) -> str:
    """``single layer`` (the best single layer is shown), ``pooled``, or ``mean 8-11`` / ``concat 8-11`` ..."""
    config = g.rows[0]["config"]
    mix = config.get("layer_mix", "none")
    if g.tokens == "pooled" or g.layer < 0:
        return "pooled output"
    if mix == "none":
        return "single layer"
    layers = config.get("layers") or [g.layer]
    return f"{mix} {layers[0]}-{layers[-1]}"


def load_rows(rundir: Path) -> list[dict[str, Any]]:
    """Every results row of a run directory (``results.jsonl`` and sharded ``results.*.jsonl``).

    Raises:
        ConfigError: no results file, or no rows in it.
    """

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
            seen.setdefault(row["id"], _upgrade(row))  # a config resumed in two shards counts once
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
    """Group rows that differ only by the head-init seed (same protocol fingerprint), in first-seen order.

    Rows of runs with other shots, epochs, batch, holdout or data seed are separate groups even
    when their names match: see :mod:`epcache.probe.results.ranking`.
    """
    out = []
    for sg in group_by_seed(rows):
        name, members = sg.name, list(sg.rows)
        c = members[0]["config"]
        out.append(
            ConfigGroup(
                name=name, kind=c["kind"], head=c["head"], layer=int(c["layer"]), tokens=c["tokens"],
                params=int(members[0]["params"]), flops=int(members[0]["flops"]), rows=tuple(members), key=sg.key,
            )
        )
    return out


def best_by(groups: Sequence[ConfigGroup], key: Callable[[ConfigGroup], Hashable]) -> dict[Any, ConfigGroup]:
    """Best group for each value of ``key`` (e.g. ``lambda g: g.kind``), in rank order.

    :func:`epcache.probe.results.ranking.rank` then :func:`~epcache.probe.results.ranking.best_per`,
    so the report's best per kind is the summary's best per kind, ties included.
    """
    return best_per(rank(groups), key)


def _upgrade(row: dict[str, Any]) -> dict[str, Any]:
    """Rows of schema /1 numbered epochs from 0: renumber them from 1 like every newer row."""
    if str(row.get("schema", "")).endswith("/1"):
        row = {**row, "selected_epoch": row["selected_epoch"] + 1,
               "oracle": {**row["oracle"], "epoch": row["oracle"]["epoch"] + 1},
               "final": {**row["final"], "epoch": row["final"]["epoch"] + 1}}
    return row


def _mean_std(xs: Sequence[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, 0.0
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
