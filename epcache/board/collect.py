"""One board over many run directories: every results row, one cell per board key, its best config.

A cell is ranked with the one ranking (:mod:`epcache.probe.results.ranking`) over the rows of every
run directory that holds its key, so a rerun in another directory adds seeds or configs to the cell
instead of a second row. A config whose row id appears in several run directories counts once: the
row of the run directory named last stands (a rerun is named after the run it repeats).

Encoder and weights come from the store's own metadata when the store still opens at the path the
run recorded and still has the provenance the row names; otherwise from the row (weights then read
``unknown``), so a board of an archived run without its stores still builds.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from epcache.board.keys import BOARD_COLUMNS, BOARD_KEY, head_family, input_label, protocol_key
from epcache.errors import ConfigError, EpcacheError
from epcache.probe.results.intervals import top1_interval
from epcache.probe.results.ranking import SeedGroup, best_row, group_by_seed, is_dense, oracle_top1, rank
from epcache.probe.results.rows import RESULTS_FILE, read_results
from epcache.store import open_store

__all__ = ["Board", "build_board", "row_order", "run_rows", "weights_text"]

UNKNOWN_WEIGHTS = "unknown"


@dataclass(frozen=True)
class Board:
    """The board's rows as ``board.csv`` holds them (column -> text), in :func:`row_order`.

    Rows are text, not numbers, so a board built from run directories and one read back from its
    ``board.csv`` are the same object and render the same markdown.
    """

    rows: tuple[dict[str, str], ...]
    notes: tuple[str, ...] = ()

    @property
    def encoders(self) -> list[str]:
        return sorted({r["encoder"] for r in self.rows}, key=_natural)

    @property
    def families(self) -> list[str]:
        return sorted({r["head_family"] for r in self.rows})


def build_board(run_dirs: Iterable[str | Path]) -> Board:
    """The board of ``run_dirs``: one row per :data:`BOARD_KEY`, its best seed group by the one ranking.

    Raises:
        ConfigError: a path that is not a run directory, or run directories without any results row.
    """
    dirs = _run_dirs(run_dirs)
    rows_by_id: dict[str, tuple[dict[str, Any], Path]] = {}
    for d in dirs:
        for row in read_results(d / RESULTS_FILE):
            rows_by_id.pop(row["id"], None)  # the later run directory's row stands, at its place in order
            rows_by_id[row["id"]] = (row, d)
    if not rows_by_id:
        names = ", ".join(str(d) for d in dirs)
        raise ConfigError(f"no results rows in {names}: the runs have not finished a config yet "
                          "(results.jsonl is empty); run `epcache probe` to the end first")
    cells: dict[tuple[str, ...], list[tuple[dict[str, Any], Path]]] = defaultdict(list)
    for row, d in rows_by_id.values():
        cells[_key(row)].append((row, d))
    stores = _StoreInfo()
    out = [_cell(rows, stores) for rows in cells.values()]
    shared = sum(len({d for _, d in rows}) > 1 for rows in cells.values())
    notes = []
    if shared:
        notes.append(f"note: {shared} of {len(cells)} board cells hold rows of several run directories (a rerun); "
                     "each is ranked over all of them, and a config run in two of them counts once (the later "
                     "directory's row)")
    return Board(tuple(sorted(out, key=row_order)), tuple(notes))


def row_order(row: Mapping[str, str]) -> tuple[Any, ...]:
    """The board's one row order: encoder, input, head family (then the rest of the key, for ties)."""
    return (_natural(row["encoder"]), _natural(row["input"]), row["head_family"], row["protocol"],
            row["store_provenance"])


def weights_text(source: str, name: str, weights_file: str | None) -> str:
    """Where a store's weights came from: ``random-init``, ``checkpoint <file>`` or the timm/HF tag."""
    if source == "random-init":
        return "random-init"
    if source == "checkpoint":
        return f"checkpoint {weights_file}" if weights_file else "checkpoint"
    return f"hf {name.split('.', 1)[1]}" if "." in name else "hf (timm default tag)"


def run_rows(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Every row of the given run directories, in order (what the EP-results export reads)."""
    return [row for d in _run_dirs(paths) for row in read_results(d / RESULTS_FILE)]


def _run_dirs(paths: Iterable[str | Path]) -> list[Path]:
    """The run directories in the order given, each once; a path that is not one fails naming it."""
    out: list[Path] = []
    seen: set[Path] = set()
    for p in paths:
        d = Path(p)
        if not (d / RESULTS_FILE).is_file():
            what = "does not exist" if not d.exists() else f"has no {RESULTS_FILE}"
            raise ConfigError(f"{d} is not a run directory ({what}): pass the --out directory of an "
                              "`epcache probe` run (the one holding results.jsonl)")
        if d.resolve() not in seen:
            seen.add(d.resolve())
            out.append(d)
    if not out:
        raise ConfigError("no run directories given: pass one or more `epcache probe --out` directories")
    return out


def _key(row: Mapping[str, Any]) -> tuple[str, ...]:
    values = {"store_provenance": str(row["store"]["provenance"]), "input": input_label(row),
              "head_family": head_family(row), "protocol": protocol_key(row)}
    return tuple(values[k] for k in BOARD_KEY)


def _cell(rows: Sequence[tuple[dict[str, Any], Path]], stores: _StoreInfo) -> dict[str, str]:
    """One board row: the best seed group of a cell's rows, with its interval and oracle."""
    where = {id(row): d for row, d in rows}
    best: SeedGroup = rank(group_by_seed(row for row, _ in rows))[0]
    row = best_row(best)
    if is_dense(row):
        return _dense_cell(best, stores, where[id(row)])
    evals = [float(r["metrics"]["eval"]["top1"]) for r in best.rows]
    n = int(row["metrics"]["eval"]["n"])
    mean = sum(evals) / len(evals)
    lo, hi = top1_interval([r["metrics"]["eval"] for r in best.rows])
    oracle = oracle_top1(best)
    holdout = best.mean_std("holdout")
    encoder, weights = stores.describe(row["store"])
    values: dict[str, Any] = {
        "encoder": encoder,
        "weights": weights,
        "store": row["store"].get("path", ""),
        "store_provenance": row["store"]["provenance"],
        "input": input_label(row),
        "head_family": head_family(row),
        "protocol": protocol_key(row),
        "config": best.name,
        "seeds": len(best.rows),
        "eval_top1": mean,
        "eval_lo": lo,
        "eval_hi": hi,
        "oracle_top1": oracle[0] if oracle else None,
        "oracle_std": oracle[1] if oracle else None,
        "eval_n": n,
        "selection": _selection(row),
        "params": int(row.get("params", 0)),
        "run": str(where[id(row)]),
        "holdout_top1": holdout[0] if holdout else None,
    }
    return {c: _text(values.get(c)) for c in BOARD_COLUMNS}


def _dense_cell(best: SeedGroup, stores: _StoreInfo, run: Path) -> dict[str, str]:
    """A dense cell: mIoU and pixel accuracy in their own columns, the top-1 columns empty."""
    row = best_row(best)
    encoder, weights = stores.describe(row["store"])
    values: dict[str, Any] = {
        "encoder": encoder, "weights": weights, "store": row["store"].get("path", ""),
        "store_provenance": row["store"]["provenance"], "input": input_label(row), "head_family": head_family(row),
        "protocol": protocol_key(row), "config": best.name, "seeds": len(best.rows),
        "eval_n": int(row["data"]["num_eval"]), "selection": "holdout", "params": int(row.get("params", 0)),
        "run": str(run), "miou": best.mean("eval", "miou"), "pixel_acc": best.mean("eval", "pixel_acc"),
    }
    return {c: _text(values.get(c)) for c in BOARD_COLUMNS}


def _selection(row: Mapping[str, Any]) -> str:
    """The selection rule that ran; a solver row records one only when it was not the holdout."""
    if "protocol" in row:
        return str(row["protocol"].get("selection_rule", ""))
    return "holdout" if row["metrics"].get("holdout") is not None else "none"


def _text(value: Any) -> str:
    """A CSV cell: fractions with 6 decimals, an absent number as the empty cell."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)


def _natural(text: str) -> tuple[Any, ...]:
    """``L2`` before ``L11``: digit runs compare as numbers."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text))


class _StoreInfo:
    """Encoder and weights of each store, opened once per path."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], tuple[str, str]] = {}

    def describe(self, store: Mapping[str, Any]) -> tuple[str, str]:
        key = (str(store.get("path", "")), str(store["provenance"]))
        if key not in self._seen:
            self._seen[key] = self._open(*key) or (str(store.get("backbone", "?")), UNKNOWN_WEIGHTS)
        return self._seen[key]

    @staticmethod
    def _open(path: str, provenance: str) -> tuple[str, str] | None:
        if not path:
            return None
        try:
            with open_store(path) as st:
                if st.provenance != provenance:  # another store at that path now: its metadata is not this run's
                    return None
                bb = st.meta.backbone
                return bb.name, weights_text(bb.source, bb.name, bb.weights_file)
        except (EpcacheError, OSError, ValueError):  # moved, deleted or unreadable: the row's own record stands
            return None
