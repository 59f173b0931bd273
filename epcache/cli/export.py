"""`epcache export`: a thin wrapper over ``epcache.export_features``.

Its argument and options are ExportConfig's fields under the same names: their help is the
field's doc (``HelpCommand``), and the parsed options become the config in one call
(:func:`export_config`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any

import typer

from epcache.cli.common import config_options, documented_by, user_errors

if TYPE_CHECKING:
    from epcache.probe.solvers.export import ExportConfig

__all__ = ["EXPORT_EPILOG", "ExportHelp", "export", "export_config"]

EXPORT_EPILOG = """Examples:
  epcache export stores/in1k_dinov2.zarr --layer 11 --tokens gap --split train --out train.npz
  epcache export stores/in1k_dinov2.zarr --layer 11 --tokens cls+gap --split val --out val.parquet
  epcache export s.zarr --layer -1 --split val --rundir runs/x --out val.npz   # reuse runs/x/pooled

Rows are the split's samples in their dataset order (index), samples labelled -1 left out. The
.npz holds features [n, D] float32, labels (int64), ids, index and classes; it loads with
numpy.load(path, allow_pickle=False)."""


def export(
    ctx: typer.Context,
    store: Annotated[str, typer.Argument(metavar="STORE", show_default=False)],
    out: Annotated[str, typer.Option("--out", metavar="FILE")],
    layer: Annotated[int | None, typer.Option(metavar="N", show_default="the last stored layer")] = None,
    tokens: Annotated[str, typer.Option(metavar="KIND")] = "gap",
    split: Annotated[str, typer.Option(metavar="NAME")] = "train",
    rundir: Annotated[str | None, typer.Option(metavar="RUNDIR")] = None,
    force: Annotated[bool, typer.Option()] = False,
) -> None:
    """Write the vectors the solver heads fit (CLS / GAP of one layer, or the pooled output) to .npz or .parquet.

    The vectors come from the solver heads' own pooled view, so scikit-learn or a notebook fits the
    same float32 matrix `epcache probe --head ridge` fits. The file appears only when complete.
    """
    from epcache.probe.solvers.export import export_features  # lazy: keeps torch out of `epcache --help`

    with user_errors():
        result = export_features(export_config(ctx.params), say=lambda msg: typer.echo(msg, err=True))
    typer.echo(result.format_text())


def export_config(options: Mapping[str, Any]) -> ExportConfig:
    """The ExportConfig of `epcache export`'s parsed options.

    Raises:
        ConfigError: the config refuses a value (unknown tokens, a bad --out suffix).
    """
    from epcache.probe.solvers.export import ExportConfig  # lazy: keeps torch out of `epcache --help`

    return ExportConfig(**config_options(options))


def _export_config_class() -> type:
    from epcache.probe.solvers.export import ExportConfig  # lazy: keeps torch out of `epcache --help`

    return ExportConfig


ExportHelp = documented_by(_export_config_class)
