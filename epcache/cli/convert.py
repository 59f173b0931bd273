"""`epcache convert`: a thin wrapper over ``epcache.convert_store``.

Its arguments and options are ConvertConfig's fields under the same names: their help is the
field's doc (``HelpCommand``), and the parsed options become the config in one call
(:func:`convert_config`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any

import typer

from epcache.cli.common import config_options, documented_by, user_errors

if TYPE_CHECKING:
    from epcache.convert import ConvertConfig

__all__ = ["CONVERT_EPILOG", "ConvertHelp", "convert", "convert_config"]

CLI_ONLY = ("progress",)  # options that are not ConvertConfig fields

CONVERT_EPILOG = """Examples:
  epcache convert stores/in1k_mae_vitb.zarr stores/in1k_mae_vitb_pool2.zarr --pool-patches 2
  epcache convert stores/in1k_mae_vitb.zarr stores/in1k_mae_vitb_last4.h5 --layers -4:
  epcache convert stores/in1k_mae_vitb.zarr stores/in1k_mae_vitb_light.zarr --keep cls,gap,registers
  epcache convert stores/in1k_mae_vitb.zarr stores/in1k_mae_vitb_int8.zarr --quantize int8
  epcache convert demo.zarr demo_last.zarr --layers last --splits val --dtype bfloat16"""


def convert(
    ctx: typer.Context,
    src: Annotated[str, typer.Argument(metavar="SRC", show_default=False)],
    dst: Annotated[str, typer.Argument(metavar="DST", help=".zarr, .h5 or a URL", show_default=False)],
    pool_patches: Annotated[int, typer.Option(metavar="K")] = 1,
    keep: Annotated[str | None, typer.Option(metavar="TOKENS", show_default="every token")] = None,
    layers: Annotated[str | None, typer.Option(metavar="SPEC", show_default="every stored layer")] = None,
    dtype: Annotated[str | None, typer.Option("--dtype", metavar="DTYPE", show_default="the source's")] = None,
    quantize: Annotated[str | None, typer.Option(metavar="SCHEME", show_default="the source's")] = None,
    splits: Annotated[str | None, typer.Option(metavar="NAMES", help="comma list", show_default="all")] = None,
    format: Annotated[str | None, typer.Option("--format", metavar="FORMAT", show_default="from the DST suffix")] = (
        None
    ),
    chunk_samples: Annotated[int | None, typer.Option(metavar="N", show_default="a few MB per chunk")] = None,
    shard_samples: Annotated[int | None, typer.Option(metavar="N", show_default="automatic")] = None,
    compressor: Annotated[str | None, typer.Option(metavar="CODEC", show_default="none")] = None,
    overwrite: Annotated[bool, typer.Option()] = False,
    break_lock: Annotated[bool, typer.Option()] = False,
    record_paths: Annotated[bool, typer.Option()] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Derive a smaller store from SRC without the backbone: fewer layers, a pooled grid, int8, another dtype or format.

    The source must be complete; its records are checked as it is read. DST names SRC's provenance
    (`derived_from`) and appears only when complete.
    """
    from epcache.convert import convert_store  # lazy: keeps PIL, zarr, numpy out of `epcache --help`

    with user_errors():
        result = convert_store(convert_config(ctx.params), progress=progress)
    typer.echo(result.format_text())


def convert_config(options: Mapping[str, Any]) -> ConvertConfig:
    """The ConvertConfig of `epcache convert`'s parsed options (``--splits a,b`` is a tuple of names).

    Raises:
        ConfigError: the config refuses a value.
    """
    from epcache.convert import ConvertConfig  # lazy: keeps PIL, zarr, numpy out of `epcache --help`

    fields = config_options(options, CLI_ONLY)
    if fields["splits"] is not None:
        fields["splits"] = tuple(s for s in fields["splits"].split(",") if s)
    return ConvertConfig(**fields)


def _convert_config_class() -> type:
    from epcache.convert import ConvertConfig  # lazy: keeps PIL, zarr, numpy out of `epcache --help`

    return ConvertConfig


ConvertHelp = documented_by(_convert_config_class)
