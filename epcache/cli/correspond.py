"""`epcache correspond`: a thin wrapper over ``epcache.probe.dense.correspond_run.correspond_store``.

Its options are CorrespondConfig's fields under the same names, so their help is the field's doc
(``HelpCommand``); only ``--thresholds`` arrives as text (a comma list) and is parsed by the config.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from epcache.cli.common import config_options, documented_by, user_errors

if TYPE_CHECKING:
    from epcache.probe.dense.correspond_run import CorrespondConfig

__all__ = ["CORRESPOND_EPILOG", "CorrespondHelp", "correspond"]

CORRESPOND_EPILOG = """Examples:
  epcache correspond --store s.zarr --split val --pairs pairs.csv --layers -1
  epcache correspond --store s.zarr --pairs pairs.csv --layers 3,7,11 --pck-norm bbox --out runs/corr

pairs.csv has one row per keypoint: source_id,target_id,sx,sy,tx,ty. Ids are the split's sample ids
(paths under the data root); x, y are pixels of the model input (after the eval resize and crop),
x right, y down. Each keypoint is matched to the target patch of highest cosine and placed at its
centre; PCK@a counts matches closer than a * max(H, W) (--pck-norm image) or a * the longer side of
the box of the pair's target keypoints (--pck-norm bbox)."""


def correspond(
    ctx: typer.Context,
    store: Annotated[str, typer.Option(metavar="STORE", show_default=False)],
    pairs: Annotated[str, typer.Option(metavar="FILE", show_default=False)],
    split: Annotated[str, typer.Option(metavar="NAME")] = "val",
    layers: Annotated[str, typer.Option(metavar="SPEC")] = "-1",
    thresholds: Annotated[str, typer.Option(metavar="A,B", help="comma list")] = "0.05,0.10,0.15",
    pck_norm: Annotated[str, typer.Option(metavar="image|bbox")] = "image",
    interp: Annotated[str, typer.Option(metavar="bilinear|patch")] = "bilinear",
    mutual: Annotated[bool, typer.Option()] = False,
    out: Annotated[str | None, typer.Option(metavar="DIR")] = None,
    force: Annotated[bool, typer.Option()] = False,
) -> None:
    """Training-free keypoint correspondence (PCK) of stored patch tokens, one row per layer.

    Every input is checked before a token is read, so a refusal writes nothing; with --out the
    results land in DIR/correspond.json and DIR/correspond.csv, each complete or absent.
    """
    from epcache.probe.dense.correspond_run import correspond_store  # lazy: keeps numpy, zarr out of --help

    with user_errors():
        result = correspond_store(correspond_config(ctx.params))
    typer.echo(result.format_table())


def correspond_config(options: dict[str, object]) -> CorrespondConfig:
    """The CorrespondConfig of `epcache correspond`'s parsed options.

    Raises:
        ConfigError: a threshold outside (0, 1], an unknown --pck-norm or --interp.
    """
    from epcache.probe.dense.correspond_run import CorrespondConfig  # lazy: keeps numpy, zarr out of --help

    return CorrespondConfig(**config_options(options))  # type: ignore[arg-type]


def _config_class() -> type:
    from epcache.probe.dense.correspond_run import CorrespondConfig  # lazy: keeps numpy, zarr out of --help

    return CorrespondConfig


CorrespondHelp = documented_by(_config_class)
