"""`epcache convert`, registered on the app by `epcache.cli`: a thin wrapper over ``epcache.convert.convert``."""

from __future__ import annotations

from typing import Annotated

import typer

from epcache._cli_base import STORE_HELP, ChunkSamplesOption, CompressorOption, ShardSamplesOption, user_errors

__all__ = ["CONVERT_EPILOG", "convert"]

CONVERT_EPILOG = """Examples:
  epcache convert stores/in1k_mae_vitb.zarr stores/in1k_mae_vitb_pool2.zarr --pool-patches 2
  epcache convert stores/in1k_mae_vitb.zarr stores/in1k_mae_vitb_last4.h5 --layers -4:
  epcache convert stores/in1k_mae_vitb.zarr stores/in1k_mae_vitb_int8.zarr --quantize int8
  epcache convert demo.zarr demo_last.zarr --layers last --splits val --dtype bfloat16"""


def convert(
    src: Annotated[str, typer.Argument(metavar="SRC", help="The complete source store. " + STORE_HELP,
                                       show_default=False)],
    dst: Annotated[str, typer.Argument(metavar="DST", help="The store to write (.zarr, .h5 or a URL); never SRC.",
                                       show_default=False)],
    pool_patches: Annotated[
        int, typer.Option(metavar="K", help="Average KxK windows of the patch grid (prefix tokens kept); 1: off.")
    ] = 1,
    layers: Annotated[
        str | None,
        typer.Option(metavar="SPEC", help="Stored layers to keep: all, last, -4: or 0,5,11.",
                     show_default="every stored layer"),
    ] = None,
    dtype: Annotated[
        str | None,
        typer.Option("--dtype", metavar="DTYPE", help="float16, bfloat16 or float32.", show_default="the source's"),
    ] = None,
    quantize: Annotated[
        str | None,
        typer.Option(metavar="SCHEME", help="int8 (per channel), int8-token, fp8, or none (plain floats).",
                     show_default="the source's"),
    ] = None,
    splits: Annotated[
        str | None, typer.Option(metavar="NAMES", help="Splits to copy, comma-separated.", show_default="all")
    ] = None,
    format: Annotated[
        str | None, typer.Option("--format", metavar="FORMAT", help="zarr or h5.", show_default="from the DST suffix")
    ] = None,
    chunk_samples: ChunkSamplesOption = None,
    shard_samples: ShardSamplesOption = None,
    compressor: CompressorOption = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace a store at DST (kept until the new one is complete).")
    ] = False,
    break_lock: Annotated[
        bool, typer.Option(help="Remove a stale writer lock on DST: another host's, or a killed extraction's (a killed "
                           "conversion's lock on this host is taken over without it).")
    ] = False,
    record_paths: Annotated[
        bool, typer.Option(help="Record SRC's location and the data root as absolute host paths; without it they are "
                           "recorded relative to DST's directory, or left out (cache_layout.md §2.1).")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Derive a smaller store from SRC without the backbone: fewer layers, a pooled grid, int8, another dtype or format.

    The source must be complete; its records are checked as it is read. DST names SRC's provenance
    (`derived_from`) and appears only when complete.
    """
    from epcache.convert import ConvertConfig  # lazy: loads PIL, numpy, zarr only when this runs
    from epcache.convert import convert as run_convert  # lazy: loads PIL, numpy, zarr only when this runs

    with user_errors():
        cfg = ConvertConfig(
            src=src, dst=dst, pool_patches=pool_patches, layers=layers, dtype=dtype,  # type: ignore[arg-type]
            quantize=quantize,
            splits=tuple(s for s in splits.split(",") if s) if splits is not None else None,
            format=format, chunk_samples=chunk_samples,  # type: ignore[arg-type]
            shard_samples=shard_samples, compressor=compressor, overwrite=overwrite, break_lock=break_lock,
            record_paths=record_paths,
        )
        result = run_convert(cfg, progress=progress)
    typer.echo(result.format_text())
