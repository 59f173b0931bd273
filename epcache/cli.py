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
def models() -> None:
    """List the backbone aliases and the timm model each resolves to (any timm name works too)."""
    from epcache.extract import list_model_aliases

    rows = list_model_aliases()
    w = max(len(a.alias) for a in rows)
    typer.echo(f"{'alias':<{w}}  {'timm model':<44} family")
    for a in rows:
        note = "" if a.timm_weights else "  [needs --weights: timm has no such weights]"
        typer.echo(f"{a.alias:<{w}}  {a.timm_name:<44} {a.family}{note}")


@app.command()
def extract(
    model: Annotated[str, typer.Option(help="Backbone: an alias from `epcache models` or any timm model name.")],
    data: Annotated[str, typer.Option(help="Data root: an ImageFolder parent directory (or CSV base directory).")],
    out: Annotated[str, typer.Option(help="Store to write: a .zarr directory (default backend) or an .h5 file.")],
    split: Annotated[
        list[str] | None,
        typer.Option(help="NAME=SUBDIR or NAME=FILE.csv (path,label rows), repeatable. Default: train=train, val=val."),
    ] = None,
    layers: Annotated[
        str | None, typer.Option(help="Blocks to store: all, last, -4: (last 4), or 0,5,11. Default: all (ViT).")
    ] = None,
    views: Annotated[int, typer.Option(help="Augmented views per train image (RandomResizedCrop+flip).")] = 0,
    view_splits: Annotated[str, typer.Option(help="Splits that get the augmented views, comma-separated.")] = "train",
    dtype: Annotated[str, typer.Option(help="Stored dtype: float16, bfloat16 or float32.")] = "float16",
    format: Annotated[str | None, typer.Option(help="zarr or h5; default from the --out suffix.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass (times the number of views).")] = 64,
    workers: Annotated[int, typer.Option(help="DataLoader decoding processes (0: decode in the main process).")] = 4,
    weights: Annotated[str | None, typer.Option(help="Local checkpoint (.pth/.pt/.safetensors).")] = None,
    random_init: Annotated[bool, typer.Option(help="Use random weights explicitly (never a silent fallback).")] = False,
    final_norm: Annotated[bool, typer.Option(help="Apply the model's final norm (default: raw blocks).")] = False,
    img_size: Annotated[int | None, typer.Option(help="Input resolution override.")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
    amp: Annotated[str | None, typer.Option(help="Autocast on GPU: bf16 or fp16.")] = None,
    seed: Annotated[int, typer.Option(help="Seeds the stored order, the augmented views and random init.")] = 0,
    on_bad_image: Annotated[str, typer.Option(help="error (default) or skip (recorded in metadata).")] = "error",
    resume: Annotated[bool, typer.Option(help="Continue an interrupted extraction into an existing store.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing store at --out.")] = False,
    dry_run: Annotated[bool, typer.Option(help="Print layers, shapes and bytes, then exit without writing.")] = False,
    chunk_samples: Annotated[int | None, typer.Option(help="Samples per chunk (default: a few MB).")] = None,
    shard_samples: Annotated[int | None, typer.Option(help="Samples per zarr shard (default: automatic).")] = None,
    compressor: Annotated[str | None, typer.Option(help="zstd[:N] / blosc[:N] (zarr), gzip / lzf (h5).")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    break_lock: Annotated[
        bool, typer.Option(help="Remove the writer lock a crashed or killed extraction left on --out.")
    ] = False,
    allow_duplicate: Annotated[
        bool, typer.Option(help="Extract even if a complete store with the same provenance sits beside --out.")
    ] = False,
    pooled: Annotated[
        bool, typer.Option(help="Also store the model's own pooled output (forward_head(pre_logits=True)).")
    ] = False,
) -> None:
    """Stage 1: run a frozen backbone once over a dataset and store every requested layer's tokens."""
    from epcache.extract import ExtractConfig
    from epcache.extract import extract as run_extract

    with _user_errors():
        cfg = ExtractConfig(
            model=model, data=data, out=out, splits=_splits(split), layers=layers, views=views,
            view_splits=tuple(v for v in view_splits.split(",") if v), dtype=dtype, format=format,
            batch_size=batch_size, workers=workers, weights=weights, random_init=random_init,
            final_norm=final_norm, img_size=img_size, device=device, amp=amp, seed=seed,
            on_bad_image=on_bad_image, resume=resume, overwrite=overwrite, dry_run=dry_run,
            chunk_samples=chunk_samples, shard_samples=shard_samples, compressor=compressor,
            break_lock=break_lock, allow_duplicate=allow_duplicate, pooled=pooled,
        )
        result = run_extract(cfg, progress=progress)
    typer.echo(result.format_text())


def _splits(items: list[str] | None) -> dict[str, str]:
    from epcache.errors import ConfigError

    if not items:
        return {"train": "train", "val": "val"}
    out: dict[str, str] = {}
    for item in items:
        name, sep, where = item.partition("=")
        if not sep or not name or not where:
            raise ConfigError(f"--split takes NAME=SUBDIR or NAME=FILE.csv, got {item!r}")
        out[name] = where
    return out


@app.command()
def probe(
    store: Annotated[str, typer.Option(help="Feature store to train from (train split; eval split too by default).")],
    head: Annotated[str, typer.Option(help="Head kinds/specs, comma-separated: linear, ep, mhca, jepa, ...")] = "ep",
    queries: Annotated[str | None, typer.Option(help="EP queries M, comma list (default 32).")] = None,
    d_out: Annotated[str | None, typer.Option("--d-out", help="EP width divisors, comma list (default 1).")] = None,
    num_heads: Annotated[str | None, typer.Option(help="Attention heads of MHCA-style poolers, comma list.")] = None,
    layer: Annotated[str | None, typer.Option(help="One block index (alias of --layers).")] = None,
    layers: Annotated[str, typer.Option(help="Block indices, comma list, or all / last / last:K.")] = "last",
    layer_mix: Annotated[
        str, typer.Option(help="none (one config per layer) / concat / mean / tokens (all --layers as one input).")
    ] = "none",
    tokens: Annotated[
        str | None,
        typer.Option(help="cls, gap, cls+gap, pooled (linear) / patch, all, registers, patch+registers; comma list."),
    ] = None,
    recipe: Annotated[str, typer.Option(
        help="Training protocol: auto (works from 20 samples to ImageNet), ep-paper, dinov2-linear, capi-attentive. "
        "`epcache recipes` shows what each sets and its source; the flags below override one field each.")] = "auto",
    lr: Annotated[str | None, typer.Option(help="Absolute peak lrs, comma list (a grid, trained fused). "
                                           "Default: the recipe's grid.")] = None,
    blr: Annotated[str | None, typer.Option(help="Base lrs, lr = blr x batch / 256 (ep-paper: 0.1). "
                                            "Default: the recipe's.")] = None,
    wd: Annotated[str | None, typer.Option(help="Weight decays, comma list. Default: the recipe's.")] = None,
    optimizer: Annotated[str | None, typer.Option(help="lars, adamw or sgd; comma list. Default: the recipe's.")] = (
        None
    ),
    seeds: Annotated[str, typer.Option(help="Head-init seeds, comma list (mean and std are reported).")] = "0",
    epochs: Annotated[int | None, typer.Option(help="Evaluation epochs (exactly this many passes). "
                                               "Default: the recipe's, with its step floor.")] = None,
    warmup: Annotated[float | None, typer.Option(help="Linear warm-up epochs, then cosine to 0. "
                                                 "Default: the recipe's.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size. Default: the recipe's, shrunk to give >= 8 "
                                                   "steps per epoch on small sets.")] = None,
    min_steps: Annotated[int | None, typer.Option(help="Floor on optimiser steps (epochs become several passes). "
                                                  "Default: the recipe's (auto: 1000).")] = None,
    holdout: Annotated[float | None, typer.Option(help="Stratified fraction of train that selects epoch and config "
                                                  "(>= 1 per class when possible; 0: none). Default: 0.1.")] = None,
    shots: Annotated[int | None, typer.Option(help="Low-shot: K training samples per class.")] = None,
    fraction: Annotated[float | None, typer.Option(help="Low-shot: this fraction of each class.")] = None,
    train_split: Annotated[str, typer.Option(help="Split to train on.")] = "train",
    eval_split: Annotated[str, typer.Option(help="Split to report.")] = "val",
    eval_store: Annotated[str | None, typer.Option(help="Another store holding the eval split.")] = None,
    grid: Annotated[str | None, typer.Option(help="TOML sweep file (overrides these options).")] = None,
    out: Annotated[str | None, typer.Option(help="Run directory: results.jsonl, heads/, checkpoints.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    in_memory: Annotated[bool, typer.Option(help="Load the selected tokens once instead of streaming.")] = False,
    allow_incomplete: Annotated[bool, typer.Option(help="Train on the written part of an incomplete store.")] = False,
    data_seed: Annotated[int, typer.Option(help="Seeds holdout, low-shot subset, batch order and views.")] = 0,
    shard: Annotated[
        str | None, typer.Option(help="I/N: train part I of N of the sweep (job arrays; torchrun sets it).")
    ] = None,
    trust_store: Annotated[
        bool, typer.Option(help="Skip the store integrity checks (bytes, labels, ids, metadata); recorded in rows.")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show progress.")] = True,
) -> None:
    """Stage 2: train a sweep of probes from a store, every config sharing one pass over the data."""
    from epcache.probe import ProbeConfig
    from epcache.probe import probe as run_probe
    from epcache.probe.config import parse_heads, parse_layers, parse_list

    with _user_errors():
        cfg = ProbeConfig(
            store=store, head=parse_heads(head), queries=parse_list(queries, int), d_out=parse_list(d_out, int),
            num_heads=parse_list(num_heads, int), layers=parse_layers(layer if layer is not None else layers),
            tokens=parse_list(tokens, str), recipe=recipe, lr=parse_list(lr, float), blr=parse_list(blr, float),
            wd=parse_list(wd, float), optimizer=parse_list(optimizer, str), seeds=parse_list(seeds, int),
            epochs=epochs, warmup=warmup, batch_size=batch_size, min_steps=min_steps, holdout=holdout, shots=shots,
            fraction=fraction,
            train_split=train_split, eval_split=eval_split, eval_store=eval_store, grid=grid, out=out,
            device=device, in_memory=in_memory, allow_incomplete=allow_incomplete, data_seed=data_seed,
            shard=shard, trust_store=trust_store, layer_mix=parse_list(layer_mix, str),
        )
        result = run_probe(cfg, progress=progress)
    if not progress:  # with progress the library printed the plan and notes as it went
        for note in result.notes:
            typer.echo(note, err=True)
    typer.echo(result.summary)
    if result.out is not None:
        typer.echo(f"results: {result.out}")


@app.command()
def recipes() -> None:
    """List the training recipes `epcache probe --recipe` accepts: what each sets and where it comes from."""
    from epcache.probe.recipes import format_recipes

    typer.echo(format_recipes())


@app.command()
def report(
    rundir: Annotated[str, typer.Argument(help="Run directory written by `epcache probe --out`.")],
    out: Annotated[str | None, typer.Option(help="Where to write report.md and figures (default RUNDIR/report).")] = (
        None
    ),
    figures: Annotated[bool, typer.Option(help="Render PNG figures (needs matplotlib: epcache[plot]).")] = True,
) -> None:
    """Markdown report with the results tables and the paper's figures for this run."""
    from epcache.report import write_report

    with _user_errors():
        rep = write_report(rundir, out, figures=figures)
    typer.echo(f"report: {rep.markdown} ({rep.num_configs} configs, {len(rep.figures)} figures)")
    for f in rep.figures:
        typer.echo(f"  {f}")


@app.command()
def attention(
    rundir: Annotated[str, typer.Argument(help="Run directory written by `epcache probe --out`.")],
    config: Annotated[str, typer.Option(help="Config id (or unique id prefix) from results.jsonl.")],
    split: Annotated[str | None, typer.Option(help="Split to analyse (default: the run's eval split).")] = None,
    images: Annotated[int, typer.Option(help="Images shown in the attention grid.")] = 16,
    data: Annotated[str | None, typer.Option(help="Data root used for extraction (to overlay maps on images).")] = None,
    out: Annotated[str | None, typer.Option(help="Output directory (default RUNDIR/attention/ID).")] = None,
) -> None:
    """Per-query attention maps, entropies and the uniform-attention ablation of a trained head."""
    from epcache.report._attention import attention_report

    with _user_errors():
        res = attention_report(rundir, config, split=split, images=images, data_root=data, out=out)
    typer.echo(res.table.read_text())
    typer.echo(f"written: {res.table}, {res.json}" + (f", {res.png}" if res.png else ""))


@app.command()
def demo(
    out: Annotated[str, typer.Option(help="Directory for the generated data, store, run and report.")] = "epcache-demo",
    quick: Annotated[bool, typer.Option(help="A reduced demo (seconds), as the test-suite runs it.")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Generate a dataset, extract a random-init ViT, run a sweep and write the report, end to end."""
    from epcache.demo import DemoConfig, run_demo

    with _user_errors():
        res = run_demo(out, DemoConfig.quick() if quick else DemoConfig(), echo=typer.echo, progress=progress)
    typer.echo(f"demo finished in {res.seconds:.0f} s: {res.out}")


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
    mp = next((r for r in rows if r.kind == "mp"), None)
    if mp is not None:  # PROBE_FAMILIES §1.3: published MP counts leave out the projection
        proj = 512 * dim + 512
        typer.echo(f"note: mp's {mp.params:,} include its {dim}->512 projection ({proj:,}); the MP paper counts "
                   f"without it ({(mp.params - proj) / 1e6:.2f} M here, 3.65 M at ViT-B)")


def _ints(text: str, option: str) -> tuple[int, ...]:
    from epcache.errors import ConfigError

    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"{option} takes comma-separated integers, got {text!r}") from None


@app.command()
def verify(
    store: Annotated[str, typer.Argument(help="Feature store: a .zarr directory, an .h5 file or a URL.")],
    deep: Annotated[bool, typer.Option(help="Also scan every stored value for inf/nan.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
    repair: Annotated[bool, typer.Option(help="Re-extract the bad or missing blocks from the images.")] = False,
    data: Annotated[str | None, typer.Option(help="With --repair: the data root the store came from.")] = None,
    weights: Annotated[str | None, typer.Option(help="With --repair: the store's checkpoint (sha256 checked).")] = None,
    split: Annotated[
        list[str] | None, typer.Option(help="With --repair: NAME=SUBDIR for splits whose source is not recorded.")
    ] = None,
    device: Annotated[str | None, typer.Option(help="With --repair: default, the extraction's device.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="With --repair: the extraction's --batch-size.")] = None,
    workers: Annotated[int, typer.Option(help="With --repair: DataLoader decoding processes.")] = 4,
    break_lock: Annotated[bool, typer.Option(help="With --repair: remove a crashed extraction's lock.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Check every block's bytes against its crc32c record, and the metadata, ids and labels.

    Exit code 0: clean; 1: something is missing, corrupt or inconsistent (listed); 2: not a store.
    """
    from epcache.errors import ConfigError
    from epcache.store import verify_store

    with _user_errors():
        if repair:
            from epcache.extract import repair_store

            if data is None:
                raise ConfigError("--repair needs --data ROOT, the data root the store was extracted from")
            result = repair_store(
                store, data=data, weights=weights, splits=_splits(split) if split else None, device=device,
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


@app.command(name="ls")
def ls(
    root: Annotated[str, typer.Argument(help="Directory or URL prefix (s3://bucket/stores) to search for stores.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """List the stores under ROOT: backbone, weights, dataset, splits, layers, views, dtype, size, status."""
    from epcache.store import format_catalog, list_stores

    with _user_errors():
        entries = list_stores(root)
    typer.echo(json.dumps([e.to_json() for e in entries], indent=2) if as_json else format_catalog(entries, root))


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
