"""`epcache extract` (stage 1) and `epcache models`, the backbones it knows by name.

The options of `extract` are ExtractConfig's fields under the same names (``--split`` sets
``splits``): their help is the field's doc (``HelpCommand``), ``help=`` here adds only what the
command line needs, and the parsed options become the config in one call (:func:`extract_config`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any

import typer

from epcache.cli.common import config_options, documented_by, user_errors
from epcache.errors import ConfigError

if TYPE_CHECKING:
    from epcache.extract import ExtractConfig

__all__ = ["EXTRACT_EPILOG", "ExtractHelp", "extract", "extract_config", "models", "parse_splits"]

RENAMES = {"split": "splits"}  # option -> ExtractConfig field, where the names differ
CLI_ONLY = ("progress", "steps")  # options that are not ExtractConfig fields


def models() -> None:
    """List the backbone aliases and the timm model each resolves to (any timm name works too)."""
    from epcache.extract import list_model_aliases  # lazy: keeps PIL, zarr, numpy out of `epcache --help`

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
    ctx: typer.Context,
    model: Annotated[str, typer.Option(metavar="NAME")],
    data: Annotated[
        str, typer.Option(metavar="ROOT", help="an ImageFolder parent directory (or CSV base directory), a WebDataset "
                          "shard directory or URL (or one shard pattern), or hf:DIR (HF dataset)")
    ],
    out: Annotated[str, typer.Option(metavar="STORE")],
    split: Annotated[
        list[str] | None,
        typer.Option(metavar="NAME=SRC", help="NAME=SUBDIR, NAME=FILE.csv, NAME=SHARDS-{0..9}.tar or NAME=HF_SPLIT; "
                     "repeat for each split", show_default="train=train, val=val"),
    ] = None,
    layers: Annotated[str | None, typer.Option(metavar="SPEC", show_default="all (ViT), last (convnet)")] = None,
    views: Annotated[int, typer.Option(metavar="K", help="RandomResizedCrop+flip")] = 0,
    view_splits: Annotated[str, typer.Option(metavar="NAMES", help="comma list")] = "train",
    dtype: Annotated[str, typer.Option("--dtype", metavar="DTYPE")] = "float16",
    format: Annotated[str | None, typer.Option("--format", metavar="FORMAT", show_default="from the --out suffix")] = (
        None
    ),
    batch_size: Annotated[int, typer.Option(metavar="N")] = 64,
    workers: Annotated[int | None, typer.Option(metavar="N", show_default="min(4, CPUs)")] = None,
    weights: Annotated[
        list[str] | None,
        typer.Option(metavar="FILE", help="several (repeated, a comma list or a quoted glob 'ckpts/*.pth'): a "
                     "checkpoint series, one store per checkpoint in --out DIR as DIR/<checkpoint stem>.zarr",
                     show_default="timm weights in the local Hugging Face cache"),
    ] = None,
    steps: Annotated[
        str | None, typer.Option(metavar="N,...", help="a series' training steps, one per checkpoint in listed order",
                                 show_default="the last integer in each checkpoint's file name")
    ] = None,
    random_init: Annotated[bool, typer.Option()] = False,
    final_norm: Annotated[bool, typer.Option()] = False,
    img_size: Annotated[int | None, typer.Option(metavar="PX", show_default="the model's")] = None,
    model_kwargs: Annotated[
        str | None, typer.Option(metavar="JSON", help='a JSON object, e.g. \'{"depth": 4}\'')
    ] = None,
    device: Annotated[str, typer.Option("--device", metavar="DEVICE")] = "cpu",
    amp: Annotated[str | None, typer.Option(metavar="DTYPE", show_default="off (float32)")] = None,
    seed: Annotated[int, typer.Option(metavar="N")] = 0,
    on_bad_image: Annotated[str, typer.Option(metavar="ACTION")] = "error",
    resume: Annotated[bool, typer.Option()] = False,
    overwrite: Annotated[bool, typer.Option()] = False,
    dry_run: Annotated[bool, typer.Option()] = False,
    chunk_samples: Annotated[int | None, typer.Option(metavar="N", show_default="a few MB per chunk")] = None,
    shard_samples: Annotated[int | None, typer.Option(metavar="N", show_default="automatic")] = None,
    compressor: Annotated[str | None, typer.Option(metavar="CODEC", show_default="none")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    break_lock: Annotated[bool, typer.Option()] = False,
    allow_duplicate: Annotated[bool, typer.Option()] = False,
    record_paths: Annotated[bool, typer.Option()] = False,
    pooled: Annotated[bool, typer.Option()] = False,
    pool_patches: Annotated[int, typer.Option(metavar="K")] = 1,
    keep: Annotated[str | None, typer.Option(metavar="TOKENS", show_default="every token")] = None,
    taps: Annotated[str | None, typer.Option(metavar="NAMES", show_default="block")] = None,
    wds_image_key: Annotated[str, typer.Option(metavar="EXTS", help="';'-separated")] = "jpg;jpeg;png;webp",
    wds_label_key: Annotated[str, typer.Option(metavar="EXT")] = "cls",
    image_column: Annotated[str, typer.Option(metavar="COL")] = "image",
    label_column: Annotated[str, typer.Option(metavar="COL")] = "label",
    allow_outside_paths: Annotated[bool, typer.Option()] = False,
    decode: Annotated[str, typer.Option(metavar="WHERE")] = "cpu",
    quantize: Annotated[str | None, typer.Option(metavar="SCHEME", show_default="off")] = None,
    masks: Annotated[bool, typer.Option()] = False,
    mask_ignore_index: Annotated[int, typer.Option(metavar="V")] = 255,
    mask_column: Annotated[str, typer.Option("--mask-column", "--hf-mask-key", metavar="COL")] = "mask",
) -> None:
    """Stage 1: run a frozen backbone once over a dataset and store every requested layer's tokens."""
    from epcache.extract import extract_store  # lazy: keeps PIL, zarr, numpy out of `epcache --help`
    from epcache.launch.capture import handed_to_launcher  # lazy: keeps torch, PIL, zarr, numpy out of `epcache --help`

    with user_errors():
        if weights and is_series_option(weights):
            _extract_series(ctx.params, weights, steps, progress=progress)
            return
        cfg = extract_config(ctx.params)
        if handed_to_launcher(cfg):  # `epcache submit ... -- extract ...`: the launcher runs it as units
            return
        result = extract_store(cfg, progress=progress)
    typer.echo(result.format_text())


def is_series_option(weights: list[str]) -> bool:
    """Whether ``--weights`` names a checkpoint series (repeated, a comma list or a glob), not one file."""
    from epcache.extract import is_series  # lazy: keeps PIL, zarr, numpy out of `epcache --help`

    return is_series(weights)


def _extract_series(options: Mapping[str, Any], weights: list[str], steps: str | None, *, progress: bool) -> None:
    """One store per checkpoint (epcache/extract/_series.py states the naming and step rules)."""
    from epcache.extract import extract_series, list_checkpoints  # lazy: keeps PIL, zarr, numpy out of `--help`

    series = list_checkpoints(weights, _ints(steps, "--steps") if steps is not None else None)
    cfg = extract_config({**options, "weights": None})
    for ckpt, result in zip(series, extract_series(cfg, series, progress=progress), strict=True):
        typer.echo(f"step {ckpt.step} ({ckpt.path.name}):\n{result.format_text()}")


def _ints(text: str, option: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{option} takes comma-separated integers such as 0,12500,25000, got {text!r}") from None


def extract_config(options: Mapping[str, Any]) -> ExtractConfig:
    """The ExtractConfig of `epcache extract`'s parsed options: the texts that hold a list or JSON are read here.

    Raises:
        ConfigError: an option's text does not read, or the config refuses a value.
    """
    from epcache.extract import ExtractConfig  # lazy: keeps PIL, zarr, numpy out of `epcache --help`

    fields = config_options(options, CLI_ONLY, **RENAMES)
    fields["splits"] = parse_splits(fields["splits"])
    fields["view_splits"] = tuple(v for v in fields["view_splits"].split(",") if v)
    fields["model_kwargs"] = _json_object(fields["model_kwargs"], "--model-kwargs")
    if isinstance(fields.get("weights"), list | tuple):  # the option may repeat; one file here (a series is not)
        fields["weights"] = fields["weights"][0] if fields["weights"] else None
    if fields["workers"] is None:  # the field's own default: min(4, CPUs)
        del fields["workers"]
    return ExtractConfig(**fields)


def _extract_config_class() -> type:
    from epcache.extract import ExtractConfig  # lazy: keeps PIL, zarr, numpy out of `epcache --help`

    return ExtractConfig


ExtractHelp = documented_by(_extract_config_class, **RENAMES)


def parse_splits(items: list[str] | tuple[str, ...] | None) -> dict[str, str]:
    """``--split NAME=SRC`` options as ``{name: source}``; none given: train=train, val=val.

    Raises:
        ConfigError: an item is not NAME=SRC, or names a split twice.
    """
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


