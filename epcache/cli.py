"""The `epcache` command line: parse options, call one library function, print the result.

Every command is a thin wrapper over a function a notebook can call. Expected failures
(`EpcacheError`) print one line on stderr and exit with code 2; bugs keep their traceback.
Heavy imports (torch, timm) happen inside the commands so `--help` and `info` start fast.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

from epcache.errors import EpcacheError

__all__ = ["app", "main"]

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    help="Extract frozen-encoder tokens once; train hundreds of probes (linear, EP, attentive) from the store.",
)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the epcache version and exit.")] = False,
) -> None:
    """epcache: frozen-encoder feature stores and fast probing."""
    if version:
        from epcache import __version__

        typer.echo(__version__)
        raise typer.Exit()


@contextmanager
def _user_errors() -> Iterator[None]:
    try:
        yield
    except EpcacheError as e:
        typer.secho(f"error: {e}", err=True, fg=typer.colors.RED)
        raise typer.Exit(code=2) from None


@app.command()
def info(
    store: Annotated[str, typer.Argument(help="Feature store: a .zarr directory, an .h5 file or a URL.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Show a store's backbone, splits, layers, token layout, dtype, size and completeness."""
    from epcache.store import describe_store, format_store_info

    with _user_errors():
        desc = describe_store(store)
    typer.echo(json.dumps(desc.to_json(), indent=2) if as_json else format_store_info(desc))


@app.command()
def heads(
    dim: Annotated[int, typer.Option(help="Token width D of the backbone.")] = 768,
    classes: Annotated[int, typer.Option(help="Number of classes C.")] = 1000,
    tokens: Annotated[int, typer.Option(help="Patch tokens N the head attends over (196 for ViT-B/16 at 224).")] = 196,
    queries: Annotated[str, typer.Option(help="EP query counts M to list, comma-separated.")] = "8,32",
    d_out: Annotated[str, typer.Option("--d-out", help="EP width divisors to list, comma-separated.")] = "1",
) -> None:
    """Trainable parameters and forward FLOPs per image of every probe head."""
    from epcache.probe.heads import format_heads_table, heads_table

    with _user_errors():
        rows = heads_table(dim=dim, num_classes=classes, num_tokens=tokens, queries=_ints(queries, "--queries"),
                           d_out=_ints(d_out, "--d-out"))
    typer.echo(format_heads_table(rows))


def _ints(text: str, option: str) -> tuple[int, ...]:
    from epcache.errors import ConfigError

    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"{option} takes comma-separated integers, got {text!r}") from None


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
