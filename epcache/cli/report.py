"""`epcache report` and `epcache attention`: what a run directory of `epcache probe --out` holds, as reports."""

from __future__ import annotations

from typing import Annotated

import typer

from epcache._text import plural
from epcache.cli.common import RUNDIR_HELP, user_errors

__all__ = ["attention", "report"]


def report(
    rundirs: Annotated[
        list[str],
        typer.Argument(metavar="RUNDIR", show_default=False,
                       help=f"{RUNDIR_HELP} Two or more: one comparison of the runs (compare.md)."),
    ],
    out: Annotated[
        str | None,
        typer.Option(metavar="DIR", help="Where to write report.md and the figures (several runs: compare.md, "
                     "default RUNDIR/compare under the first run; a run's report.md is never replaced).",
                     show_default="RUNDIR/report"),
    ] = None,
    figures: Annotated[
        bool, typer.Option(help="Render PNG figures (needs matplotlib: pip install 'epcache[plot]').")
    ] = True,
    metric: Annotated[
        str,
        typer.Option(metavar="NAME", help="top1 or mean-per-class: the accuracy of the headline and the tables "
                     "(the best config is the same either way: it is ranked on holdout top-1)."),
    ] = "top1",
) -> None:
    """Markdown report with the results tables and the paper's figures for this run, or several runs compared."""
    from epcache.report import report_runs, write_report  # lazy: keeps torch, zarr, numpy out of `epcache --help`

    with user_errors():
        if len(rundirs) > 1:
            cmp = report_runs(rundirs, out)
            typer.echo(f"comparison: {cmp.markdown} ({plural(len(cmp.runs), 'run')}, "
                       f"{plural(len(cmp.differences), 'protocol difference')})")
            return
        rep = write_report(rundirs[0], out, figures=figures, metric=metric)
    typer.echo(f"report: {rep.markdown} ({plural(rep.num_configs, 'config')}, {plural(len(rep.figures), 'figure')})")
    for f in rep.figures:
        typer.echo(f"  {f}")


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
    progress: Annotated[bool, typer.Option(help="Progress on stderr for steps slower than a few seconds.")] = True,
) -> None:
    """Per-query attention maps, entropies and the uniform-attention ablation of a trained head."""
    from epcache.report import attention_report  # lazy: keeps torch, zarr, numpy out of `epcache --help`

    say = (lambda msg: typer.echo(msg, err=True)) if progress else None
    with user_errors():
        res = attention_report(rundir, config, split=split, images=images, data_root=data, out=out, say=say)
    typer.echo(res.table.read_text())
    typer.echo(f"written: {res.table}, {res.json}" + (f", {res.png}" if res.png else ""))
