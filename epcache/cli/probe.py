"""`epcache probe` (the sweep) and its listings `epcache recipes` / `epcache heads`.

The options of `probe` are ProbeConfig's fields under the same names: their help is the field's
doc (``HelpCommand``), and ``help=`` here adds only what the command line needs ("comma list").
The parsed options become the config in one call (:func:`probe_config`).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any

import typer

from epcache.cli.common import config_options, documented_by, user_errors
from epcache.cli.probe_series import probe_series, series_stores
from epcache.cli.probe_taps import probe_tap_series, series_taps
from epcache.errors import ConfigError

if TYPE_CHECKING:
    from epcache.probe import ProbeConfig

__all__ = ["PROBE_EPILOG", "ProbeHelp", "heads", "probe", "probe_config", "recipes"]

LIST = "comma list"
CLI_ONLY = ("progress", "layer")  # options that are not ProbeConfig fields


PROBE_EPILOG = """Examples:
  epcache probe --store s.zarr --head linear,ep --queries 8,32 --layers -4: \\
      --blr 0.1,0.2 --out runs/x
  epcache probe --store s.zarr --head "ep(queries=16,d_out=2)" --layers -1 --lr 1e-3 --epochs 20
  epcache probe --store s.zarr --grid sweep.toml --out runs/x
  epcache probe --store 'series/*.zarr' --out runs/s   # one run per store: runs/s/<store stem>/
  epcache probe --store s.zarr --tap all --head knn,linear --out runs/t   # runs/t/<tap>/ per tap
  epcache heads --dim 768 --patches 196      # every head name, its parameters and FLOPs

Every comma list multiplies: the sweep is the product of heads x queries x layers x lrs x
seeds ...; configs that read the same layer train in one pass over the store.

--grid FILE (TOML): top-level keys set ProbeConfig fields for the whole sweep (the option
names with '_' for '-'); each [[grid]] table is one sub-grid; the sweep is their union:

  recipe = "auto"
  shots = 10
  [[grid]]
  head = "linear"
  tokens = ["cls", "gap"]
  [[grid]]
  head = "ep"
  queries = [8, 16]
  lr = [1e-3, 3e-3]

store, out, grid, shard and protocol cannot be set in the file. What the file sets is what
runs and what every results row records."""


def probe(
    ctx: typer.Context,
    store: Annotated[
        str, typer.Option("--store", metavar="STORE", help="a quoted glob or comma list probes each store into "
                          "RUNDIR/<store stem>/")
    ],
    head: Annotated[
        str, typer.Option(metavar="HEADS", help="comma list (`epcache heads` lists them all); a spec sets options: "
                          "ep(queries=8,d_out=2)")
    ] = "ep",
    queries: Annotated[str | None, typer.Option(metavar="M,...", help=LIST, show_default="32")] = None,
    d_out: Annotated[str | None, typer.Option("--d-out", metavar="K,...", help=LIST, show_default="1")] = None,
    num_heads: Annotated[
        str | None, typer.Option(metavar="H,...", help=LIST, show_default="each head's own")
    ] = None,
    layer: Annotated[str | None, typer.Option(metavar="N", help="One block index (same as --layers N).")] = None,
    layers: Annotated[str, typer.Option(metavar="SPEC", help="comma list like 8,9,10,11")] = "last",
    layer_mix: Annotated[str, typer.Option(metavar="MIX,...", help=LIST)] = "none",
    tokens: Annotated[
        str | None, typer.Option(metavar="KINDS", help=LIST, show_default="cls (linear), patch (attentive), all (mp)")
    ] = None,
    recipe: Annotated[str, typer.Option(metavar="NAME", help="the options below override one field each")] = "auto",
    lr: Annotated[str | None, typer.Option(metavar="LR,...", help=LIST, show_default="the recipe's grid")] = None,
    blr: Annotated[str | None, typer.Option(metavar="BLR,...", help=LIST, show_default="the recipe's")] = None,
    wd: Annotated[str | None, typer.Option(metavar="WD,...", help=LIST, show_default="the recipe's")] = None,
    optimizer: Annotated[str | None, typer.Option(metavar="NAMES", help=LIST, show_default="the recipe's")] = None,
    seeds: Annotated[str, typer.Option(metavar="S,...", help="comma list, reported as mean ± std")] = "0",
    epochs: Annotated[
        str | None, typer.Option(metavar="N", show_default="the recipe's, with its step floor")
    ] = None,
    warmup: Annotated[str | None, typer.Option(metavar="EPOCHS", show_default="the recipe's")] = None,
    batch_size: Annotated[
        str | None, typer.Option(metavar="N", show_default="the recipe's, shrunk to give >= 8 steps per epoch")
    ] = None,
    min_steps: Annotated[str | None, typer.Option(metavar="N", show_default="the recipe's; auto: 1000")] = None,
    holdout: Annotated[str | None, typer.Option(metavar="FRAC", show_default="0.1")] = None,
    shots: Annotated[str | None, typer.Option(metavar="K,...", help="comma list like 1,5,10,25")] = None,
    fraction: Annotated[str | None, typer.Option(metavar="FRAC")] = None,
    train_split: Annotated[str, typer.Option(metavar="NAME")] = "train",
    eval_split: Annotated[str, typer.Option(metavar="NAME")] = "val",
    eval_store: Annotated[str | None, typer.Option(metavar="STORE", show_default="--store")] = None,
    tap: Annotated[
        str, typer.Option(metavar="TAPS", help="a comma list or `all` probes each tap of the store into RUNDIR/<tap>/; "
                          "`epcache report RUNDIR` then draws taps and blocks on one axis")
    ] = "block",
    grid: Annotated[str | None, typer.Option(metavar="FILE", help="format below")] = None,
    out: Annotated[
        str | None,
        typer.Option(metavar="RUNDIR", help="results.jsonl, heads/, checkpoints; re-running resumes",
                     show_default="none: nothing is saved, the summary is only printed"),
    ] = None,
    device: Annotated[str, typer.Option("--device", metavar="DEVICE")] = "auto",
    amp: Annotated[str, typer.Option(metavar="MODE")] = "auto",
    compile: Annotated[bool, typer.Option("--compile/--no-compile")] = False,
    in_memory: Annotated[bool | None, typer.Option("--in-memory/--no-in-memory", show_default="auto")] = None,
    eval_curve: Annotated[bool, typer.Option()] = True,
    allow_incomplete: Annotated[bool, typer.Option()] = False,
    data_seed: Annotated[str, typer.Option(metavar="N")] = "0",
    shard: Annotated[
        str | None, typer.Option(metavar="I/N", show_default="torchrun's RANK/WORLD_SIZE, else all")
    ] = None,
    trust_store: Annotated[bool, typer.Option()] = False,
    cache_dir: Annotated[str | None, typer.Option(metavar="DIR")] = None,
    cache_max_gb: Annotated[str | None, typer.Option(metavar="GB", show_default="no limit")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress.")] = True,
    k: Annotated[str, typer.Option("--k", metavar="K,...", help=LIST)] = "10,20,100,200",
    temperature: Annotated[str, typer.Option(metavar="T,...", help=LIST)] = "0.07",
    c_preset: Annotated[str, typer.Option(metavar="NAME")] = "dinov2",
    tries: Annotated[str, typer.Option(metavar="N")] = "1",
    standardize: Annotated[bool, typer.Option("--standardize/--no-standardize")] = False,
    refit: Annotated[bool, typer.Option("--refit/--no-refit")] = True,
    select: Annotated[str, typer.Option(metavar="RULE")] = "auto",
    linear_fit: Annotated[str, typer.Option(metavar="FIT")] = "auto",
    check_anchor: Annotated[str | None, typer.Option(metavar="FILE")] = None,
    protocol: Annotated[str, typer.Option(metavar="NAME")] = "none",
    repeats: Annotated[str, typer.Option(metavar="N")] = "1",
) -> None:
    """Stage 2: train a sweep of probes from a store, every config sharing one pass over the data."""
    from epcache.cli.probe_check import precheck_probe  # lazy: keeps zarr, numpy out of `epcache --help`

    with user_errors():  # the options' text is read and checked by ProbeConfig, as grid files and Python are
        stores = series_stores(store)
        if stores is not None:  # a glob or comma list: one run per store, RUNDIR/<store stem>/
            probe_series(ctx, stores, probe_config, progress=progress)
            return
        taps = series_taps(store, tap)
        if taps is not None:  # several taps: one run per tap, RUNDIR/<tap>/
            probe_tap_series(ctx, taps, probe_config, progress=progress)
            return
        cfg = probe_config(ctx.params)
        # `epcache submit ... -- probe ...`: the launcher, which imported epcache.launch (and torch with it) to
        # collect configs, runs it as layer units; importing the package here would load torch before the precheck
        capture = sys.modules.get("epcache.launch.capture")
        if capture is not None and capture.handed_to_launcher(cfg):
            return
        precheck_probe(cfg)  # a typo answers in a second, not after torch loads (the full checks still run)
        if cfg.run.check_anchor is not None:  # a bad anchor file is refused before torch loads, as a typo is
            from epcache.probe.results.anchor import read_anchors  # lazy: keeps probe modules out of `epcache --help`

            read_anchors(cfg.run.check_anchor)
        from epcache.probe import probe_store  # lazy: torch loads only once the options and store look right

        result = probe_store(cfg, progress=progress)
    if not progress:  # with progress the library printed the plan and notes as it went
        for note in result.notes:
            typer.echo(note, err=True)
    typer.echo(result.summary)
    if result.out is not None:
        typer.echo(f"results, heads and checkpoints: {result.out}\nnext: epcache report {result.out}")
    else:
        typer.echo("nothing saved (no --out RUNDIR): pass --out RUNDIR to keep results and heads")


def probe_config(options: Mapping[str, Any]) -> ProbeConfig:
    """The ProbeConfig of `epcache probe`'s parsed options (``--layer N`` is ``--layers N``).

    Raises:
        ConfigError: every refused field, in one message.
    """
    from epcache.probe import ProbeConfig  # lazy: keeps torch, zarr, numpy out of `epcache --help`

    fields = config_options(options, CLI_ONLY)
    if options.get("layer") is not None:
        fields["layers"] = options["layer"]
    return ProbeConfig.from_cli(**fields)


def _probe_config_class() -> type:
    from epcache.probe import ProbeConfig  # lazy: keeps torch, zarr, numpy out of `epcache --help`

    return ProbeConfig


ProbeHelp = documented_by(_probe_config_class)


def recipes() -> None:
    """List the training recipes `epcache probe --recipe` accepts: what each sets and where it comes from."""
    from epcache.probe.config.recipes import format_recipes  # lazy: keeps torch, zarr, numpy out of `epcache --help`

    typer.echo(format_recipes())


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
    layers: Annotated[
        int, typer.Option(metavar="L", help="Layers alf fuses (it attends over their 2L CLS and GAP tokens).")
    ] = 12,
) -> None:
    """Every head name `epcache probe --head` accepts: the trained heads with their parameters and forward FLOPs
    per image, the solver heads (knn, ridge, logreg, ncm) with what they fit and what a fit costs, then the dense
    heads (dense-knn, dense-logreg, seg-linear, hummingbird)."""
    from epcache.probe.dense.listing import format_dense_table  # lazy: keeps torch out of `epcache --help`
    from epcache.probe.heads import heads_table  # lazy: keeps torch, zarr, numpy out of `epcache --help`
    from epcache.probe.solvers.listing import format_heads_listing  # lazy: keeps torch, zarr out of `epcache --help`

    with user_errors():
        rows = heads_table(dim=dim, num_classes=classes, num_tokens=patches, queries=_ints(queries, "--queries"),
                           d_out=_ints(d_out, "--d-out"), layers=layers)
    typer.echo(format_heads_listing(rows, dim=dim, num_classes=classes))
    typer.echo("\n" + format_dense_table(dim, classes))


def _ints(text: str, option: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"{option} takes comma-separated integers, got {text!r}") from None
