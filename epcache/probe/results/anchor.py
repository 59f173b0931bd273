"""``epcache probe --check-anchor FILE``: refuse a sweep whose known configs miss their published numbers.

A wrong evaluation (another class order, another store, a changed protocol) produces rows that look
like any other; once written they reach boards and papers. An anchor file (a ``board.csv``, or any
CSV with the columns of :data:`ANCHOR_COLUMNS` and an optional ``tolerance`` in points) names
configs whose eval top-1 is known. The sweep's configs that belong to an anchor are the ones with
the same store provenance, the same protocol key (:func:`epcache.board.keys.protocol_key` of the
row) and the same config name without its seed.

Design, the cheapest correct order: no pre-flight run and nothing trained twice. The run trains
the input groups (and fits the solver configs) holding an anchored config FIRST, with their rows
and heads held in memory instead of written; their rows are then compared here (:func:`check_rows`).
A miss beyond the tolerance raises :class:`AnchorMismatchError` before a single row reaches
``results.jsonl``; a pass writes the held rows and heads and the sweep goes on in its usual order.
Rows a run directory already holds are compared as they are, without retraining. The protocol key
is read from the produced rows rather than predicted, so the comparison uses exactly what the
board writer will read; the candidates are chosen by store provenance and name, which are known
before training. This module reads the file and compares rows; ``epcache.probe.run`` orders the work.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from epcache.board.keys import protocol_key
from epcache.errors import ConfigError, EpcacheError

__all__ = [
    "ANCHOR_COLUMNS",
    "DEFAULT_TOLERANCE",
    "Anchor",
    "AnchorMismatchError",
    "anchor_name",
    "check_rows",
    "read_anchors",
]

ANCHOR_COLUMNS = ("store_provenance", "protocol", "config", "eval_top1")  # board.csv has them all
DEFAULT_TOLERANCE = 0.5  # percentage points of eval top-1 (the file's eval_top1 is a fraction, as board.csv's)


class AnchorMismatchError(EpcacheError):
    """A config of the sweep missed its anchor's eval top-1 by more than the tolerance; nothing was written."""


@dataclass(frozen=True)
class Anchor:
    """One line of the anchor file: a config whose eval top-1 is known."""

    store_provenance: str
    protocol: str  # epcache.board.keys.protocol_key of its rows
    config: str  # the config's name without " seed=N"
    eval_top1: float  # a fraction in [0, 1], the seed mean
    tolerance: float  # percentage points
    line: int  # in the file, for messages

    def matches(self, row: Mapping[str, Any]) -> bool:
        return ((row.get("store") or {}).get("provenance") == self.store_provenance
                and anchor_name(row) == self.config and "protocol" in row and protocol_key(row) == self.protocol)


def anchor_name(row: Mapping[str, Any] | str) -> str:
    """A row's (or a config's) name without its seed: what board.csv's ``config`` column holds."""
    name = row if isinstance(row, str) else str(row["name"])
    return name.rsplit(" seed=", 1)[0]


def read_anchors(path: str | Path) -> tuple[Anchor, ...]:
    """The anchors of ``path``; every problem of the file at once, before anything heavy runs.

    Raises:
        ConfigError: the file is missing or unreadable, lacks a column, or a value is not a number.
    """
    where = f"--check-anchor {path}"
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            missing = [c for c in ANCHOR_COLUMNS if c not in columns]
            if missing:
                has = ", ".join(columns) or "none"
                raise ConfigError(f"{where}: missing column(s) {', '.join(missing)} (has: {has}); an anchor file "
                                  f"needs {', '.join(ANCHOR_COLUMNS)} and optionally tolerance, as board.csv has them")
            lines = list(reader)
    except OSError as e:
        raise ConfigError(f"{where}: cannot read the anchor file ({e.strerror or e}); pass a board.csv") from None
    anchors, problems = [], []
    for n, line in enumerate(lines, start=2):  # line 1 is the header
        top1, tol = _number(line.get("eval_top1")), _number(line.get("tolerance") or DEFAULT_TOLERANCE)
        if top1 is None or not 0 <= top1 <= 1:
            problems.append(f"line {n}: eval_top1 {line.get('eval_top1')!r} is not a fraction in [0, 1]")
        elif tol is None or tol < 0:
            problems.append(f"line {n}: tolerance {line.get('tolerance')!r} is not a number of points >= 0")
        else:
            anchors.append(Anchor(str(line["store_provenance"]).strip(), str(line["protocol"]).strip(),
                                  anchor_name(str(line["config"]).strip()), top1, tol, n))
    if problems:
        raise ConfigError(f"{where}: " + "; ".join(problems))
    if not anchors:
        raise ConfigError(f"{where}: the file has no anchor lines")
    return tuple(anchors)


def check_rows(anchors: Sequence[Anchor], rows: Iterable[Mapping[str, Any]], *, path: str) -> list[str]:
    """Compare ``rows`` (the anchored configs' rows, held or already finished) with ``anchors``.

    Returns the warning lines of anchors no row matches (they check nothing, which must not pass
    silently).

    Raises:
        AnchorMismatchError: a config's seed-mean eval top-1 misses its anchor by more than the tolerance.
    """
    rows = list(rows)
    misses, warnings = [], []
    for a in anchors:
        mine = [r for r in rows if a.matches(r)]
        if not mine:
            warnings.append(f"--check-anchor {path} line {a.line}: {a.config!r} (protocol {a.protocol}, store "
                            f"{a.store_provenance[:12]}) matches no config of this sweep; it checks nothing")
            continue
        measured = math.fsum(float(r["metrics"]["eval"]["top1"]) for r in mine) / len(mine)
        if not abs(measured - a.eval_top1) * 100 <= a.tolerance:  # a NaN top-1 misses too
            maps = sorted({str((r.get("data") or {}).get("class_map")) for r in mine})
            misses.append(f"{a.config!r}: measured eval top-1 {100 * measured:.2f}% ({len(mine)} seed(s)), the anchor "
                          f"(line {a.line}) says {100 * a.eval_top1:.2f}% +- {a.tolerance:g} points "
                          f"(class map {', '.join(m[:16] for m in maps)})")
    if misses:
        raise AnchorMismatchError(
            f"--check-anchor {path}: " + "; ".join(misses) + ". Nothing was written to results.jsonl. Fix: compare "
            "the store (provenance, class map: `epcache info`), the splits and the protocol with the anchor's run; if "
            "the new number is intended, update the anchor file"
        )
    return warnings


def _number(text: Any) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None
