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
    "  epcache board runs/vit_b --format ep-results --describe family=MIM --describe arch=ViT-B/16 ...\n\n"
    "  epcache board --by checkpoint runs/ckpts/*   # accuracy vs training step, one run per checkpoint\n\n"
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
    format: Annotated[
        str, typer.Option("--format", metavar="FORMAT",
                          help="board: board.csv/md/png; ep-results: OUT/results.csv rows in the EP benchmark's schema")
    ] = "board",
    describe: Annotated[
        list[str] | None,
        typer.Option(metavar="COLUMN=VALUE", help="ep-results: a column epcache cannot know (family, method, arch, "
                     "pretrain, eval, image_size, gap_reason, ...); repeat the option"),
    ] = None,
    model: Annotated[
        str | None, typer.Option(metavar="NAME", help="ep-results: model column (default: the timm name)")
    ] = None,
    loader: Annotated[
        str | None, typer.Option(metavar="NAME", help="ep-results: loader column (default: timm)")
    ] = None,
    by: Annotated[
        str | None, typer.Option(metavar="AXIS", help="checkpoint: eval top-1 vs training step over a checkpoint "
                                 "series' runs (OUT/checkpoints.png), the best checkpoint chosen by its holdout")
    ] = None,
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
        if format not in ("board", "ep-results"):
            raise ConfigError(f"--format must be board or ep-results, got {format!r}")
        if by is not None:
            _by_checkpoint(by, dirs, out)
            return
        if format == "ep-results":
            _ep_results(dirs, out, describe or [], model, loader)
            return
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


def _by_checkpoint(by: str, dirs: list[str], out: str) -> None:
    """``--by checkpoint``: the curve over a series' run directories, printed and drawn."""
    from pathlib import Path

    from epcache.board.checkpoints import checkpoint_curve, write_checkpoint_figure  # lazy: keeps torch out of --help

    if by != "checkpoint":
        raise ConfigError(f"--by takes checkpoint (accuracy vs training step), got {by!r}")
    curve = checkpoint_curve(dirs)
    typer.echo(curve.format_text())
    Path(out).mkdir(parents=True, exist_ok=True)
    typer.echo(f"  {write_checkpoint_figure(curve, Path(out) / 'checkpoints.png')}")


def _ep_results(dirs: list[str], out: str, describe: list[str], model: str | None, loader: str | None) -> None:
    """``--format ep-results``: OUT/results.csv in the EP benchmark's schema, refused when a row breaks its rules."""
    from pathlib import Path

    from epcache.board.collect import run_rows  # lazy: keeps torch, zarr, numpy out of `epcache --help`
    from epcache.board.ep_results import export_ep_results, parse_describe  # lazy: same

    path = Path(out) / "results.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = export_ep_results(path, run_rows(dirs), model=model, loader=loader, describe=parse_describe(describe))
    typer.echo(f"ep-results: {path} ({plural(len(rows), 'row')}, the EP benchmark's results.csv columns)")
