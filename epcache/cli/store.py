"""The store-side commands (info, models, extract, verify, ls), registered on the app by `epcache.cli`.

Each is a thin wrapper over one library function; see `epcache.cli` for the conventions.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from epcache._cli_base import STORE_HELP, ChunkSamplesOption, CompressorOption, ShardSamplesOption, user_errors
from epcache.errors import ConfigError

__all__ = ["EXTRACT_EPILOG", "extract", "info", "ls", "models", "verify"]


def info(
    store: Annotated[str, typer.Argument(metavar="STORE", help=STORE_HELP, show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Show a store's backbone, splits, layers, token layout, dtype, size and completeness."""
    from epcache.store import describe_store, format_store_info  # lazy: loads numpy, zarr only when this runs

    with user_errors():
        desc = describe_store(store)
    typer.echo(json.dumps(desc.to_json(), indent=2) if as_json else format_store_info(desc))


def models() -> None:
    """List the backbone aliases and the timm model each resolves to (any timm name works too)."""
    from epcache.extract import list_model_aliases  # lazy: loads PIL, numpy, zarr only when this runs

    rows = list_model_aliases()
    w = max(len(a.alias) for a in rows)
    t = max(len(a.timm_name) for a in rows)
    typer.echo(f"{'alias':<{w}}  {'timm model':<{t}}  family")
    for a in rows:
        note = "" if a.timm_weights else "  [needs --weights FILE]"
        typer.echo(f"{a.alias:<{w}}  {a.timm_name:<{t}}  {a.family}{note}")


EXTRACT_EPILOG = """Examples:
  epcache extract --model mae_vitb --weights mae_pretrain_vit_base.pth --data /data/imagenet \\
      --layers -4: --out stores/in1k_mae_vitb.zarr --dry-run
  epcache extract --model vit_tiny_patch16_224 --random-init --img-size 64 \\
      --model-kwargs '{"depth": 4, "patch_size": 8}' --data epcache-demo/data --out demo.zarr
  epcache extract --model dinov2_vitb --data /data/imagenet --layers last --pool-patches 2 \\
      --out stores/in1k_dinov2_pool2.zarr   # 16x16 grid stored as 8x8 means
  epcache extract --model mae_vitb --data /data/wds \\
      --split 'train=in1k-train-{000000..001281}.tar' \\
      --split 'val=in1k-val-{000000..000049}.tar' --out in1k.zarr
  epcache extract --model mae_vitb --data hf:/data/imagenet-1k \\
      --split train=train --split val=validation --out in1k.zarr"""


def extract(
    model: Annotated[
        str, typer.Option(metavar="NAME", help="Backbone: an alias from `epcache models` or any timm model name.")
    ],
    data: Annotated[
        str, typer.Option(metavar="ROOT", help="Data root: an ImageFolder parent directory (or CSV base directory), "
                          "a WebDataset shard directory or URL (or one shard pattern), or hf:DIR (HF dataset).")
    ],
    out: Annotated[
        str, typer.Option(metavar="STORE", help="Store to write: a .zarr directory (zarr v3) or an .h5 file (HDF5).")
    ],
    split: Annotated[
        list[str] | None,
        typer.Option(
            metavar="NAME=SRC", help="NAME=SUBDIR, NAME=FILE.csv (path,label rows), NAME=SHARDS-{0..9}.tar or "
            "NAME=HF_SPLIT; repeat for each split.",
            show_default="train=train, val=val",
        ),
    ] = None,
    layers: Annotated[
        str | None,
        typer.Option(metavar="SPEC", help="Blocks to store: all, last, -4: (the last 4) or 0,5,11.",
                     show_default="all (ViT), last (convnet)"),
    ] = None,
    views: Annotated[
        int, typer.Option(metavar="K", help="Augmented views per train image (RandomResizedCrop+flip).")
    ] = 0,
    view_splits: Annotated[
        str, typer.Option(metavar="NAMES", help="Splits that get the augmented views, comma-separated.")
    ] = "train",
    dtype: Annotated[
        str, typer.Option("--dtype", metavar="DTYPE", help="Stored dtype: float16, bfloat16 or float32.")
    ] = "float16",
    format: Annotated[
        str | None, typer.Option("--format", metavar="FORMAT", help="zarr or h5.", show_default="from the --out suffix")
    ] = None,
    batch_size: Annotated[int, typer.Option(metavar="N", help="Images per forward pass (times the views).")] = 64,
    workers: Annotated[
        int | None, typer.Option(metavar="N", help="Decoding processes (0: main process).", show_default="min(4, CPUs)")
    ] = None,
    weights: Annotated[
        str | None,
        typer.Option(metavar="FILE", help="Local checkpoint (.pth/.pt/.safetensors).",
                     show_default="timm weights in the local Hugging Face cache"),
    ] = None,
    random_init: Annotated[bool, typer.Option(help="Use random weights explicitly (never a silent fallback).")] = False,
    final_norm: Annotated[
        bool, typer.Option(help="Apply the model's final norm (off: raw block outputs); refused for a model whose "
                           "final norm does not act on its tokens or maps (a ResNet, a ViT with fc_norm).")
    ] = False,
    img_size: Annotated[
        int | None, typer.Option(metavar="PX", help="Input resolution override.", show_default="the model's")
    ] = None,
    model_kwargs: Annotated[
        str | None,
        typer.Option(metavar="JSON", help='Extra timm.create_model arguments as a JSON object, e.g. \'{"depth": 4}\'.'),
    ] = None,
    device: Annotated[str, typer.Option("--device", metavar="DEVICE", help="cpu, cuda or cuda:N.")] = "cpu",
    amp: Annotated[
        str | None,
        typer.Option(metavar="DTYPE", help="Autocast the forward: bf16 or fp16, meant for GPUs; on the CPU it applies "
                     "too (a one-line note says so; slow without bf16 hardware) and is recorded.",
                     show_default="off (float32)"),
    ] = None,
    seed: Annotated[int, typer.Option(metavar="N", help="Seeds the stored order, the views and random init.")] = 0,
    on_bad_image: Annotated[
        str, typer.Option(metavar="ACTION", help="error, or skip (skipped ids are recorded in the metadata).")
    ] = "error",
    resume: Annotated[bool, typer.Option(help="Continue an interrupted extraction into an existing store.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing store at --out.")] = False,
    dry_run: Annotated[bool, typer.Option(help="Print layers, shapes and bytes, then exit without writing.")] = False,
    chunk_samples: ChunkSamplesOption = None,
    shard_samples: ShardSamplesOption = None,
    compressor: CompressorOption = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    break_lock: Annotated[
        bool, typer.Option(help="Remove the writer lock a crashed or killed extraction left on --out.")
    ] = False,
    allow_duplicate: Annotated[
        bool, typer.Option(help="Extract even if a complete store with the same provenance sits beside --out.")
    ] = False,
    record_paths: Annotated[
        bool, typer.Option(help="Record the data root as an absolute host path; without it the root is recorded "
                           "relative to the store's directory, or left out (cache_layout.md §2.1).")
    ] = False,
    pooled: Annotated[
        bool, typer.Option(help="Also store the model's own pooled output (forward_head(pre_logits=True)).")
    ] = False,
    pool_patches: Annotated[
        int, typer.Option(metavar="K", help="Average KxK windows of the patch grid (prefix tokens kept); 1: off.")
    ] = 1,
    wds_image_key: Annotated[
        str, typer.Option(metavar="EXTS", help="WebDataset: image member extensions, ';'-separated, first found wins.")
    ] = "jpg;jpeg;png;webp",
    wds_label_key: Annotated[str, typer.Option(metavar="EXT", help="WebDataset: member holding the integer label.")] = (
        "cls"
    ),
    image_column: Annotated[str, typer.Option(metavar="COL", help="hf: datasets: the image column.")] = "image",
    label_column: Annotated[str, typer.Option(metavar="COL", help="hf: datasets: the integer label column.")] = "label",
    allow_outside_paths: Annotated[
        bool, typer.Option(help="hf: datasets: image cells holding only a path may name files outside the dataset "
                           "directory (absolute or '..'); off: refused, as CSV paths always are.")
    ] = False,
    decode: Annotated[
        str, typer.Option(metavar="WHERE", help="cpu (PIL in the workers) or gpu (nvjpeg on --device cuda).")
    ] = "cpu",
    quantize: Annotated[
        str | None,
        typer.Option(
            metavar="SCHEME",
            help="Store int8/fp8 codes + scales: int8 (= int8-channel), int8-token or fp8; reads give --dtype.",
            show_default="off",
        ),
    ] = None,
) -> None:
    """Stage 1: run a frozen backbone once over a dataset and store every requested layer's tokens."""
    from epcache.extract import ExtractConfig  # lazy: loads PIL, numpy, zarr only when this runs
    from epcache.extract import extract as run_extract  # lazy: loads PIL, numpy, zarr only when this runs
    from epcache.launch.capture import handed_to_launcher  # lazy: loads numpy, zarr only when this runs

    with user_errors():
        cfg = ExtractConfig(
            model=model, data=data, out=out, splits=_splits(split), layers=layers, views=views,
            view_splits=tuple(v for v in view_splits.split(",") if v), dtype=dtype, format=format,
            batch_size=batch_size, weights=weights, random_init=random_init,
            final_norm=final_norm, img_size=img_size, model_kwargs=_json_object(model_kwargs, "--model-kwargs"),
            device=device, amp=amp, seed=seed,
            on_bad_image=on_bad_image, resume=resume, overwrite=overwrite, dry_run=dry_run,
            chunk_samples=chunk_samples, shard_samples=shard_samples, compressor=compressor,
            break_lock=break_lock, allow_duplicate=allow_duplicate, record_paths=record_paths, pooled=pooled,
            pool_patches=pool_patches, quantize=quantize,
            wds_image_key=wds_image_key, wds_label_key=wds_label_key, image_column=image_column,
            label_column=label_column, allow_outside_paths=allow_outside_paths,
            decode=decode, **({} if workers is None else {"workers": workers}),  # type: ignore[arg-type]
        )
        if handed_to_launcher(cfg):  # `epcache submit ... -- extract ...`: the launcher runs it as units
            return
        result = run_extract(cfg, progress=progress)
    typer.echo(result.format_text())


def _splits(items: list[str] | None) -> dict[str, str]:

    if not items:
        return {"train": "train", "val": "val"}
    out: dict[str, str] = {}
    for item in items:
        name, sep, where = item.partition("=")
        if not sep or not name or not where:
            raise ConfigError(f"--split takes NAME=SUBDIR or NAME=FILE.csv, got {item!r}")
        if name in out:  # the last one used to win silently: a store whose "train" is val
            raise ConfigError(
                f"--split {name}= is given twice ({name}={out[name]} and {item}); give each split name once"
            )
        out[name] = where
    return out


def _json_object(text: str | None, option: str) -> dict[str, object]:
    """A JSON object given on the command line (``--model-kwargs '{"depth": 4}'``)."""

    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"{option} takes a JSON object such as '{{\"depth\": 4, \"patch_size\": 8}}'; {text!r} is not JSON "
            f"({e.msg})"
        ) from None
    if not isinstance(value, dict):
        raise ConfigError(f"{option} takes a JSON object ({{...}}), got {type(value).__name__} {text!r}")
    return value


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
    from epcache.store import verify_store  # lazy: loads numpy, zarr only when this runs

    with user_errors():
        if repair:
            from epcache.extract import repair_store  # lazy: loads PIL, numpy, zarr only when this runs

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


def ls(
    root: Annotated[
        str,
        typer.Argument(metavar="ROOT", help="Directory or URL prefix (s3://bucket/stores) to search for stores.",
                       show_default=False),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """List the stores under ROOT: backbone, weights, dataset, splits, layers, views, dtype, size, status."""
    from epcache.store import format_catalog, list_stores  # lazy: loads numpy, zarr only when this runs

    with user_errors():
        entries = list_stores(root)
    typer.echo(json.dumps([e.to_json() for e in entries], indent=2) if as_json else format_catalog(entries, root))
