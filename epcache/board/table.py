"""``board.csv`` (the single source of truth), the markdown table made from it, and marked tables in documents.

The markdown is rendered from the board's text cells only, so ``board.md``, a README's marked
table and ``epcache board --check`` all say what ``board.csv`` says. A document holds the table
between two marker lines; ``--write`` replaces what lies between them and nothing else.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from epcache._fs.atomic import atomic_write
from epcache._text import percent
from epcache.board.collect import Board, row_order
from epcache.board.keys import BOARD_COLUMNS
from epcache.errors import ConfigError

__all__ = ["BEGIN", "END", "BoardFiles", "check_markdown", "markdown_difference", "read_board_csv",
           "render_markdown", "write_board", "write_markdown"]

BEGIN = "<!-- epcache-board:begin -->"
END = "<!-- epcache-board:end -->"
_HEADER = ("encoder", "weights", "input", "head", "config", "seeds", "eval top-1 [95%]", "oracle top-1", "params",
           "eval n")
DENSE_HEADER = ("eval mIoU", "pixel acc")  # dense rows (task "dense"): mIoU of the holdout's pick
DENSE_LEGEND = ("; eval mIoU, pixel acc: dense heads (per-pixel labels), the config the holdout mIoU selected, "
                "empty for classification rows")
LEGEND = ("eval top-1: the config the holdout selected, mean over seeds, with its 95% interval (Wilson for one "
          "seed, seeded bootstrap of the mean for several); oracle: mean ± std of each seed's best epoch on eval "
          "(the paper's protocol, never used to select; '-': solver heads)")


@dataclass(frozen=True)
class BoardFiles:
    """What :func:`write_board` wrote."""

    csv: Path
    markdown: Path
    figure: Path | None


def write_board(board: Board, out: str | Path, *, figures: bool = True) -> BoardFiles:
    """``board.csv``, then ``board.md`` rendered from that file, then ``board.png`` (``figures``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "board.csv"
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(BOARD_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(board.rows)
    _write(csv_path, buf.getvalue())
    saved = read_board_csv(csv_path)
    md = out / "board.md"
    legend = LEGEND + (DENSE_LEGEND if any(r.get("miou") for r in saved.rows) else "")
    _write(md, f"# Board\n\n{BEGIN}\n{render_markdown(saved)}\n{END}\n\n{legend}\n")
    png = None
    if figures:
        from epcache.board.figure import board_figure  # lazy: matplotlib only when a figure is drawn

        png = board_figure(saved, out / "board.png")
    return BoardFiles(csv_path, md, png)


def read_board_csv(path: str | Path) -> Board:
    """A board back from its ``board.csv``; columns added since it was written read as empty.

    Raises:
        ConfigError: the file is missing or is not a board (a key column missing).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: pass the board.csv that `epcache board --out DIR` wrote")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("encoder", "input", "head_family", "eval_top1") if c not in (reader.fieldnames or [])]
        if missing:
            raise ConfigError(f"{path} is not a board.csv (no column {', '.join(missing)}): pass the board.csv "
                              "that `epcache board --out DIR` wrote")
        rows = [{c: r.get(c) or "" for c in BOARD_COLUMNS} for r in reader]
    return Board(tuple(sorted(rows, key=row_order)))


def render_markdown(board: Board) -> str:
    """The board as one markdown table: the honest (holdout-selected) number with its interval, and the oracle."""
    dense = any(r.get("miou") for r in board.rows)  # the mIoU columns only where a dense row is on the board
    header = _HEADER + (DENSE_HEADER if dense else ())
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in board.rows:
        cells = (r["encoder"], r["weights"], r["input"], r["head_family"], r["config"], r["seeds"], _interval(r),
                 _oracle(r), r["params"], r["eval_n"])
        cells += (_pct(r.get("miou", "")), _pct(r.get("pixel_acc", ""))) if dense else ()
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def markdown_difference(path: str | Path, board: Board) -> str | None:
    """None when the marked table of ``path`` is ``board``'s; else one line saying what differs.

    Raises:
        ConfigError: the file is missing or has not exactly one pair of markers.
    """
    path = Path(path)
    _, old, _ = _split(path)
    have = _lines(old)
    want = render_markdown(board).splitlines()
    if have == want:
        return None
    diff = [i for i in range(max(len(have), len(want))) if i >= len(have) or i >= len(want) or have[i] != want[i]]
    first = diff[0]
    shown = want[first] if first < len(want) else "(no line)"
    return (f"{path}: the board table is stale ({len(diff)} of {len(want)} table lines differ, the first at table "
            f"line {first + 1}, which should read: {shown}); rewrite it with `epcache board --write {path} RUNDIR...`")


def check_markdown(path: str | Path, board: Board) -> bool:
    """Whether the marked table of ``path`` is fresh (equal to :func:`render_markdown` of ``board``)."""
    return markdown_difference(path, board) is None


def write_markdown(path: str | Path, board: Board) -> bool:
    """Replace the marked table of ``path`` in place (atomically); False when it was already fresh."""
    path = Path(path)
    head, old, tail = _split(path)
    table = render_markdown(board)
    if _lines(old) == table.splitlines():
        return False
    nl = "\r\n" if "\r\n" in head + old + tail else "\n"  # the document's own line ends, in the table too
    _write(path, nl.join([head, *table.splitlines(), tail]))
    return True


def _split(path: Path) -> tuple[str, str, str]:
    """Text up to the end of the begin marker, the marked table, and the text from the end marker on."""
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: pass a markdown file holding a {BEGIN} ... {END} table")
    with open(path, newline="", encoding="utf-8") as f:  # newline="": CRLF files keep their line ends
        text = f.read()
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ConfigError(f"{path} has no marked board table: put a line {BEGIN} and, below it, a line {END} "
                          f"where the table goes, then run `epcache board --write {path} RUNDIR...`")
    start = text.index(BEGIN) + len(BEGIN)
    end = text.index(END)
    return text[:start], text[start:end], text[end:]


def _lines(table: str) -> list[str]:
    """A marked table's lines as compared: surrounding blank lines and line ends (CRLF too) do not count."""
    return [line.strip() for line in table.strip().splitlines()]


def _interval(row: dict[str, str]) -> str:
    if not row["eval_top1"]:
        return "-"
    text = _pct(row["eval_top1"])
    if row["eval_lo"] and row["eval_hi"]:
        text += f" [{_pct(row['eval_lo'])}, {_pct(row['eval_hi'])}]"
    return text


def _oracle(row: dict[str, str]) -> str:
    if not row["oracle_top1"]:
        return "-"
    several = row["seeds"] not in ("", "1") and row["oracle_std"]
    return _pct(row["oracle_top1"]) + (f" ± {_pct(row['oracle_std'])}" if several else "")


def _pct(text: str) -> str:
    """A fraction cell as percent with one decimal (``71.2``): the board compares encoders, not noise."""
    return f"{100 * float(text):.1f}" if text else percent(None)


def _write(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
