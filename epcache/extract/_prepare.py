"""Planning an extraction: everything resolved before weights are loaded or a store is touched.

Separate from the run so ``--dry-run`` and every user error (unknown model, missing weights,
layers out of range, bad splits) happen with no side effect at all.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import epcache
from epcache.errors import ConfigError
from epcache.extract._backbone import LoadReport, build_meta_model
from epcache.extract._config import ExtractConfig, ExtractPlan, SplitPlan, itemsize
from epcache.extract._forward import ModelGeometry, inspect_model
from epcache.extract._mask_sources import scan_mask_splits
from epcache.extract._models import resolve_model
from epcache.extract._pooled_output import pooled_width
from epcache.extract._recorded import portable_data_root, portable_location, portable_split_source
from epcache.extract._sources import SourceOptions, SplitSource, data_location, scan_splits
from epcache.extract._taps import inspect_taps, tap_geometry, taps_key
from epcache.extract._transforms import ViewAugment, create_eval_transform, resolve_data_config
from epcache.extract._weights import WeightsSource, locate_weights
from epcache.store import BackboneMeta, StoreMeta
from epcache.store.describe.sizes import SizeOption, size_options
from epcache.store.layout.chunking import plan_chunks
from epcache.store.layout.dense import DenseInfo, dense_document
from epcache.store.layout.light import light_layout, parse_keep
from epcache.store.layout.poolgrid import check_poolable
from epcache.store.layout.taps import TapSpec, parse_taps
from epcache.store.open import detect_format

__all__ = ["Prepared", "prepare", "store_meta"]


@dataclass
class Prepared:
    """Everything resolved before weights are loaded (mutable: skip validation narrows splits)."""

    config: ExtractConfig
    source: WeightsSource
    geometry: ModelGeometry
    data_config: dict[str, Any]
    eval_transform: Any
    augment: ViewAugment | None
    sources: dict[str, SplitSource]  # as listed
    sources_in_store: dict[str, SplitSource]  # as stored (unreadable images left out when skipping)
    plan: ExtractPlan
    pooled_dim: int | None = None  # width of the model's pooled output when --pooled, else None
    stored: ModelGeometry | None = None  # the layers as stored: ``geometry`` with its grids pooled (--pool-patches)
    step: int | None = None  # training step of the checkpoint, in a checkpoint series (extract/_series.py)
    taps: tuple[TapSpec, ...] = ()  # --taps, block left out
    tap_raw: dict[str, ModelGeometry] = dataclasses.field(default_factory=dict)  # each tap as the model gives it
    tap_stored: dict[str, ModelGeometry] = dataclasses.field(default_factory=dict)  # each tap as its store holds it
    dense: DenseInfo | None = None  # --masks: what the stored mask values mean (cache_layout.md §3.6)

    @property
    def store_geometry(self) -> ModelGeometry:
        return self.stored if self.stored is not None else self.geometry


def prepare(config: ExtractConfig) -> Prepared:
    try:
        json.dumps(dict(config.model_kwargs))
    except (TypeError, ValueError):
        raise ConfigError(f"model_kwargs {dict(config.model_kwargs)} must be JSON values (they are recorded)") from None
    resolved = resolve_model(config.model)
    source = locate_weights(
        resolved.timm_name,
        weights=config.weights,
        random_init=config.random_init,
        timm_weights=resolved.alias.timm_weights if resolved.alias else True,
        cache_dir=config.hf_cache_dir,
    )
    img_size = config.effective_img_size
    meta_model = build_meta_model(source.timm_name, model_kwargs=config.model_kwargs, img_size=img_size)
    data_config = resolve_data_config(meta_model, img_size=img_size)
    c, h, w = (int(v) for v in data_config["input_size"])
    input_size = (c, h, w)
    geometry = inspect_model(meta_model, layers_spec=config.layers, input_size=input_size, name=source.timm_name)
    if (
        config.final_norm
        and geometry.kind == "tokens"
        and type(getattr(meta_model, "norm", None)).__name__ == "Identity"
    ):
        raise ConfigError(
            f"{source.timm_name} has no final norm on its tokens (it normalises the pooled vector, fc_norm), "
            "so --final-norm would store raw block outputs under a false label; drop --final-norm"
        )
    if config.final_norm and geometry.kind != "tokens" and not _has_map_norm(meta_model):
        raise ConfigError(
            f"{source.timm_name} is a convnet with no final norm on its feature maps (any norm sits in its head, "
            "after pooling), so --final-norm would store raw stage outputs under a false label; drop --final-norm"
        )
    options = SourceOptions(config.wds_image_key, config.wds_label_key, config.image_column, config.label_column,
                            config.on_bad_image, config.allow_outside_paths)
    dense: DenseInfo | None = None
    if config.masks:  # every mask decoded and checked here, before anything is written
        sources, dense = scan_mask_splits(config.data, config.splits, ignore_index=config.mask_ignore_index,
                                          size=(h, w), hf=options, mask_column=config.mask_column)
    else:
        sources = scan_splits(config.data, config.splits, options=options)
        if any(src.kind == "imagefolder" and src.classes == ("images", "masks") for src in sources.values()):
            print("epcache: the splits hold images/ and masks/ folders, read here as two classes; pass --masks to "
                  "store the masks as per-pixel labels (cache_layout.md §3.6)", file=sys.stderr)
    augment = (
        ViewAugment(size=input_size[1:], mean=tuple(data_config["mean"]), std=tuple(data_config["std"]))
        if config.views
        else None
    )
    stored = pooled_geometry(geometry, config.pool_patches, name=source.timm_name)
    if config.keep is not None:
        stored = light_geometry(geometry, parse_keep(config.keep) or (), name=source.timm_name)
    taps = parse_taps(config.taps)
    if taps and detect_format(str(config.out), config.format) != "zarr":
        raise ConfigError(f"--taps: {config.out} is an HDF5 store, and each tap is a nested store inside the "
                          "store's directory; write a zarr store (--out NAME.zarr) or drop --taps")
    tap_raw = inspect_taps(meta_model, geometry, taps, input_size=input_size, name=source.timm_name)
    tap_stored = {s.name: tap_geometry(tap_raw[s.name], stored, s, name=source.timm_name) for s in taps}
    T, D = stored.layout.num_tokens, stored.dim
    td = sum(a * b for a, b in map(stored.layer_shape, stored.layers)) // len(stored.layers)  # mean T*D
    split_plans = tuple(
        SplitPlan(
            name=name,
            source=src.source,
            num_samples=len(src),
            views=config.views_for(name),
            num_classes=len(src.classes),
            bytes_per_layer=len(src) * config.views_for(name) * td * (1 if config.quantize else itemsize(config.dtype)),
        )
        for name, src in sources.items()
    )
    plan = ExtractPlan(
        requested_model=config.model,
        model=source.timm_name,
        weights=source.describe(),
        num_model_layers=geometry.num_layers,
        layers=geometry.layers,
        final_norm=config.final_norm,
        layout=stored.layout,
        dim=D,
        num_tokens=T,
        dtype=config.dtype,
        input_size=input_size,
        splits=split_plans,
        out=str(config.out),
        format=detect_format(str(config.out), config.format),
        quantization=config.quantize,
        sizes=tuple(_size_options(config, stored, split_plans)),
        feature_map=geometry.kind != "tokens",
        full_bytes=None if config.keep is None else _full_bytes(config, geometry, split_plans),
        taps=tuple((s.text(), tap_stored[s.name].dim, _tap_bytes(config, tap_stored[s.name], split_plans))
                   for s in taps),
    )
    return Prepared(
        config=config,
        source=source,
        geometry=geometry,
        data_config=data_config,
        eval_transform=create_eval_transform(data_config),
        augment=augment,
        sources=sources,
        sources_in_store=dict(sources),
        plan=plan,
        pooled_dim=pooled_width(meta_model, input_size) if config.pooled else None,
        stored=stored,
        taps=taps,
        tap_raw=tap_raw,
        tap_stored=tap_stored,
        dense=dense,
    )


def _tap_bytes(config: ExtractConfig, g: ModelGeometry, split_plans: tuple[SplitPlan, ...]) -> int:
    """Bytes of one tap's nested store: its tokens of every layer, as ``--dry-run`` shows per tap."""
    itemsize_ = 1 if config.quantize else itemsize(config.dtype)
    per_sample = sum(t * d for t, d in map(g.layer_shape, g.layers)) * itemsize_
    return sum(s.num_samples * s.views * per_sample for s in split_plans)


def _has_map_norm(model: Any) -> bool:
    """Whether timm's ``forward_intermediates(norm=True)`` can normalise a spatial model's last map.

    timm applies ``norm_pre`` (ConvNeXt with ``head_norm_first``) or ``norm`` (Swin-like
    hierarchies); a ResNet, EfficientNet or RegNet has neither, and ``norm=True`` changes nothing.
    """
    return any(
        getattr(model, name, None) is not None and type(getattr(model, name)).__name__ != "Identity"
        for name in ("norm_pre", "norm")
    )


def pooled_geometry(g: ModelGeometry, k: int, *, name: str) -> ModelGeometry:
    """``g`` as stored with ``--pool-patches k``: every layer's grid divided by k (prefix unchanged).

    Raises:
        ConfigError: a requested layer whose grid k does not divide (nothing is loaded or written yet).
    """
    if k == 1:
        return g
    for layer in g.layers:
        (h, w), _ = g.layer_shapes.get(layer, (g.layout.grid, g.dim))
        check_poolable(dataclasses.replace(g.layout, grid=(h, w)), k, what=f"{name} layer {layer}")
    h, w = g.layout.grid
    layout = dataclasses.replace(g.layout, grid=(h // k, w // k), pool_patches=k)
    shapes = {layer: ((gh // k, gw // k), d) for layer, ((gh, gw), d) in g.layer_shapes.items()}
    return dataclasses.replace(g, layout=layout, layer_shapes=shapes)


def light_geometry(g: ModelGeometry, keep: tuple[str, ...], *, name: str) -> ModelGeometry:
    """``g`` as stored with ``--keep``: every layer's grid averaged into one token, prefix as ``keep`` says."""
    layout = light_layout(g.layout, keep, what=name)
    shapes = {layer: ((1, 1), d) for layer, (_, d) in g.layer_shapes.items()}
    return dataclasses.replace(g, layout=layout, layer_shapes=shapes)


def store_meta(prep: Prepared, report: LoadReport) -> StoreMeta:
    """The store-level metadata. Everything that changes token values goes into a provenance field
    (backbone, layout, layers, dtype, preprocessing, views, dataset); ``extra`` is informational."""
    import timm
    import torch

    cfg = prep.config
    g = prep.store_geometry
    kind = next(iter(prep.sources.values())).kind
    where, location = data_location(cfg.data)
    root = portable_data_root(where, location, str(cfg.out), record_paths=cfg.record_paths)  # None: left out
    sources = {name: portable_split_source(src.source, location, record_paths=cfg.record_paths)
               for name, src in prep.sources.items()}
    dataset: dict[str, Any] = {"kind": kind, "name": Path(cfg.data).expanduser().resolve().name}
    if kind == "webdataset":  # how samples were read changes what they are: provenance
        dataset.update(name=location.rstrip("/").rsplit("/", 1)[-1], image_key=cfg.wds_image_key,
                       label_key=cfg.wds_label_key)
    elif kind == "hf":
        dataset.update(name=Path(location).name, image_column=cfg.image_column, label_column=cfg.label_column)
    return StoreMeta(
        backbone=BackboneMeta(
            name=report.name,
            source=report.source.kind,
            timm_version=timm.__version__,
            weights_sha256=report.sha256,
            weights_file=report.source.path.name if report.source.path is not None else None,
            num_blocks=g.num_layers,
        ),
        layout=g.layout,
        layers=g.layers,
        final_norm=cfg.final_norm,
        dtype=cfg.dtype,
        quantization=cfg.quantize,
        dim=g.dim,
        num_tokens=g.layout.num_tokens,
        layer_shapes=dict(g.layer_shapes),
        preprocessing={
            "data_config": prep.data_config,
            "eval_transform": [repr(t) for t in getattr(prep.eval_transform, "transforms", [prep.eval_transform])],
            "model_kwargs": dict(cfg.model_kwargs),
            **({"decode": "gpu (nvjpeg + torch resize)"} if cfg.decode == "gpu" else {}),  # pixels differ slightly
            "img_size": cfg.effective_img_size,
            "amp": cfg.amp,
            "token_source": f"forward_intermediates ({g.kind}); "
            + ("prefix tokens then patches" if g.kind == "tokens" else "NCHW flattened row-major"),
        },
        views={
            "augmented": cfg.views,
            "seed": cfg.seed,
            "splits": sorted(cfg.view_splits) if cfg.views else [],
            "recipe": prep.augment.to_json() if prep.augment is not None else None,
        },
        dataset=dataset,  # per-split content is fingerprinted per split, so splits can be added later
        taps=taps_key(prep.taps, prep.tap_stored),  # --taps: listed in the parent (cache_layout.md §2.7)
        dense=dense_document(prep.dense) if prep.dense is not None else None,
        extra={
            "epcache_version": epcache.__version__,
            "torch_version": torch.__version__,
            "device": cfg.device,
            "on_bad_image": cfg.on_bad_image,
            "batch_size": cfg.batch_size,  # CPU kernels may round per batch shape: repair reuses it
            "weights_dropped_keys": list(report.dropped_keys),
            "weights_missing_unused": list(report.missing_unused),
            "split_sources": {name: src for name, src in sources.items() if src is not None},
            **({"data_root": root} if root is not None else {}),  # default --data of repair and attention
            "skipped": {},
            # --on-bad-image skip: unreadable HF files and cut shards, whose rows were never listed
            "skipped_files": {n: list(s.skipped_files) for n, s in prep.sources.items() if s.skipped_files},
            **({"allow_outside_paths": True} if cfg.allow_outside_paths else {}),  # repair/attention read the same
            **({"checkpoint": _checkpoint_record(prep, report)} if prep.step is not None else {}),
        },
    )


def _checkpoint_record(prep: Prepared, report: LoadReport) -> dict[str, Any]:
    """``extra.checkpoint`` of a series' store (cache_layout.md §2.1): which point of training it is."""
    path = report.source.path  # a series always loads a file; None only for a hand-made Prepared
    location = portable_location(path, str(prep.config.out), record_paths=prep.config.record_paths) if path else None
    return {"step": prep.step, "file": path.name if path else None, "location": location, "sha256": report.sha256}


def _full_bytes(config: ExtractConfig, geometry: ModelGeometry, split_plans: tuple[SplitPlan, ...]) -> int:
    """Bytes the planned light store would take with every token: the saving ``--dry-run`` shows."""
    chosen = config.quantize or config.dtype
    return next(o.bytes for o in _size_options(config, geometry, split_plans) if o.name == chosen)


def _size_options(
    config: ExtractConfig, geometry: ModelGeometry, split_plans: tuple[SplitPlan, ...]
) -> list[SizeOption]:
    """Bytes of each storage option for the planned splits, with the chunking the store will use."""
    meta = StoreMeta(
        backbone=BackboneMeta("", "", "", ""), layout=geometry.layout, layers=geometry.layers, final_norm=False,
        dtype=config.dtype, dim=geometry.dim, num_tokens=geometry.layout.num_tokens,
        layer_shapes=dict(geometry.layer_shapes),
    )
    widest = max(t * d for t, d in map(meta.layer_shape, meta.layers))
    rows = []
    for s in split_plans:
        plan = plan_chunks(s.num_samples, s.views * widest * itemsize(config.dtype), len(meta.layers),
                           chunk_samples=config.chunk_samples, shard_samples=config.shard_samples)
        rows.append((s.num_samples, s.views, plan.chunk_samples))
    return size_options(meta, rows)
