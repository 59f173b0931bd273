"""The `epcache` command line: parse options, call one library function, print the result.

Every command is a thin wrapper over a function a notebook can call. Expected failures
(`EpcacheError`) print one line on stderr and exit with code 2; bugs keep their traceback.
Heavy imports (torch, timm) happen inside the commands so `--help` and `info` start fast.
"""

from __future__ import annotations

from functools import partial
from typing import Annotated

import typer

from epcache import _cli_convert, _cli_store
from epcache._cli_base import HelpCommand, user_errors

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
        from epcache import __version__

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


PROBE_EPILOG = """Examples:
  epcache probe --store s.zarr --head linear,ep --queries 8,32 --layers -4: \\
      --blr 0.1,0.2 --out runs/x
  epcache probe --store s.zarr --head "ep(queries=16,d_out=2)" --layers -1 --lr 1e-3 --epochs 20
  epcache probe --store s.zarr --grid sweep.toml --out runs/x
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

store, out, grid and shard cannot be set in the file. What the file sets is what runs and what
every results row records."""


@command(epilog=PROBE_EPILOG, short_help="Stage 2: train a sweep of probe heads from a store.")
def probe(
    store: Annotated[
        str,
        typer.Option("--store", metavar="STORE", help="Feature store to train from (its train split; eval split too)."),
    ],
    head: Annotated[
        str,
        typer.Option(
            metavar="HEADS",
            help="Head names or specs, comma list: linear, ep, mhca, jepa, ... (`epcache heads` lists them all); "
            "a spec sets options: ep(queries=8,d_out=2).",
        ),
    ] = "ep",
    queries: Annotated[
        str | None, typer.Option(metavar="M,...", help="EP queries M, comma list.", show_default="32")
    ] = None,
    d_out: Annotated[
        str | None,
        typer.Option("--d-out", metavar="K,...",
                     help="EP width divisor: values are D/K wide (EP_SPEC: d_out), comma list.", show_default="1"),
    ] = None,
    num_heads: Annotated[
        str | None,
        typer.Option(metavar="H,...", help="Attention heads of MHCA-style poolers, comma list.",
                     show_default="each head's own"),
    ] = None,
    layer: Annotated[str | None, typer.Option(metavar="N", help="One block index (same as --layers N).")] = None,
    layers: Annotated[
        str,
        typer.Option(metavar="SPEC", help="Blocks: all, last, -1, a slice like -4: or a list like 8,9,10,11."),
    ] = "last",
    layer_mix: Annotated[
        str,
        typer.Option(metavar="MIX,...", help="How --layers feed a head, comma list: none (one config per layer), "
                     "concat, mean, tokens (all --layers as one input)."),
    ] = "none",
    tokens: Annotated[
        str | None,
        typer.Option(metavar="KINDS", help="Token kind each head reads, comma list: cls, gap, cls+gap, pooled "
                     "(linear); patch, all, registers, patch+registers (attentive; mp: all, patch).",
                     show_default="cls (linear), patch (attentive), all (mp)"),
    ] = None,
    recipe: Annotated[
        str,
        typer.Option(metavar="NAME", help="Training protocol: auto (any dataset size), ep-paper, dinov2-linear, "
                     "capi-attentive (`epcache recipes`); the options below override one field each."),
    ] = "auto",
    lr: Annotated[
        str | None,
        typer.Option(metavar="LR,...", help="Absolute peak learning rates, comma list (a grid, trained fused).",
                     show_default="the recipe's grid"),
    ] = None,
    blr: Annotated[
        str | None,
        typer.Option(metavar="BLR,...", help="Base lrs: lr = blr x batch-size / 256.", show_default="the recipe's"),
    ] = None,
    wd: Annotated[
        str | None, typer.Option(metavar="WD,...", help="Weight decays, comma list.", show_default="the recipe's")
    ] = None,
    optimizer: Annotated[
        str | None,
        typer.Option(metavar="NAMES", help="lars, adamw, adam (L2) or sgd; comma list.", show_default="the recipe's"),
    ] = None,
    seeds: Annotated[
        str, typer.Option(metavar="S,...", help="Head-init seeds, comma list (reported as mean ± std).")
    ] = "0",
    epochs: Annotated[
        int | None,
        typer.Option(metavar="N", help="Evaluation epochs: exactly N passes over the training set.",
                     show_default="the recipe's, with its step floor"),
    ] = None,
    warmup: Annotated[
        float | None,
        typer.Option(metavar="EPOCHS", help="Linear warm-up epochs, then cosine to 0.", show_default="the recipe's"),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(metavar="N", help="Training batch size.",
                     show_default="the recipe's, shrunk to give >= 8 steps per epoch"),
    ] = None,
    min_steps: Annotated[
        int | None,
        typer.Option(metavar="N", help="Floor on optimiser steps (an epoch becomes several passes).",
                     show_default="the recipe's; auto: 1000"),
    ] = None,
    holdout: Annotated[
        float | None,
        typer.Option(metavar="FRAC", help="Stratified fraction of train that selects each config's epoch and the "
                     "best config (>= 1 per class when possible; 0: last epoch, ranked on eval).",
                     show_default="0.1"),
    ] = None,
    shots: Annotated[
        str | None,
        typer.Option(metavar="K,...", help="Low-shot: K training samples per class; a comma list (1,5,10,25) runs "
                     "solver heads per K."),
    ] = None,
    fraction: Annotated[
        float | None, typer.Option(metavar="FRAC", help="Low-shot: this fraction of each class.")
    ] = None,
    train_split: Annotated[str, typer.Option(metavar="NAME", help="Split to train on.")] = "train",
    eval_split: Annotated[str, typer.Option(metavar="NAME", help="Split to report.")] = "val",
    eval_store: Annotated[
        str | None, typer.Option(metavar="STORE", help="Another store holding the eval split.", show_default="--store")
    ] = None,
    grid: Annotated[
        str | None, typer.Option(metavar="FILE", help="TOML sweep file (format below); its keys override options.")
    ] = None,
    out: Annotated[
        str | None,
        typer.Option(metavar="RUNDIR", help="Run directory: results.jsonl, heads/, checkpoints; re-running resumes.",
                     show_default="none: nothing is saved, the summary is only printed"),
    ] = None,
    device: Annotated[str, typer.Option("--device", metavar="DEVICE", help="auto, cpu, cuda or cuda:N.")] = "auto",
    amp: Annotated[
        str,
        typer.Option(metavar="MODE", help="auto, none or bf16: bfloat16 autocast of the heads' matmuls (weights, "
                     "losses, BatchNorm and the MP covariance stay float32); auto = bf16 on CUDA, none on CPU."),
    ] = "auto",
    compile: Annotated[bool, typer.Option("--compile/--no-compile",
                                          help="Run each stack of heads through torch.compile.")] = False,
    in_memory: Annotated[bool, typer.Option(help="Hold the selected tokens in RAM in the compute dtype (converted "
                                            "once) instead of streaming them every epoch.")] = False,
    eval_curve: Annotated[bool, typer.Option(help="Score the eval split every epoch (curves, oracle); "
                                             "--no-eval-curve scores it once, at the end.")] = True,
    allow_incomplete: Annotated[bool, typer.Option(help="Train on the written part of an incomplete store.")] = False,
    data_seed: Annotated[
        int, typer.Option(metavar="N", help="Seeds holdout, low-shot subset, batch order and views.")
    ] = 0,
    shard: Annotated[
        str | None,
        typer.Option(metavar="I/N", help="Train part I of N of the sweep (job arrays).",
                     show_default="torchrun's RANK/WORLD_SIZE, else all"),
    ] = None,
    trust_store: Annotated[
        bool, typer.Option(help="Skip the store integrity checks (bytes, labels, ids, metadata); recorded in rows.")
    ] = False,
    cache_dir: Annotated[
        str | None,
        typer.Option(metavar="DIR", help="Keep local copies of the chunks of a store behind a URL (s3://...) in DIR, "
                     "so epochs after the first (and later runs) read local disk; checked on every read."),
    ] = None,
    cache_max_gb: Annotated[
        float | None, typer.Option(metavar="GB", help="Evict least recently used --cache-dir entries beyond GB.",
                                   show_default="no limit")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show progress.")] = True,
    k: Annotated[
        str, typer.Option("--k", metavar="K,...", help="k-NN neighbour counts, comma list (all from one search).")
    ] = "10,20,100,200",
    temperature: Annotated[str, typer.Option(metavar="T,...", help="k-NN vote temperatures T, comma list.")] = "0.07",
    c_preset: Annotated[
        str, typer.Option(metavar="NAME", help="logreg C grid: dinov2 (45 values), clip (96) or raptor (100).")
    ] = "dinov2",
    tries: Annotated[
        int, typer.Option(metavar="N", help="Few-shot draws per shot count (needs --shots); mean ± std over draws.")
    ] = 1,
) -> None:
    """Stage 2: train a sweep of probes from a store, every config sharing one pass over the data."""
    from epcache.probe import ProbeConfig
    from epcache.probe import probe as run_probe
    from epcache.probe.sweep.config import parse_heads, parse_layers, parse_list

    with user_errors():
        cfg = ProbeConfig(
            store=store, head=parse_heads(head), queries=parse_list(queries, int), d_out=parse_list(d_out, int),
            num_heads=parse_list(num_heads, int), layers=parse_layers(layer if layer is not None else layers),
            tokens=parse_list(tokens, str), recipe=recipe, lr=parse_list(lr, float), blr=parse_list(blr, float),
            wd=parse_list(wd, float), optimizer=parse_list(optimizer, str), seeds=parse_list(seeds, int),
            epochs=epochs, warmup=warmup, batch_size=batch_size, min_steps=min_steps, holdout=holdout,
            shots=parse_list(shots, int) or None, k=parse_list(k, int), temperature=parse_list(temperature, float),
            c_preset=c_preset, tries=tries,
            fraction=fraction,
            train_split=train_split, eval_split=eval_split, eval_store=eval_store, grid=grid, out=out,
            device=device, amp=amp, compile=compile, in_memory=in_memory, eval_curve=eval_curve,
            allow_incomplete=allow_incomplete, data_seed=data_seed,
            shard=shard, trust_store=trust_store, layer_mix=parse_list(layer_mix, str),
            cache_dir=cache_dir, cache_max_gb=cache_max_gb,
        )
        result = run_probe(cfg, progress=progress)
    if not progress:  # with progress the library printed the plan and notes as it went
        for note in result.notes:
            typer.echo(note, err=True)
    typer.echo(result.summary)
    if result.out is not None:
        typer.echo(f"results, heads and checkpoints: {result.out}\nnext: epcache report {result.out}")
    else:
        typer.echo("nothing saved (no --out RUNDIR): pass --out RUNDIR to keep results and heads")


@command(short_help="The training recipes of `epcache probe --recipe`: what each sets, and its source.")
def recipes() -> None:
    """List the training recipes `epcache probe --recipe` accepts: what each sets and where it comes from."""
    from epcache.probe.train.recipes import format_recipes

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
    from epcache.report import write_report
    from epcache.report._format import plural

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
    from epcache.report._attention import attention_report

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
    from epcache.demo import DemoConfig, run_demo

    with user_errors():
        res = run_demo(out, DemoConfig.quick() if quick else DemoConfig(), echo=typer.echo, progress=progress)
    typer.echo(f"demo finished in {res.seconds:.0f} s: {res.out}")


@command(short_help="Every probe head name with its parameters and FLOPs.")
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
    """Every probe head name `epcache probe --head` accepts, with its parameters and forward FLOPs per image."""
    from epcache.probe.heads import format_heads_table, heads_table

    with user_errors():
        rows = heads_table(dim=dim, num_classes=classes, num_tokens=patches, queries=_ints(queries, "--queries"),
                           d_out=_ints(d_out, "--d-out"))
    typer.echo(format_heads_table(rows))
    mp = next((r for r in rows if r.kind == "mp"), None)
    if mp is not None:  # PROBE_FAMILIES §1.3: published MP counts leave out the projection
        proj = 512 * dim + 512
        typer.echo(f"note: mp's {mp.params:,} include its {dim}->512 projection ({proj:,});\n"
                   f"      the MP paper counts without it ({(mp.params - proj) / 1e6:.2f} M here, 3.65 M at ViT-B)")


def _ints(text: str, option: str) -> tuple[int, ...]:
    from epcache.errors import ConfigError

    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"{option} takes comma-separated integers, got {text!r}") from None


command(short_help="Check every block's crc32c; --repair re-extracts bad blocks.")(_cli_store.verify)
command(name="ls", short_help="List the stores under ROOT (a directory or URL prefix).")(_cli_store.ls)
command(epilog=_cli_convert.CONVERT_EPILOG,
        short_help="Derive a smaller store (layers, pooled grid, dtype, format) without the backbone.")(
    _cli_convert.convert
)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
