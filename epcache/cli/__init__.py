"""The `epcache` command line: parse options, call one library function, print the result.

Every command is a thin wrapper over a function a notebook can call; each group of commands has
its module here (``extract``, ``probe``, ``store``, ``convert``, ``export``, ``launch``, ``report``,
``board``, ``demo``) and ``common`` holds the help layout and the error handling. Expected failures (`EpcacheError`)
print one line on stderr and exit with code 2; bugs keep their traceback. Heavy imports (torch,
timm) happen inside the commands so `--help` and `info` start fast.
"""

from __future__ import annotations

from functools import partial
from typing import Annotated

import typer

from epcache import __version__
from epcache._env_check import run_checked
from epcache.cli import board, convert, correspond, demo, export, extract, launch, probe, report, store
from epcache.cli.common import HelpCommand

__all__ = ["app", "main"]

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    rich_markup_mode=None,  # plain help: rich markup would eat "[plot]" in help texts
    context_settings={"max_content_width": 100},  # help uses up to 100 columns, never more
    help="Extract frozen-encoder tokens once; train hundreds of probes (linear, EP, attentive) from them.",
)
command = partial(app.command, cls=HelpCommand)  # git/pip-style help: --out DIR, RUNDIR, [default: X]


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"epcache {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the epcache version and exit."),
    ] = False,
) -> None:
    """epcache: frozen-encoder feature stores and fast probing."""


# the order here is the order of `epcache --help`
command(short_help="A store's backbone, splits, layers, tokens, size and completeness.")(store.info)
command(short_help="Backbone aliases and the timm model each resolves to.")(extract.models)
command(cls=extract.ExtractHelp, epilog=extract.EXTRACT_EPILOG,
        short_help="Stage 1: run a frozen backbone once, store its layers' tokens.")(extract.extract)
command(cls=probe.ProbeHelp, epilog=probe.PROBE_EPILOG,
        short_help="Stage 2: train a sweep of probe heads from a store.")(probe.probe)
command(short_help="The training recipes of `epcache probe --recipe`: what each sets, and its source.")(probe.recipes)
command(short_help="Markdown report: the results tables and figures of a run.")(report.report)
command(short_help="Attention maps, entropies and ablation of a trained head.")(report.attention)
command(epilog=board.BOARD_EPILOG,
        short_help="The lab's table over many runs: best config per encoder, input and head (board.csv).")(board.board)
command(short_help="Generated data -> extract -> sweep -> report, end to end.")(demo.demo)
command(short_help="Every probe head name: trained heads with parameters and FLOPs, then the solver heads.")(
    probe.heads
)
command(short_help="Check every block's crc32c; --repair re-extracts bad blocks.")(store.verify)
command(epilog=launch.SUBMIT_EPILOG, context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        short_help="Run extract or probe as units on SLURM (submitit), Ray or torchrun.")(launch.submit)
command(short_help="Check every unit of a submitted run finished; commit or merge it.")(launch.gather)
command(name="ls", short_help="List the stores under ROOT (a directory or URL prefix).")(store.ls)
command(cls=convert.ConvertHelp, epilog=convert.CONVERT_EPILOG,
        short_help="Derive a smaller store (layers, pooled grid, dtype, format) without the backbone.")(
    convert.convert
)
command(cls=export.ExportHelp, epilog=export.EXPORT_EPILOG,
        short_help="Write the vectors the solver heads fit to .npz / .parquet (for scikit-learn, notebooks).")(
    export.export
)
command(cls=correspond.CorrespondHelp, epilog=correspond.CORRESPOND_EPILOG,
        short_help="Training-free keypoint correspondence (PCK) of a store's patch tokens, per layer.")(
    correspond.correspond
)


def main() -> None:
    """Console-script entry point: the torch/torchvision pair is checked before any command imports torch."""
    run_checked(app, light_commands=("info", "ls"))


if __name__ == "__main__":
    main()
