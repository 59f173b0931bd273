"""Checkpoint curves: probe accuracy over pretraining steps, one point per store of a checkpoint series.

A k-NN number that does not reproduce needs a curve to show where training went wrong. Each run
directory holds the sweep over one checkpoint's store (``epcache probe --store 'OUT/*.zarr'``
writes RUNDIR/<store stem>/); a point is that run's best config of one head family, chosen by THE
one ranking (:mod:`epcache.probe.results.ranking`), with the eval top-1 and its 95% interval
(:mod:`epcache.probe.results.intervals`). The best checkpoint is chosen the same honest way: by
the ranking's holdout key across the points, never by their eval top-1 (that would select on the
numbers being reported).

A run's step is the store's ``extra.checkpoint.step`` (cache_layout.md §2.1); a store that cannot
be opened where the run recorded it falls back to the extractor's file-name rule (the last integer
in the store's stem, which is the checkpoint's stem).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from epcache.board.keys import head_family
from epcache.errors import ConfigError, EpcacheError
from epcache.probe.results.intervals import top1_interval
from epcache.probe.results.ranking import SeedGroup, best_per, best_row, rank_key, rank_rows

__all__ = ["CheckpointCurve", "CurvePoint", "FamilyCurve", "checkpoint_curve", "write_checkpoint_figure"]

_LAST_INT = re.compile(r"(\d+)(?!.*\d)")


@dataclass(frozen=True)
class CurvePoint:
    """One checkpoint's best config of one head family."""

    step: int
    store: str  # the store path as the run recorded it
    run: str  # the run directory
    config: str  # the seed group's name (seed removed)
    seeds: int
    eval_top1: float
    eval_lo: float
    eval_hi: float
    holdout_top1: float | None  # the selection score (holdout or cross-validation), None without one
    rank_key: tuple[Any, ...] = field(repr=False, compare=False)  # the ranking's key of the group, holdout first


@dataclass(frozen=True)
class FamilyCurve:
    """One head family's points in step order and its best checkpoint by the holdout ranking."""

    family: str
    points: tuple[CurvePoint, ...]
    best: CurvePoint | None  # None when a point has no holdout score: eval must not choose


@dataclass(frozen=True)
class CheckpointCurve:
    """Every head family's curve over one checkpoint series."""

    families: Mapping[str, FamilyCurve]

    def format_text(self) -> str:
        """One line per point, the best checkpoint starred (what the board prints beside the figure)."""
        lines = []
        for fam in self.families.values():
            lines.append(f"{fam.family}:" + ("" if fam.best else "  (no holdout score: no best checkpoint marked)"))
            for p in fam.points:
                star = " *best (holdout)" if fam.best is p else ""
                lines.append(
                    f"  step {p.step:>9}  eval top-1 {100 * p.eval_top1:6.2f} [{100 * p.eval_lo:.1f}, "
                    f"{100 * p.eval_hi:.1f}]  {p.config}{star}"
                )
        return "\n".join(lines)


def checkpoint_curve(run_dirs: Iterable[str | Path]) -> CheckpointCurve:
    """The curve of a checkpoint series' run directories (one store each; any order).

    Raises:
        ConfigError: no run directory, one without results, runs of one store twice or of two
            stores at one step, or a store whose step cannot be found.
    """
    from epcache.probe.results.rows import read_results  # lazy: keeps torch out of the board's import

    points: dict[str, list[CurvePoint]] = {}
    seen: dict[int, str] = {}
    dirs = [Path(d) for d in run_dirs]
    if not dirs:
        raise ConfigError("a checkpoint curve needs the run directories of a series (one per checkpoint store)")
    for run in dirs:
        rows = read_results(run / "results.jsonl")
        if not rows:
            raise ConfigError(f"{run} holds no results.jsonl rows; probe its store first (epcache probe --out {run})")
        stores = sorted({str(r["store"]["path"]) for r in rows})
        if len(stores) != 1:
            raise ConfigError(f"{run} holds rows of {len(stores)} stores ({', '.join(stores)}); a checkpoint "
                              "curve takes one run directory per checkpoint store")
        step = store_step(stores[0], run)
        if step in seen:
            raise ConfigError(f"{seen[step]} and {run} are both at step {step}; pass each checkpoint's run once")
        seen[step] = str(run)
        ranked = rank_rows(rows)  # ranked over every family, so its honesty never depends on the subset
        for family, group in best_per(ranked, lambda g: head_family(best_row(g))).items():
            points.setdefault(family, []).append(_point(group, step, stores[0], run))
    families = {name: _family(name, pts) for name, pts in sorted(points.items())}
    return CheckpointCurve(families)


def store_step(store: str, run: Path | None = None) -> int:
    """A store's training step: its ``extra.checkpoint.step``, else the last integer of its stem.

    Raises:
        ConfigError: neither gives a step.
    """
    from epcache.store import open_store  # lazy: keeps zarr and h5py out of the board's import

    for where in (Path(store), *((run.parent / store,) if run is not None else ())):
        try:
            with open_store(str(where)) as s:
                step = (s.meta.extra.get("checkpoint") or {}).get("step")
        except (EpcacheError, OSError):
            continue
        if step is not None:
            return int(step)
    m = _LAST_INT.search(Path(store.rstrip("/")).stem)
    if m is None:
        raise ConfigError(
            f"the store {store} records no checkpoint step (extra.checkpoint) and its name holds no integer; "
            "extract the series with `epcache extract --weights 'ckpts/*.pth'` (which records each step)"
        )
    return int(m.group(1))


def _point(group: SeedGroup, step: int, store: str, run: Path) -> CurvePoint:
    top1 = group.mean("eval")
    ci = top1_interval([r["metrics"]["eval"] for r in group.rows])
    honest = all(r["metrics"].get("holdout") is not None for r in group.rows)
    return CurvePoint(
        step=step,
        store=store,
        run=str(run),
        config=group.name,
        seeds=len(group.rows),
        eval_top1=top1,
        eval_lo=float(ci[0]),
        eval_hi=float(ci[1]),
        holdout_top1=group.mean("holdout") if honest else None,
        rank_key=rank_key(group, honest=True) if honest else (),
    )


def _family(name: str, points: Sequence[CurvePoint]) -> FamilyCurve:
    ordered = tuple(sorted(points, key=lambda p: p.step))
    if any(p.holdout_top1 is None for p in ordered):
        return FamilyCurve(name, ordered, None)
    # the ranking's key (holdout top-1, loss, balanced accuracy, params, name) over the points; ties: earlier step
    best = min(ordered, key=lambda p: (*p.rank_key[:3], p.step))
    return FamilyCurve(name, ordered, best)


def write_checkpoint_figure(curve: CheckpointCurve, path: str | Path, *, title: str | None = None) -> Path:
    """Eval top-1 (with its 95% interval) over training steps, one line per head family, best marked.

    Raises:
        ConfigError: matplotlib is not installed.
    """
    try:
        import matplotlib  # lazy: matplotlib is the optional [plot] extra

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # lazy: matplotlib is the optional [plot] extra
    except ImportError:
        raise ConfigError("the checkpoint figure needs matplotlib: pip install 'epcache[plot]'") from None
    if any(not math.isfinite(p.eval_top1) for f in curve.families.values() for p in f.points):
        raise ConfigError("a checkpoint point has no eval top-1; re-run its probe")
    out = Path(path)
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    try:
        for fam in curve.families.values():
            xs = [p.step for p in fam.points]
            ys = [100 * p.eval_top1 for p in fam.points]
            err = [[100 * (p.eval_top1 - p.eval_lo) for p in fam.points],
                   [100 * (p.eval_hi - p.eval_top1) for p in fam.points]]
            line = ax.errorbar(xs, ys, yerr=err, marker="o", ms=4, capsize=3, label=fam.family)
            if fam.best is not None:
                ax.plot([fam.best.step], [100 * fam.best.eval_top1], marker="*", ms=14, ls="none",
                        color=line[0].get_color(), markeredgecolor="black")
        ax.plot([], [], marker="*", ms=10, ls="none", color="grey", markeredgecolor="black",
                label="best checkpoint (holdout)")
        ax.set_xlabel("training step")
        ax.set_ylabel("eval top-1 (%), 95% interval")
        ax.set_title(title or "probe accuracy over pretraining checkpoints")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, bbox_inches="tight")
    finally:
        plt.close(fig)
    return out
