"""The commands that read stores: `epcache info`, `epcache verify` (and its --repair), `epcache ls`.

Each is a thin wrapper over one library function; see `epcache.cli` for the conventions.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from epcache.cli.common import STORE_HELP, user_errors
from epcache.cli.extract import parse_splits
from epcache.errors import ConfigError

__all__ = ["info", "ls", "verify"]


def info(
    store: Annotated[str, typer.Argument(metavar="STORE", help=STORE_HELP, show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Show a store's backbone, splits, layers, token layout, dtype, size and completeness."""
    from epcache.store import describe_store  # lazy: keeps zarr, numpy out of `epcache --help`
    from epcache.store.describe.info import format_store_info  # lazy: keeps zarr, numpy out of `epcache --help`

    with user_errors():
        desc = describe_store(store)
    typer.echo(json.dumps(desc.to_json(), indent=2) if as_json else format_store_info(desc))


def verify(
    store: Annotated[str, typer.Argument(metavar="STORE", help=STORE_HELP, show_default=False)],
    deep: Annotated[bool, typer.Option(help="Also scan every stored value for inf/nan.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
    repair: Annotated[bool, typer.Option(help="Re-extract the bad or missing blocks from the images.")] = False,
    data: Annotated[
        str | None,
        typer.Option(metavar="ROOT", help="With --repair: the data root the store came from.",
                     show_default="the root the store recorded"),
    ] = None,
    weights: Annotated[
        str | None, typer.Option(metavar="FILE", help="With --repair: the store's checkpoint (sha256 checked).")
    ] = None,
    split: Annotated[
        list[str] | None,
        typer.Option(metavar="NAME=SRC", help="With --repair: NAME=SUBDIR for splits whose source is not recorded."),
    ] = None,
    device: Annotated[
        str | None, typer.Option("--device", metavar="DEVICE", help="With --repair: where to run the backbone.",
                                 show_default="the extraction's device")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(metavar="N", help="With --repair: forward batch.", show_default="the extraction's")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(metavar="N", help="With --repair: decoding processes.", show_default="min(4, CPUs)")
    ] = None,
    break_lock: Annotated[bool, typer.Option(help="With --repair: remove a crashed extraction's lock.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Check every block's bytes against its crc32c record, and the metadata, ids and labels.

    Exit code 0: clean; 1: something is missing, corrupt or inconsistent (listed); 2: not a store.
    """
    from epcache.store import verify_store  # lazy: keeps zarr, numpy out of `epcache --help`

    with user_errors():
        if repair:
            from epcache.extract import repair_store  # lazy: keeps PIL, zarr, numpy out of `epcache --help`

            result = repair_store(
                store, data=data, weights=weights, splits=parse_splits(split) if split else None, device=device,
                batch_size=batch_size, workers=workers, deep=deep, break_lock=break_lock, progress=progress,
            )
            report, text, doc = result.after, result.format_text(), result.to_json()
        else:
            if data is not None or weights is not None or split or break_lock:
                raise ConfigError("--data, --weights, --split and --break-lock are used only with --repair")
            report = verify_store(store, deep=deep, progress=progress)
            text, doc = report.format_text(), report.to_json()
    typer.echo(json.dumps(doc, indent=2) if as_json else text)
    if not report.ok:
        raise typer.Exit(code=1)


def ls(
    root: Annotated[
        str,
        typer.Argument(metavar="ROOT", help="Directory or URL prefix (s3://bucket/stores) to search for stores.",
                       show_default=False),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """List the stores under ROOT: backbone, weights, dataset, splits, layers, views, dtype, size, status."""
    from epcache.store import list_stores  # lazy: keeps zarr, numpy out of `epcache --help`
    from epcache.store.describe.catalog import format_catalog  # lazy: keeps zarr, numpy out of `epcache --help`

    with user_errors():
        entries = list_stores(root)
    typer.echo(json.dumps([e.to_json() for e in entries], indent=2) if as_json else format_catalog(entries, root))
