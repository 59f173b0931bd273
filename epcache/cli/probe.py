"""`epcache probe`: the sweep's options, each turned into one ProbeConfig field, then one library call.

Registered on the app by ``epcache/cli.py``; kept apart because its options are most of the CLI.
"""

from __future__ import annotations

from typing import Annotated

import typer

from epcache._cli_base import user_errors

__all__ = ["PROBE_EPILOG", "probe"]


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
        str | None,
        typer.Option(metavar="N", help="Evaluation epochs: exactly N passes over the training set.",
                     show_default="the recipe's, with its step floor"),
    ] = None,
    warmup: Annotated[
        str | None,
        typer.Option(metavar="EPOCHS", help="Linear warm-up epochs, then cosine to 0.", show_default="the recipe's"),
    ] = None,
    batch_size: Annotated[
        str | None,
        typer.Option(metavar="N", help="Training batch size.",
                     show_default="the recipe's, shrunk to give >= 8 steps per epoch"),
    ] = None,
    min_steps: Annotated[
        str | None,
        typer.Option(metavar="N", help="Floor on optimiser steps (an epoch becomes several passes).",
                     show_default="the recipe's; auto: 1000"),
    ] = None,
    holdout: Annotated[
        str | None,
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
        str | None, typer.Option(metavar="FRAC", help="Low-shot: this fraction of each class.")
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
    in_memory: Annotated[
        bool | None,
        typer.Option("--in-memory/--no-in-memory",
                     help="Hold the selected training tokens in RAM in the compute dtype (converted once) or stream "
                     "them every epoch; default auto: held when they fit in a quarter of the available RAM.",
                     show_default="auto"),
    ] = None,
    eval_curve: Annotated[bool, typer.Option(help="Score the eval split every epoch (curves, oracle); "
                                             "--no-eval-curve scores it once, at the end.")] = True,
    allow_incomplete: Annotated[bool, typer.Option(help="Train on the written part of an incomplete store.")] = False,
    data_seed: Annotated[
        str, typer.Option(metavar="N", help="Seeds holdout, low-shot subset, batch order and views.")
    ] = "0",
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
        str | None, typer.Option(metavar="GB", help="Evict least recently used --cache-dir entries beyond GB.",
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
        str, typer.Option(metavar="N", help="Few-shot draws per shot count (needs --shots); mean ± std over draws.")
    ] = "1",
) -> None:
    """Stage 2: train a sweep of probes from a store, every config sharing one pass over the data."""
    from epcache.launch.capture import handed_to_launcher  # lazy: loads numpy, zarr only when this runs
    from epcache.probe import ProbeConfig  # lazy: loads numpy, safetensors, torch only when this runs
    from epcache.probe import probe as run_probe  # lazy: loads numpy, safetensors, torch only when this runs

    with user_errors():  # the options' text is read and checked by ProbeConfig, as grid files and Python are
        cfg = ProbeConfig.from_cli(
            store=store, head=head, queries=queries, d_out=d_out,
            num_heads=num_heads, layers=layer if layer is not None else layers,
            tokens=tokens, recipe=recipe, lr=lr, blr=blr,
            wd=wd, optimizer=optimizer, seeds=seeds,
            epochs=epochs, warmup=warmup, batch_size=batch_size, min_steps=min_steps, holdout=holdout,
            shots=shots, k=k, temperature=temperature,
            c_preset=c_preset, tries=tries,
            fraction=fraction,
            train_split=train_split, eval_split=eval_split, eval_store=eval_store, grid=grid, out=out,
            device=device, amp=amp, compile=compile, in_memory=in_memory, eval_curve=eval_curve,
            allow_incomplete=allow_incomplete, data_seed=data_seed,
            shard=shard, trust_store=trust_store, layer_mix=layer_mix,
            cache_dir=cache_dir, cache_max_gb=cache_max_gb,
        )
        if handed_to_launcher(cfg):  # `epcache submit ... -- probe ...`: the launcher runs it as layer units
            return
        result = run_probe(cfg, progress=progress)
    if not progress:  # with progress the library printed the plan and notes as it went
        for note in result.notes:
            typer.echo(note, err=True)
    typer.echo(result.summary)
    if result.out is not None:
        typer.echo(f"results, heads and checkpoints: {result.out}\nnext: epcache report {result.out}")
    else:
        typer.echo("nothing saved (no --out RUNDIR): pass --out RUNDIR to keep results and heads")
