"""`epcache demo`: generated data, extraction, a sweep and its report, end to end, in one directory."""

from __future__ import annotations

from typing import Annotated

import typer

from epcache.cli.common import user_errors

__all__ = ["demo"]


def demo(
    out: Annotated[
        str, typer.Option(metavar="DIR", help="Directory for the generated data, store, run and report.")
    ] = "epcache-demo",
    quick: Annotated[bool, typer.Option(help="A reduced demo (seconds), as the test-suite runs it.")] = False,
    dense: Annotated[bool, typer.Option(
        help="Dense probes instead: shapes with per-pixel masks, extract --masks, dense-knn, dense-logreg, "
             "seg-linear, hummingbird (and linear), scored by mIoU.")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Generate a dataset, extract a random-init ViT, run a sweep and write the report, end to end."""
    from epcache.demo import DemoConfig, run_demo  # lazy: keeps torch, PIL, zarr, numpy out of `epcache --help`

    with user_errors():
        res = run_demo(out, DemoConfig.quick() if quick else DemoConfig(), echo=typer.echo, progress=progress,
                       dense=dense)
    typer.echo(f"demo finished in {res.seconds:.0f} s: {res.out}")
