"""`epcache report RUN_A RUN_B ...`: several runs side by side, and what differs in how they were run.

Two runs' numbers are comparable only under the same protocol; a table of best accuracies alone
hides that run B trained twice as long or on another store. So the comparison lists, next to each
run's best config (the one ranking of :mod:`epcache.probe.results.ranking`, per run), every
protocol setting whose values differ between the runs: the rows' ``protocol`` fingerprints where
they have one (trained heads), the rest of their config, and the stores' provenance.

The comparison is written as ``compare.md``, a name no single-run report uses, into ``--out``
(default ``RUN_A/compare``): it never replaces a run's own ``report.md``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

from epcache._fs.oserror import os_errors
from epcache._text import mean_std_text, short_label
from epcache.errors import ConfigError
from epcache.probe.results.ranking import CONFIG_RANKING, best_row, rank
from epcache.report._files import write_atomically
from epcache.report._tables import ConfigGroup, group_seeds, load_rows

__all__ = ["COMPARE_FILE", "Comparison", "report_runs"]

COMPARE_FILE = "compare.md"
# what tells a run's configs apart rather than how they were trained: never a protocol difference
_HEAD_KEYS = frozenset({"head", "kind", "head_options", "seed", "try", "solver"})


@dataclass(frozen=True)
class Comparison:
    markdown: Path
    runs: tuple[Path, ...]
    differences: tuple[str, ...]  # the protocol settings whose values differ between the runs


def report_runs(rundirs: Sequence[str | PathLike[str]], out: str | PathLike[str] | None = None) -> Comparison:
    """Write ``compare.md`` comparing the run directories; ``out`` defaults to ``RUNS[0]/compare``.

    Raises:
        ConfigError: fewer than two runs, the same run twice, or a path that is not a run directory
            (checked for every path before anything is written).
        DiskFullError, FileSystemError: ``out`` cannot be written.
    """
    runs = [Path(r) for r in rundirs]
    if len(runs) < 2:
        raise ConfigError("comparing runs needs at least two run directories")
    if len({r.resolve() for r in runs}) < len(runs):
        raise ConfigError("the same run directory is given twice; pass each run once")
    rows = [load_rows(r) for r in runs]  # every path checked before a file is written
    dest = Path(out) if out is not None else runs[0] / "compare"
    diffs = protocol_differences(rows)
    md = _markdown(runs, rows, diffs)
    with os_errors(action=f"epcache report into {dest}", resume_hint="Run the same command again once there is room"):
        dest.mkdir(parents=True, exist_ok=True)
        path = write_atomically(dest / COMPARE_FILE, lambda tmp: tmp.write_text(md, encoding="utf-8"))
    return Comparison(markdown=path, runs=tuple(runs), differences=tuple(diffs))


def protocol_settings(row: dict[str, Any]) -> dict[str, Any]:
    """How a row was produced, head aside: its protocol fingerprint, its config, the stores' provenance."""
    out = {k: v for k, v in (row.get("config") or {}).items() if k not in _HEAD_KEYS}
    out.update(row.get("protocol") or {})
    out["store_provenance"] = (row.get("store") or {}).get("provenance")
    out["eval_provenance"] = (row.get("eval_store") or row.get("store") or {}).get("provenance")
    out["backbone"] = (row.get("store") or {}).get("backbone")
    return out


def protocol_differences(runs: Sequence[Sequence[dict[str, Any]]]) -> dict[str, list[str]]:
    """Setting -> each run's values (all its rows', comma-joined) for the settings that differ between runs."""
    per_run: list[dict[str, set[str]]] = []
    for rows in runs:
        values: dict[str, set[str]] = {}
        for r in rows:
            for k, v in protocol_settings(r).items():
                values.setdefault(k, set()).add(_text(v))
        per_run.append(values)
    keys = sorted({k for v in per_run for k in v})
    out: dict[str, list[str]] = {}
    for k in keys:
        cells = [", ".join(sorted(v.get(k, {"(not recorded)"}))) for v in per_run]
        if len(set(cells)) > 1:
            out[k] = cells
    return out


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value[:16] if len(value) == 64 and all(c in "0123456789abcdef" for c in value) else value
    return json.dumps(value, sort_keys=True)


def _markdown(runs: Sequence[Path], rows: Sequence[list[dict[str, Any]]], diffs: dict[str, list[str]]) -> str:
    names = [f"`{r}`" for r in runs]
    lines = [
        f"# Probe runs compared ({len(runs)})",
        "",
        f"- each run's best config: {CONFIG_RANKING} (within that run; eval without a holdout, marked *no holdout*)",
        "- accuracies in %, mean ± std over seeds; mean-per-class: the mean of the per-class eval accuracies",
        "",
        "## Best of each run",
        "",
        "| run | configs | best id | config | holdout top-1 | eval top-1 | eval mean-per-class |",
        "|---|---:|---|---|---:|---:|---:|",
    ]
    for name, rs in zip(names, rows, strict=True):
        groups: list[ConfigGroup] = group_seeds(rs)
        top = rank(groups)[0]
        best = best_row(top)
        hold = top.holdout_score("top1")
        lines.append(
            f"| {name} | {len(rs)} | `{best['id'][:10]}` | {short_label(best['config'])} | "
            f"{'*no holdout*' if hold is None else _acc(hold)} | {_acc(top.eval_score('top1'))} | "
            f"{_acc(top.eval_score('mean-per-class'))} |"
        )
    lines += ["", "## Protocol differences", ""]
    if not diffs:
        lines.append("None: every recorded protocol setting has the same values in every run.")
    else:
        lines += ["Settings whose values differ between the runs (every value a run's rows hold):", "",
                  "| setting | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        lines += [f"| {k} | " + " | ".join(_cell(c) for c in cells) + " |" for k, cells in diffs.items()]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _acc(ms: tuple[float, float] | None) -> str:
    return mean_std_text(ms, std=ms is not None and bool(ms[1]))
