"""`epcache board`: one table over many run directories, and the guard that keeps a document's copy of it fresh."""

from __future__ import annotations

from typing import Annotated

import typer

from epcache._text import plural
from epcache.cli.common import user_errors
from epcache.errors import ConfigError

__all__ = ["BOARD_EPILOG", "board"]

BOARD_EPILOG = (
    "Examples:\n\n"
    "  epcache board runs/vit_s runs/vit_b runs/dino --out board/\n\n"
    "  epcache board --check README.md runs/vit_s runs/vit_b   # exit 1 when README.md's table is stale\n\n"
    "  epcache board --write README.md --csv board/board.csv    # rewrite the table between the markers\n\n"
    "A document's table sits between the lines <!-- epcache-board:begin --> and <!-- epcache-board:end -->."
)


def board(
    rundirs: Annotated[
        list[str] | None,
        typer.Argument(metavar="RUNDIR", show_default=False,
                       help="Run directories of `epcache probe --out` (one results.jsonl each)."),
    ] = None,
    out: Annotated[
        str, typer.Option(metavar="DIR", help="Where to write board.csv, board.md and board.png.")
    ] = "board",
    check: Annotated[
        str | None,
        typer.Option(metavar="MARKDOWN", help="Exit 1 when the marked board table of MARKDOWN is stale, 0 when fresh "
                     "(writes nothing)."),
    ] = None,
    write: Annotated[
        str | None,
        typer.Option(metavar="MARKDOWN", help="Rewrite the marked board table of MARKDOWN in place (nothing else)."),
    ] = None,
    csv: Annotated[
        str | None,
        typer.Option(metavar="FILE", help="With --check/--write: the board.csv to compare with instead of RUNDIRs."),
    ] = None,
    figures: Annotated[
        bool, typer.Option(help="Render board.png (needs matplotlib: pip install 'epcache[plot]').")
    ] = True,
) -> None:
    """The lab's standing table: the best config of each (encoder, input, head family) over many runs."""
    from epcache.board.collect import build_board  # lazy: keeps torch, zarr, numpy out of `epcache --help`
    from epcache.board.table import markdown_difference, read_board_csv, write_board, write_markdown  # lazy: same

    dirs = rundirs or []
    with user_errors():
        if check and write:
            raise ConfigError("--check and --write are exclusive: check a document, or rewrite its table")
        if csv and not (check or write):
            raise ConfigError("--csv is read by --check and --write; a new board is built from RUNDIRs")
        if csv and dirs:
            raise ConfigError("give RUNDIRs or --csv, not both: the table comes from one of them")
        if check or write:
            if not (csv or dirs):
                raise ConfigError("--check/--write need the board: pass RUNDIRs or --csv board/board.csv")
            b = read_board_csv(csv) if csv else build_board(dirs)
            _notes(b.notes)
            if check:
                stale = markdown_difference(check, b)
                if stale:
                    typer.echo(stale, err=True)
                    raise typer.Exit(code=1)
                typer.echo(f"{check}: the board table is fresh ({plural(len(b.rows), 'row')})")
                return
            assert write is not None
            changed = write_markdown(write, b)
            typer.echo(f"{write}: board table {'rewritten' if changed else 'already fresh'} "
                       f"({plural(len(b.rows), 'row')})")
            return
        if not dirs:
            raise ConfigError("no run directories given: pass one or more `epcache probe --out` directories")
        b = build_board(dirs)
        _notes(b.notes)
        files = write_board(b, out, figures=figures)
    typer.echo(f"board: {files.csv} ({plural(len(b.rows), 'row')}, {plural(len(b.encoders), 'encoder')}, "
               f"{plural(len(b.families), 'head family', 'head families')})")
    typer.echo(f"  {files.markdown}")
    if files.figure:
        typer.echo(f"  {files.figure}")


def _notes(notes: tuple[str, ...]) -> None:
    for note in notes:
        typer.echo(note, err=True)
