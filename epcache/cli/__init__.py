"""The `epcache` command line: parse options, call one library function, print the result.

Every command is a thin wrapper over a function a notebook can call. Expected failures
(`EpcacheError`) print one line on stderr and exit with code 2; bugs keep their traceback.
Heavy imports (torch, timm) happen inside the commands so `--help` and `info` start fast.
"""

from __future__ import annotations

from functools import partial
from typing import Annotated

import typer

from epcache import __version__, _cli_convert, _cli_launch, _cli_probe, _cli_store
from epcache._cli_base import HelpCommand, user_errors
from epcache._env_check import run_checked
from epcache._text import plural
from epcache.errors import ConfigError

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


command(short_help="A store's backbone, splits, layers, tokens, size and completeness.")(_cli_store.info)
command(short_help="Backbone aliases and the timm model each resolves to.")(_cli_store.models)
command(epilog=_cli_store.EXTRACT_EPILOG,
        short_help="Stage 1: run a frozen backbone once, store its layers' tokens.")(_cli_store.extract)

RUNDIR_HELP = "Run directory written by `epcache probe --out RUNDIR`."


command(epilog=_cli_probe.PROBE_EPILOG, short_help="Stage 2: train a sweep of probe heads from a store.")(
    _cli_probe.probe
)


@command(short_help="The training recipes of `epcache probe --recipe`: what each sets, and its source.")
def recipes() -> None:
    """List the training recipes `epcache probe --recipe` accepts: what each sets and where it comes from."""
    from epcache.probe.train.recipes import format_recipes  # lazy: loads numpy, safetensors, torch only when this runs

    typer.echo(format_recipes())


@command(short_help="Markdown report: the results tables and figures of a run.")
def report(
    rundir: Annotated[str, typer.Argument(metavar="RUNDIR", help=RUNDIR_HELP, show_default=False)],
    out: Annotated[
        str | None,
        typer.Option(metavar="DIR", help="Where to write report.md and the figures.", show_default="RUNDIR/report"),
    ] = None,
    figures: Annotated[
        bool, typer.Option(help="Render PNG figures (needs matplotlib: pip install 'epcache[plot]').")
    ] = True,
) -> None:
    """Markdown report with the results tables and the paper's figures for this run."""
    from epcache.report import write_report  # lazy: loads numpy, safetensors, torch only when this runs

    with user_errors():
        rep = write_report(rundir, out, figures=figures)
    typer.echo(f"report: {rep.markdown} ({plural(rep.num_configs, 'config')}, {plural(len(rep.figures), 'figure')})")
    for f in rep.figures:
        typer.echo(f"  {f}")


@command(short_help="Attention maps, entropies and ablation of a trained head.")
def attention(
    rundir: Annotated[str, typer.Argument(metavar="RUNDIR", help=RUNDIR_HELP, show_default=False)],
    config: Annotated[
        str,
        typer.Option(metavar="ID", help="Config id (or a unique prefix; see report.md's id column), or 'best': "
                     "the best attentive config."),
    ] = "best",
    split: Annotated[
        str | None, typer.Option(metavar="NAME", help="Split to analyse.", show_default="the run's eval split")
    ] = None,
    images: Annotated[int, typer.Option(metavar="N", help="Images shown in the attention grid.")] = 16,
    data: Annotated[
        str | None,
        typer.Option(metavar="ROOT", help="Data root of the images (to overlay the maps on them).",
                     show_default="the root the store recorded at extraction"),
    ] = None,
    out: Annotated[
        str | None, typer.Option(metavar="DIR", help="Output directory.", show_default="RUNDIR/attention/ID")
    ] = None,
) -> None:
    """Per-query attention maps, entropies and the uniform-attention ablation of a trained head."""
    from epcache.report import attention_report  # lazy: loads numpy, safetensors, torch only when this runs

    with user_errors():
        res = attention_report(rundir, config, split=split, images=images, data_root=data, out=out)
    typer.echo(res.table.read_text())
    typer.echo(f"written: {res.table}, {res.json}" + (f", {res.png}" if res.png else ""))


@command(short_help="Generated data -> extract -> sweep -> report, end to end.")
def demo(
    out: Annotated[
        str, typer.Option(metavar="DIR", help="Directory for the generated data, store, run and report.")
    ] = "epcache-demo",
    quick: Annotated[bool, typer.Option(help="A reduced demo (seconds), as the test-suite runs it.")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Generate a dataset, extract a random-init ViT, run a sweep and write the report, end to end."""
    from epcache.demo import DemoConfig, run_demo  # lazy: loads PIL, numpy only when this runs

    with user_errors():
        res = run_demo(out, DemoConfig.quick() if quick else DemoConfig(), echo=typer.echo, progress=progress)
    typer.echo(f"demo finished in {res.seconds:.0f} s: {res.out}")


@command(short_help="Every probe head name: trained heads with parameters and FLOPs, then the solver heads.")
def heads(
    dim: Annotated[int, typer.Option(metavar="D", help="Token width D of the backbone.")] = 768,
    classes: Annotated[int, typer.Option(metavar="C", help="Number of classes C.")] = 1000,
    patches: Annotated[
        int, typer.Option(metavar="N", help="Patch tokens N a head attends over (196 for ViT-B/16 at 224 px).")
    ] = 196,
    queries: Annotated[str, typer.Option(metavar="M,...", help="EP query counts M to list, comma list.")] = "8,32",
    d_out: Annotated[
        str, typer.Option("--d-out", metavar="K,...", help="EP width divisors to list, comma list.")
    ] = "1",
) -> None:
    """Every head name `epcache probe --head` accepts: the trained heads with their parameters and forward FLOPs
    per image, then the solver heads (knn, ridge, logreg, ncm) with what they fit and what a fit costs."""
    from epcache.probe.heads import heads_table  # lazy: loads numpy, safetensors, torch only when this runs

    # lazy: loads numpy, safetensors, torch only when this runs
    from epcache.probe.heads.listing import format_heads_listing

    with user_errors():
        rows = heads_table(dim=dim, num_classes=classes, num_tokens=patches, queries=_ints(queries, "--queries"),
                           d_out=_ints(d_out, "--d-out"))
    typer.echo(format_heads_listing(rows, dim=dim, num_classes=classes))


def _ints(text: str, option: str) -> tuple[int, ...]:

    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"{option} takes comma-separated integers, got {text!r}") from None


command(short_help="Check every block's crc32c; --repair re-extracts bad blocks.")(_cli_store.verify)
command(epilog=_cli_launch.SUBMIT_EPILOG, context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        short_help="Run extract or probe as units on SLURM (submitit), Ray or torchrun.")(_cli_launch.submit)
command(short_help="Check every unit of a submitted run finished; commit or merge it.")(_cli_launch.gather)
command(name="ls", short_help="List the stores under ROOT (a directory or URL prefix).")(_cli_store.ls)
command(epilog=_cli_convert.CONVERT_EPILOG,
        short_help="Derive a smaller store (layers, pooled grid, dtype, format) without the backbone.")(
    _cli_convert.convert
)


def main() -> None:
    """Console-script entry point: the torch/torchvision pair is checked before any command imports torch."""

    run_checked(app, light_commands=("info", "ls"))


if __name__ == "__main__":
    main()
