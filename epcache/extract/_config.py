"""What an extraction is asked to do (``ExtractConfig``), what it will do (``ExtractPlan``), and
what it did (``ExtractResult``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from epcache._docs import doc, document_fields
from epcache._text import human_bytes
from epcache.errors import ConfigError
from epcache.extract._pixels import default_workers
from epcache.store import TokenLayout
from epcache.store.describe.info import format_ranges, prefix_text
from epcache.store.describe.sizes import SizeOption, format_size_table
from epcache.store.layout.light import parse_keep
from epcache.store.layout.quant import resolve_quantization
from epcache.store.layout.taps import parse_taps

__all__ = ["ExtractConfig", "ExtractPlan", "ExtractResult", "SplitPlan"]

Dtype = Literal["float16", "bfloat16", "float32"]
Amp = Literal["bf16", "fp16"]
_DTYPES = ("float16", "bfloat16", "float32")
_ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4}
MAX_VIEWS = 256  # augmented views per image; far beyond any recipe (DINO uses 10, MAE 1)


def _default_splits() -> dict[str, str]:
    return {"train": "train", "val": "val"}


@document_fields
@dataclass(frozen=True)
class ExtractConfig:
    """One extraction: a backbone over a dataset's splits into one store.

    Fields that change the stored values (model, weights, layers, views, dtype, preprocessing,
    seed, amp) enter the store's provenance; the rest (batch size, workers, device, chunking)
    only change speed or files, so an interrupted run may resume with different values.
    """

    model: str = doc(doc="alias from `epcache models` or any timm name (with or without .tag)")
    data: Path | str = doc(doc="data root (ids are relative to it): a directory, fsspec URL (shards) or hf:DIR")
    out: Path | str = doc(doc="store: a .zarr directory, an .h5 file, or an fsspec URL (zarr)")
    splits: Mapping[str, str] = doc(
        default_factory=_default_splits,
        doc="split name -> its source: a subdirectory, a CSV file (path,label rows), a WebDataset shard pattern or an "
        "hf: dataset split",
    )
    layers: str | None = doc(None, doc="'all', 'last', 'last:4', '-4:', '0,5,11'; None: all (ViT) / last (convnet)")
    views: int = doc(0, doc="K augmented views per sample of the view_splits; view 0 is always the eval view")
    view_splits: tuple[str, ...] = doc(("train",), doc="splits that get the K augmented views (others V=1)")
    dtype: Dtype = doc("float16", doc="stored dtype: float16, bfloat16 or float32")
    format: Literal["zarr", "h5"] | None = doc(None, doc="zarr or h5; None: from the suffix of `out`")
    batch_size: int = doc(64, doc="samples per forward (the forward batch is batch_size x V images)")
    workers: int = doc(default_factory=default_workers, doc="decoding processes (min(4, CPUs)); 0: main process")
    weights: Path | None = doc(None, doc="local checkpoint (.pth/.pt/.safetensors); else the HF cache")
    random_init: bool = doc(False, doc="explicit random weights (never a silent fallback)")
    final_norm: bool = doc(
        False, doc="apply the model's final norm to every layer (off: raw block outputs); refused for a model whose "
        "final norm does not act on its tokens or maps (a ResNet, a ViT with fc_norm)"
    )
    img_size: int | None = doc(None, doc="input resolution override (model and transform)")
    model_kwargs: Mapping[str, Any] = doc(default_factory=dict, doc="extra timm.create_model kwargs")
    device: str = doc("cpu", doc="'cpu', 'cuda' or 'cuda:N'")
    amp: Amp | None = doc(
        None, doc="autocast dtype for the forward, meant for GPUs; on the CPU it applies too (slow without bf16 "
        "hardware; a one-line note says so), recorded like on a GPU; None: float32"
    )
    seed: int = doc(0, doc="seeds the stored-row permutation, augmented views and random init")
    on_bad_image: Literal["error", "skip"] = doc("error", doc="error, or skip: leave unreadable images out of the "
                                                        "split (their ids are recorded)")
    resume: bool = doc(False, doc="require an existing store and continue it")
    overwrite: bool = doc(False, doc="replace an existing store")
    dry_run: bool = doc(False, doc="plan only: print layers, shapes and bytes, write nothing")
    chunk_samples: int | None = doc(None, doc="samples per chunk; None: a few MB per chunk")
    shard_samples: int | None = doc(None, doc="samples per zarr shard (the write unit); None: automatic")
    compressor: str | None = doc(None, doc="'zstd[:level]', 'blosc[:level]' (zarr), 'gzip', 'lzf' (h5) or None")
    hf_cache_dir: Path | None = doc(None, doc="Hugging Face hub cache; default from HF_HUB_CACHE / HF_HOME")
    max_pending_blocks: int = doc(2, doc="writer queue bound: blocks in flight to the disk")
    break_lock: bool = doc(False, doc="remove a writer lock left by a crashed extraction (store/ops/lock.py)")
    allow_duplicate: bool = doc(False, doc="extract even if a complete store with this provenance sits beside `out`")
    record_paths: bool = doc(
        False, doc="record the data root as an absolute path; off: relative to the store's parent, or left out"
    )
    pooled: bool = doc(False, doc="also store the pooled output, forward_head(pre_logits=True) (cache_layout §3.4)")
    pool_patches: int = doc(1, doc="average KxK windows of the patch grid, prefix kept (cache_layout §2.4); 1: off")
    keep: str | None = doc(None, doc="light store: cls,gap,registers or cls,gap, the whole grid averaged into one "
                           "gap token (cache_layout §2.6); None: every token")
    taps: str | None = doc(None, doc="activations inside blocks, each a nested store <out>/taps/NAME (zarr only; "
                           "cache_layout §2.7): comma list of block (the default), attn_out, attn_norm, mlp_hidden, "
                           "mlp_out; NAME:gap keeps only CLS, registers and GAP (mlp_hidden is 4x wide)")
    wds_image_key: str = doc("jpg;jpeg;png;webp", doc="WebDataset: image member extensions, first present wins")
    wds_label_key: str = doc("cls", doc="WebDataset: extension of the member holding the integer label")
    image_column: str = doc("image", doc="hf: sources: the image column ({bytes, path} structs or bytes)")
    label_column: str = doc("label", doc="hf: sources: the integer label column")
    allow_outside_paths: bool = doc(
        False, doc="hf: sources: image cells holding only a path may name files outside the dataset directory "
        "(absolute or '..'); off: refused, as CSV paths always are"
    )
    decode: Literal["cpu", "gpu"] = doc("cpu", doc="gpu: decode JPEGs on the CUDA device (nvjpeg); else PIL in workers")
    masks: bool = doc(False, doc="segmentation: store each image's per-pixel class mask beside its tokens, from "
                      "<split>/images + <split>/masks or path,mask_path CSV rows (cache_layout §3.6)")
    mask_ignore_index: int = doc(255, doc="with masks: the mask value of unlabelled pixels (never a class index)")
    mask_column: str = doc("mask", doc="with masks, hf: sources: the column of each row's mask (like the image's)")
    quantize: str | None = doc(
        None, doc="lossy token storage (cache_layout §3.5): int8 (= int8-channel), int8-token, fp8; reads give dtype"
    )

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ConfigError(f"dtype {self.dtype!r} is not one of {', '.join(_DTYPES)}")
        object.__setattr__(self, "quantize", resolve_quantization(self.quantize))  # "int8" -> "int8-channel"
        keep = parse_keep(self.keep)
        object.__setattr__(self, "keep", None if keep is None else ",".join(keep))  # "gap,cls" -> "cls,gap"
        if keep is not None and self.pool_patches > 1:
            raise ConfigError("--keep averages the whole patch grid into one token; drop --pool-patches")
        object.__setattr__(self, "taps", ",".join(t.text() for t in parse_taps(self.taps)) or None)
        if self.amp not in (None, "bf16", "fp16"):
            raise ConfigError(f"amp {self.amp!r} is not one of bf16, fp16 (or None for float32)")
        if self.on_bad_image not in ("error", "skip"):
            raise ConfigError(f"on_bad_image {self.on_bad_image!r} must be 'error' or 'skip'")
        if self.decode not in ("cpu", "gpu"):
            raise ConfigError(f"decode {self.decode!r} must be cpu or gpu")
        if self.format not in (None, "zarr", "h5"):
            raise ConfigError(f"format {self.format!r} must be zarr or h5")
        if self.views < 0:
            raise ConfigError(f"views must be >= 0 (augmented views per image), got {self.views}")
        if self.views > MAX_VIEWS:  # every view of a block is held in memory at once: 100000 grows until killed
            raise ConfigError(
                f"views={self.views} augmented views per image is over the limit of {MAX_VIEWS} (each block holds "
                f"every view in memory); pass --views {MAX_VIEWS} or fewer"
            )
        for name, value in (("chunk_samples", self.chunk_samples), ("shard_samples", self.shard_samples)):
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1 (samples per file), got {value}")
        if self.pool_patches < 1:
            raise ConfigError(f"--pool-patches must be >= 1 (1 = no pooling), got {self.pool_patches}")
        if self.batch_size < 1 or self.workers < 0 or self.max_pending_blocks < 1:
            raise ConfigError("batch_size and max_pending_blocks must be >= 1 and workers >= 0")
        if self.img_size is not None and self.img_size < 1:
            raise ConfigError(f"img_size must be positive, got {self.img_size}")
        if self.weights is not None and self.random_init:
            raise ConfigError("--weights and --random-init exclude each other; pass one of them")
        if not 0 <= self.mask_ignore_index <= 65535:
            raise ConfigError(f"--mask-ignore-index must be in 0..65535, got {self.mask_ignore_index}")
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite exclude each other")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError(f"device {self.device!r} must be cpu, cuda or cuda:N")
        unknown = sorted(set(self.view_splits) - set(self.splits))
        if self.views and unknown:
            raise ConfigError(
                f"views={self.views} go to the splits {list(self.view_splits)}, but {unknown} are not among the "
                f"splits {sorted(self.splits)}; set view_splits (--view-splits) to splits you extract"
            )

    @property
    def effective_img_size(self) -> int | None:
        """``img_size``, else an ``img_size`` given in ``model_kwargs``."""
        if self.img_size is not None:
            return self.img_size
        v = self.model_kwargs.get("img_size")
        return int(v) if isinstance(v, int) else None

    def views_for(self, split: str) -> int:
        """V of a split: 1 + K for view splits, 1 otherwise."""
        return 1 + self.views if split in self.view_splits else 1


@dataclass(frozen=True, slots=True)
class SplitPlan:
    """One split as it will be stored."""

    name: str
    source: str  # subdirectory or CSV file, relative to the data root
    num_samples: int
    views: int  # V
    num_classes: int
    bytes_per_layer: int


@dataclass(frozen=True)
class ExtractPlan:
    """Everything decided before the first image is decoded (what `--dry-run` prints)."""

    requested_model: str
    model: str  # timm name with the tag of the weights
    weights: str  # where the weights come from
    num_model_layers: int
    layers: tuple[int, ...]  # absolute indices
    final_norm: bool
    layout: TokenLayout
    dim: int  # D
    num_tokens: int  # T
    dtype: Dtype
    input_size: tuple[int, int, int]
    splits: tuple[SplitPlan, ...]
    out: str
    format: str
    quantization: str | None = None  # cache_layout.md §3.5; None: tokens stored in `dtype`
    sizes: tuple[SizeOption, ...] = ()  # bytes of every storage option for this plan (store/describe/sizes.py)
    feature_map: bool = False  # a convnet's NCHW maps flattened: no prefix tokens
    full_bytes: int | None = None  # a light store (--keep): the bytes of every token in the same dtype
    taps: tuple[tuple[str, int, int], ...] = ()  # --taps: (tap as requested, D, bytes of its nested store)
    # `--dry-run`: the measured forward time (extract/_estimate.py), or why not; a measurement, not part of the plan
    estimate: str | None = field(default=None, compare=False)

    @property
    def total_bytes(self) -> int:
        """Bytes of the token arrays (and scales) as planned."""
        chosen = next((o.bytes for o in self.sizes if o.name == (self.quantization or self.dtype)), None)
        return chosen if chosen is not None else sum(s.bytes_per_layer for s in self.splits) * len(self.layers)

    def format_text(self) -> str:
        """Human-readable plan, one fact per line."""
        lay = self.layout
        prefix = prefix_text(lay.num_prefix, lay.cls_index, lay.num_registers, feature_map=self.feature_map)
        pooled = f" (patch grid pooled {lay.pool_patches}x{lay.pool_patches})" if lay.pool_patches > 1 else ""
        if lay.keep is not None:
            pooled = f" (light store: grid averaged into one gap token, keeps {','.join(lay.keep)})"
        lines = [
            f"model      {self.model}  (from {self.requested_model!r}; weights: {self.weights})",
            f"input      {self.input_size[1]}x{self.input_size[2]}",
            f"layers     {format_ranges(self.layers)} of 0..{self.num_model_layers - 1}"
            f"{'  (final norm applied)' if self.final_norm else '  (raw block outputs)'}",
            f"tokens     T={self.num_tokens}: {prefix} + {lay.grid[0]}x{lay.grid[1]} patches{pooled}; D={self.dim}",
            f"dtype      {self.dtype}" + (f" (stored as {self.quantization} codes + scales)" * bool(self.quantization)),
            f"store      {self.out} ({self.format})",
        ]
        for s in self.splits:
            shape = f"[{s.num_samples}, {s.views}, {self.num_tokens}, {self.dim}]"
            lines.append(
                f"split      {s.name:<8} {s.source!r}: {s.num_samples} samples, {s.num_classes} classes, "
                f"{shape} per layer = {human_bytes(s.bytes_per_layer)} x {len(self.layers)} layers "
                f"= {human_bytes(s.bytes_per_layer * len(self.layers))}"
            )
        lines.append(f"total      {human_bytes(self.total_bytes)}" + (" (block outputs)" if self.taps else ""))
        lines.extend(f"tap        {name:<14} D={dim}: {human_bytes(nbytes)} ({nbytes / max(1, self.total_bytes):.2f}x "
                     "the block outputs)" for name, dim, nbytes in self.taps)
        if self.full_bytes:
            lines.append(f"light      {human_bytes(self.total_bytes)} instead of {human_bytes(self.full_bytes)} with "
                         f"every token ({self.total_bytes / self.full_bytes:.3f}x)")
        if self.estimate:
            lines.append(f"time       {self.estimate}")
        if self.sizes:
            lines.append(format_size_table(self.sizes, current=self.quantization or self.dtype))
        return "\n".join(lines)


@dataclass(frozen=True)
class ExtractResult:
    """What a call to ``extract`` did."""

    status: Literal["complete", "already-complete", "dry-run"]
    store: str
    plan: ExtractPlan
    provenance: str | None = None  # the store's provenance key (None for a dry run)
    resumed: bool = False  # True when the store existed and only missing blocks were extracted
    samples: Mapping[str, int] = field(default_factory=dict)  # samples forwarded in this call, per split
    blocks_written: int = 0
    seconds: float = 0.0  # wall time of the extraction loop
    writer_wait_s: float = 0.0  # time compute waited for the disk (should be ~0)
    skipped: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # unreadable images left out
    dropped_keys: tuple[str, ...] = ()  # checkpoint keys not loaded (classifier, decoder)
    missing_unused: tuple[str, ...] = ()  # final-norm keys absent from the checkpoint, unused
    world_size: int = 1  # processes that extracted together (torchrun); samples and blocks are their sums

    @property
    def images_per_s(self) -> float:
        n = sum(self.samples.values())
        return n / self.seconds if self.seconds > 0 else 0.0

    def format_text(self) -> str:
        """One-paragraph summary for the CLI."""
        if self.status == "dry-run":
            return self.plan.format_text() + "\n(dry run: nothing written)"
        if self.status == "already-complete":
            return (
                f"{self.store} is already complete for this configuration (provenance {self.provenance}); nothing to do"
            )
        n = sum(self.samples.values())
        verb = "resumed and completed" if self.resumed else "extracted"
        ranks = f" on {self.world_size} ranks" if self.world_size > 1 else ""
        lines = [
            f"{verb} {self.store}{ranks}: {n} samples in {self.seconds:.1f} s ({self.images_per_s:.1f} samples/s), "
            f"{self.blocks_written} blocks; writer stall {self.writer_wait_s:.1f} s",
            f"provenance {self.provenance}",
        ]
        for split, ids in self.skipped.items():
            if ids:
                lines.append(f"skipped {len(ids)} unreadable images in {split!r} (listed in the store's extra/skipped)")
        if self.dropped_keys:
            keys = ", ".join(self.dropped_keys[:4])
            lines.append(f"checkpoint keys not loaded: {len(self.dropped_keys)} (e.g. {keys})")
        if self.missing_unused:
            lines.append(f"checkpoint lacks {', '.join(self.missing_unused)} (final norm, not applied)")
        return "\n".join(lines)


def itemsize(dtype: str) -> int:
    """Bytes per element of a store dtype (for the plan's size estimate)."""
    return _ITEMSIZE[dtype]
