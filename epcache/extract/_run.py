"""``extract()``: plan, check everything a user can get wrong, then run the backbone once per image.

Order of work, chosen so that user errors never leave a store behind and a crash never leaves
one that looks complete:

1. plan (no weights, no pixels): resolve the model, locate the weights, resolve layers and
   token layout with a shape-only forward on the ``meta`` device, list the splits;
2. load the weights; validate images if unreadable ones are to be skipped;
3. open the existing store (same provenance: continue; different: refuse) or create it;
4. per split, per missing write-block in stored order: decode in workers, forward all layers
   at once, accumulate the block, hand it to the background writer, which records it written
   only after it is durable. Resuming redoes exactly the blocks not recorded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pickle
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import epcache
from epcache.errors import (
    BadImageError,
    ConfigError,
    EpcacheError,
    NonFiniteFeaturesError,
    ProvenanceMismatchError,
    StoreExistsError,
    StoreNotFoundError,
)
from epcache.extract._backbone import LoadReport, build_meta_model, load_backbone
from epcache.extract._config import ExtractConfig, ExtractPlan, ExtractResult, SplitPlan, itemsize
from epcache.extract._dist import DistContext, distributed_context, exit_on_sigterm, torchrun_world_size
from epcache.extract._forward import ModelGeometry, TokenExtractor, inspect_model
from epcache.extract._loader import ViewDataset, find_unreadable, make_loader
from epcache.extract._models import resolve_model
from epcache.extract._pooled import POOLED_KEY, PooledTokenExtractor, ensure_pooled, pooled_width
from epcache.extract._sources import SplitSource, scan_splits
from epcache.extract._transforms import ViewAugment, create_eval_transform, resolve_data_config
from epcache.extract._weights import WeightsSource, locate_weights
from epcache.store import (
    BackboneMeta,
    FeatureStore,
    SplitSpec,
    StoreLock,
    StoreMeta,
    acquire_store_lock,
    compute_provenance,
    create_store,
    detect_format,
    find_stores,
    from_torch,
    open_store,
    split_fingerprint,
)

__all__ = ["extract", "plan_extract"]

_NP_DTYPES = {"float16": np.dtype("<f2"), "float32": np.dtype("<f4")}


def plan_extract(config: ExtractConfig) -> ExtractPlan:
    """Resolve model, weights source, layers, token layout, splits and sizes; load and write nothing.

    Raises:
        ModelError: unknown model.
        WeightsError: no weights found (and no explicit random init).
        UnknownLayerError: a layer outside the model.
        ConfigError: missing data root, empty split, malformed CSV, incompatible convnet stages.
    """
    return _prepare(config).plan


def extract(config: ExtractConfig, *, progress: bool = True) -> ExtractResult:
    """Run the backbone once over every split and write the requested layers to the store.

    Re-running the same configuration into an existing store continues it (only blocks not yet
    recorded as written are extracted, with the same bytes an uninterrupted run writes); a
    complete store is left as it is (``status == "already-complete"``).

    Under torchrun (``WORLD_SIZE > 1``) every rank calls this with the same config: rank 0 takes
    the writer lock and creates the store, each rank writes its round-robin share of the missing
    blocks, and every rank returns the job's totals. The store is byte-identical to a
    single-process run's, and a job killed anywhere resumes with any number of ranks.

    Args:
        config: what to extract and where.
        progress: show a tqdm bar with samples/s and ETA per split.

    Raises:
        ModelError, WeightsError, UnknownLayerError, ConfigError: before any store is created.
        ProvenanceMismatchError: the store exists and was made by a different configuration.
        StoreExistsError: something that is not a store is at ``config.out``, or a complete store
            with the same provenance sits beside it (unless ``allow_duplicate``/``overwrite``).
        StoreLockedError: another extraction is writing the store, or a crashed one left its lock
            (``break_lock=True`` removes it).
        ConfigError: an HDF5 store under torchrun (one writer only; use zarr).
        StoreNotFoundError: ``resume=True`` but there is no store to resume.
        BadImageError: an unreadable image (with ``on_bad_image="error"``); the store stays
            incomplete and a re-run continues it.
        NonFiniteFeaturesError: inf/nan tokens (float16 overflow, typically).
    """
    prep = _prepare(config)
    if config.dry_run:
        return ExtractResult(status="dry-run", store=str(config.out), plan=prep.plan)
    import torch

    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {config.device!r} requested but torch sees no CUDA device; use --device cpu")
    world = torchrun_world_size()
    if world > 1 and prep.plan.format == "h5":  # checked before joining: every rank fails at once, none waits
        raise ConfigError(
            f"{config.out}: an HDF5 store takes one writer at a time, so it cannot be extracted by "
            f"{world} torchrun processes; write a zarr store instead (--out NAME.zarr or --format zarr), "
            "whose ranks write disjoint shards concurrently, or run a single process"
        )
    with exit_on_sigterm(), distributed_context() as ctx:
        return _extract(prep, ctx, progress=progress)


def _extract(prep: _Prepared, ctx: DistContext, *, progress: bool) -> ExtractResult:
    """``extract`` after planning, on one rank of ``ctx`` (the only one outside torchrun)."""
    config = prep.config
    model, report = load_backbone(
        prep.source,
        model_kwargs=config.model_kwargs,
        img_size=config.effective_img_size,
        final_norm=config.final_norm,
        seed=config.seed,
    )
    meta = _store_meta(prep, report)  # records the device as asked (so every rank writes the same bytes)
    if ctx.distributed and config.device == "cuda":  # one GPU per process on each node
        prep.config = dataclasses.replace(config, device=f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    model.to(prep.config.device)
    show = progress and ctx.is_main  # one progress bar (rank 0's share), not one per rank
    setup = _setup_store(prep, meta, ctx, progress=show)
    try:
        with setup.store as store:
            work = setup.work
            if setup.resumed and not any(work.values()):
                return ExtractResult(
                    status="already-complete",
                    store=str(config.out),
                    plan=prep.plan,
                    provenance=store.provenance,
                    resumed=True,
                    skipped=setup.skipped,
                    dropped_keys=report.dropped_keys,
                    missing_unused=report.missing_unused,
                    world_size=ctx.world_size,
                )
            extractor: Any = (PooledTokenExtractor if prep.pooled_dim else TokenExtractor)(
                model, prep.geometry, final_norm=config.final_norm
            )
            t0 = time.perf_counter()
            mine = _RankOutcome()
            try:
                for name, missing in work.items():
                    blocks = ctx.assign(missing)
                    if not blocks:
                        continue
                    n, b, w = _extract_split(
                        store, prep, prep.sources_in_store[name], name, blocks, extractor, progress=show
                    )
                    mine.samples[name] = n
                    mine.blocks += b
                    mine.wait_s += w
            except EpcacheError as e:
                if not ctx.distributed:
                    raise
                mine.error = _portable(e)  # reported by every rank after the barrier below
            outcomes = ctx.gather(mine)  # also waits until every rank's blocks are recorded
            _raise_first_error(outcomes, ctx)
            seconds = time.perf_counter() - t0
            samples: dict[str, int] = {}
            for o in outcomes:
                for name, n in o.samples.items():
                    samples[name] = samples.get(name, 0) + n
            return ExtractResult(
                status="complete",
                store=str(config.out),
                plan=prep.plan,
                provenance=store.provenance,
                resumed=setup.resumed,
                samples=samples,
                blocks_written=sum(o.blocks for o in outcomes),
                seconds=seconds,
                writer_wait_s=sum(o.wait_s for o in outcomes),
                skipped=setup.skipped,
                dropped_keys=report.dropped_keys,
                missing_unused=report.missing_unused,
                world_size=ctx.world_size,
            )
    finally:
        if setup.lock is not None:
            setup.lock.release()


@dataclass
class _StoreSetup:
    """The store as this rank uses it, and what rank 0 decided for every rank."""

    store: FeatureStore
    lock: StoreLock | None  # held by rank 0 (the only rank outside torchrun) until the job ends
    resumed: bool
    skipped: dict[str, tuple[str, ...]]
    work: dict[str, list[int]]  # missing blocks per split, computed once by rank 0


@dataclass
class _SetupState:
    """What rank 0 broadcasts once the store exists (or why it could not make it)."""

    resumed: bool = False
    skipped: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    work: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    error: BaseException | None = None


@dataclass
class _RankOutcome:
    """What one rank did, gathered by every rank at the end."""

    samples: dict[str, int] = dataclasses.field(default_factory=dict)
    blocks: int = 0
    wait_s: float = 0.0
    error: BaseException | None = None


def _setup_store(prep: _Prepared, meta: StoreMeta, ctx: DistContext, *, progress: bool) -> _StoreSetup:
    """Rank 0 takes the writer lock and opens or creates the store; the other ranks then open it.

    Only rank 0 writes metadata (creation, new splits, skipped images); the others wait for its
    broadcast, so they open a store whose arrays all exist, and they extract exactly the blocks
    rank 0 found missing. A failure on rank 0 is broadcast too, so no rank waits for a store
    that will never come.
    """
    config = prep.config
    if ctx.is_main:
        lock: StoreLock | None = None
        store: FeatureStore | None = None
        try:
            purpose = f"epcache extract, rank 0 of {ctx.world_size}" if ctx.distributed else "epcache extract"
            lock = acquire_store_lock(config.out, break_lock=config.break_lock, purpose=purpose)
            store, resumed, skipped = _open_or_create(config, prep, meta, progress=progress)
            ensure_pooled(store, prep.sources_in_store, prep.pooled_dim, resumed=resumed)
            state = _SetupState(resumed, skipped, {name: store.missing_blocks(name) for name in prep.sources})
        except Exception as e:
            if store is not None:
                store.close()
            if lock is not None:
                lock.release()
            if ctx.distributed:
                ctx.share(_SetupState(error=_portable(e)))
            raise
        ctx.share(state)
        return _StoreSetup(store, lock, state.resumed, state.skipped, state.work)
    shared: _SetupState = ctx.share(None)
    if shared.error is not None:
        raise shared.error
    for name, drop in shared.skipped.items():  # the rows rank 0 left out of the store
        prep.sources_in_store[name] = prep.sources[name].without(set(drop))
    store = open_store(str(config.out), "a")
    return _StoreSetup(store, None, shared.resumed, shared.skipped, shared.work)


def _portable(e: BaseException) -> BaseException:
    """``e`` if it survives pickling to another rank unchanged in class and message, else a RuntimeError."""
    try:
        copy = pickle.loads(pickle.dumps(e))
        if type(copy) is type(e) and str(copy) == str(e):
            return e
    except Exception:
        pass
    return RuntimeError(f"{type(e).__name__}: {e}")


def _raise_first_error(outcomes: list[_RankOutcome], ctx: DistContext) -> None:
    """Every rank fails with the same message when any rank hit a user error (its own first)."""
    failed = [(rank, o.error) for rank, o in enumerate(outcomes) if o.error is not None]
    if not failed:
        return
    own = outcomes[ctx.rank].error
    if own is not None:
        raise own
    rank, err = failed[0]
    try:
        raise type(err)(f"rank {rank} of {ctx.world_size}: {err}") from None
    except TypeError:  # an exception class that needs other arguments
        raise err from None


# ---------------------------------------------------------------------------------------- planning


@dataclass
class _Prepared:
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
    pooled_dim: int | None = None  # width of the pooled output when --pooled, else None


def _prepare(config: ExtractConfig) -> _Prepared:
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
    sources = scan_splits(Path(config.data), config.splits)
    augment = (
        ViewAugment(size=input_size[1:], mean=tuple(data_config["mean"]), std=tuple(data_config["std"]))
        if config.views
        else None
    )
    T, D = geometry.layout.num_tokens, geometry.dim
    td = sum(a * b for a, b in map(geometry.layer_shape, geometry.layers)) // len(geometry.layers)  # mean T*D
    split_plans = tuple(
        SplitPlan(
            name=name,
            source=src.source,
            num_samples=len(src),
            views=config.views_for(name),
            num_classes=len(src.classes),
            bytes_per_layer=len(src) * config.views_for(name) * td * itemsize(config.dtype),
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
        layout=geometry.layout,
        dim=D,
        num_tokens=T,
        dtype=config.dtype,
        input_size=input_size,
        splits=split_plans,
        out=str(config.out),
        format=detect_format(str(config.out), config.format),
    )
    return _Prepared(
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
    )


def _store_meta(prep: _Prepared, report: LoadReport) -> StoreMeta:
    """The store-level metadata. Everything that changes token values goes into a provenance field
    (backbone, layout, layers, dtype, preprocessing, views, dataset); ``extra`` is informational."""
    import timm
    import torch

    cfg = prep.config
    g = prep.geometry
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
        dim=g.dim,
        num_tokens=g.layout.num_tokens,
        layer_shapes=dict(g.layer_shapes),
        preprocessing={
            "data_config": prep.data_config,
            "eval_transform": [repr(t) for t in getattr(prep.eval_transform, "transforms", [prep.eval_transform])],
            "model_kwargs": dict(cfg.model_kwargs),
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
        dataset={  # per-split content is fingerprinted per split, so splits can be added later
            "kind": next(iter(prep.sources.values())).kind,
            "name": Path(cfg.data).expanduser().resolve().name,
        },
        extra={
            "epcache_version": epcache.__version__,
            "torch_version": torch.__version__,
            "device": cfg.device,
            "on_bad_image": cfg.on_bad_image,
            "batch_size": cfg.batch_size,  # CPU kernels may round per batch shape: repair reuses it
            "weights_dropped_keys": list(report.dropped_keys),
            "weights_missing_unused": list(report.missing_unused),
            "split_sources": {name: src.source for name, src in prep.sources.items()},
            "data_root": str(Path(cfg.data).expanduser().resolve()),  # default --data of repair and attention
            "skipped": {},
        },
    )


# ---------------------------------------------------------------------------------------- store


def _split_spec(prep: _Prepared, name: str, src: SplitSource) -> SplitSpec:
    return SplitSpec(
        name=name,
        labels=src.labels,
        ids=list(src.ids),
        classes=list(src.classes),
        views=prep.config.views_for(name),
        permutation_seed=prep.config.seed,
    )


def _skip_unreadable(prep: _Prepared, names: list[str], *, progress: bool) -> dict[str, tuple[str, ...]]:
    """With on_bad_image="skip": decode every image of ``names`` once; leave failures out."""
    skipped: dict[str, tuple[str, ...]] = {}
    for name in names:
        src = prep.sources[name]
        paths = [src.path(i) for i in range(len(src))]
        bad = find_unreadable(paths, workers=prep.config.workers, progress=progress, desc=f"check {name}")
        ids = tuple(src.ids[i] for i in sorted(bad))
        if len(ids) == len(src):
            raise ConfigError(f"split {name!r}: none of its {len(src)} images can be decoded (e.g. {bad[0]})")
        prep.sources_in_store[name] = src.without(set(ids))
        skipped[name] = ids
    return skipped


def _open_or_create(
    config: ExtractConfig, prep: _Prepared, meta: StoreMeta, *, progress: bool
) -> tuple[FeatureStore, bool, dict[str, tuple[str, ...]]]:
    """Continue the store at ``config.out`` if it has the same provenance, else create it."""
    loc = str(config.out)
    existing: FeatureStore | None = None
    if not config.overwrite:
        try:
            existing = open_store(loc, "a")
        except StoreNotFoundError:
            if config.resume:
                raise StoreNotFoundError(
                    f"--resume: there is no store at {loc} to resume; drop --resume to start a new extraction"
                ) from None
    if existing is None:
        if not (config.overwrite or config.allow_duplicate):
            _refuse_duplicate(config, prep, meta)
        skipped = _skip_unreadable(prep, list(prep.sources), progress=progress) if config.on_bad_image == "skip" else {}
        meta = dataclasses.replace(
            meta,
            extra={**meta.extra, "skipped": {k: list(v) for k, v in skipped.items() if v}},
        )
        store = create_store(loc, meta, format=config.format, overwrite=config.overwrite, compressor=config.compressor)
        try:
            for name, src in prep.sources_in_store.items():
                store.add_split(
                    _split_spec(prep, name, src),
                    chunk_samples=config.chunk_samples,
                    shard_samples=config.shard_samples,
                )
        except BaseException:
            store.close()
            raise
        return store, False, skipped
    try:
        skipped = _check_same_provenance(existing, prep, meta, progress=progress)
    except BaseException:
        existing.close()
        raise
    return existing, True, skipped


def _refuse_duplicate(config: ExtractConfig, prep: _Prepared, meta: StoreMeta) -> None:
    """Point to a complete store beside ``config.out`` that already holds these tokens, instead of
    extracting them again (a lab's root of stores, see ``epcache ls``).

    A neighbour is a duplicate when its store-level provenance (backbone, weights, layers,
    preprocessing, views, dtype) equals this run's and it holds every requested split, complete,
    with the same images, labels, views and seed (its recorded skipped images left out, as a
    resume would). Only the direct children of the parent are looked at: a cheap listing, not a
    crawl of the whole disk or bucket.

    Raises:
        StoreExistsError: such a store exists; the message names it and the ways around.
    """
    out = str(config.out).rstrip("/")
    parent = _parent_location(out)
    try:
        candidates = find_stores(parent, max_depth=1)
    except (EpcacheError, OSError):
        return  # the parent does not exist yet or cannot be listed: nothing to point to
    ours = compute_provenance(meta, {})
    for loc in candidates:
        if _same_location(loc, out):
            continue
        try:
            with open_store(loc) as other:
                if compute_provenance(other.meta, {}) != ours or not _holds_splits(other, prep):
                    continue
                key = other.provenance  # the stored key, as `epcache info` and `ls` show it
        except (EpcacheError, OSError):
            continue  # unreadable neighbours are `epcache ls`'s business, not a reason to stop here
        raise StoreExistsError(
            f"{loc} already holds these tokens (provenance {key}, as `epcache info {loc}` shows; same data, "
            "complete): use it "
            f"instead of extracting again into {out}. Pass --allow-duplicate (allow_duplicate=True) to "
            "extract anyway"
        )


def _holds_splits(store: FeatureStore, prep: _Prepared) -> bool:
    recorded = store.meta.extra.get("skipped", {})
    recorded = recorded if isinstance(recorded, dict) else {}
    for name, src in prep.sources.items():
        if name not in store.splits or store.missing_blocks(name):
            return False
        kept = src.without(set(recorded.get(name, ())))
        ids_sha, labels_sha = split_fingerprint(_split_spec(prep, name, kept))
        have = store.splits[name]
        if (have.ids_sha256, have.labels_sha256, have.views, have.permutation_seed) != (
            ids_sha,
            labels_sha,
            prep.config.views_for(name),
            prep.config.seed,
        ):
            return False
    return True


def _parent_location(location: str) -> str:
    if "://" in location and not location.startswith("file://"):
        scheme, _, rest = location.partition("://")
        head = rest.rsplit("/", 1)[0] if "/" in rest else rest
        return f"{scheme}://{head}"
    return str(Path(location).expanduser().absolute().parent)


def _same_location(a: str, b: str) -> bool:
    if "://" in a or "://" in b:
        return a.rstrip("/") == b.rstrip("/")
    return Path(a).expanduser().absolute() == Path(b).expanduser().absolute()


def _check_same_provenance(
    store: FeatureStore, prep: _Prepared, meta: StoreMeta, *, progress: bool
) -> dict[str, tuple[str, ...]]:
    """Refuse a store made by another configuration; add the splits it does not have yet."""
    loc = store.location
    if compute_provenance(meta, {}) != compute_provenance(store.meta, {}):
        ours, theirs = _provenance_doc(meta), _provenance_doc(store.meta)
        diff = [k for k in sorted(ours) if ours[k] != theirs.get(k)]
        detail = "; ".join(f"{k}: store has {_short(theirs.get(k))}, this run {_short(ours[k])}" for k in diff[:4])
        raise ProvenanceMismatchError(
            f"{loc} was extracted with a different configuration ({detail}). Pass --overwrite to replace it, "
            "or choose another --out"
        )
    recorded = store.meta.extra.get("skipped", {}) if isinstance(store.meta.extra.get("skipped"), dict) else {}
    skipped: dict[str, tuple[str, ...]] = {}
    new_splits = [name for name in prep.sources if name not in store.splits]
    for name in prep.sources:
        if name not in store.splits:
            continue
        drop = tuple(recorded.get(name, ()))  # what the first run skipped; not decoded again
        src = prep.sources[name].without(set(drop))
        prep.sources_in_store[name] = src
        skipped[name] = drop
        have = store.splits[name]
        spec = _split_spec(prep, name, src)
        ids_sha, labels_sha = split_fingerprint(spec)
        ours = {
            "num_samples": len(src),
            "views": spec.views,
            "classes": tuple(spec.classes),
            "permutation_seed": spec.permutation_seed,
            "ids_sha256": ids_sha,
            "labels_sha256": labels_sha,
        }
        theirs = {k: getattr(have, k) for k in ours}
        if ours != theirs:
            diff = [k for k in ours if ours[k] != theirs[k]]
            raise ProvenanceMismatchError(
                f"{loc}: split {name!r} was extracted from different data or settings (differs in "
                f"{', '.join(diff)}: the images, labels, views or seed changed). Pass --overwrite to "
                "re-extract, or choose another --out"
            )
    if new_splits:
        if prep.config.on_bad_image == "skip":
            skipped.update(_skip_unreadable(prep, new_splits, progress=progress))
        for name in new_splits:
            store.add_split(
                _split_spec(prep, name, prep.sources_in_store[name]),
                chunk_samples=prep.config.chunk_samples,
                shard_samples=prep.config.shard_samples,
            )
    return skipped


def _provenance_doc(meta: StoreMeta) -> dict[str, Any]:
    doc = meta.to_json()
    doc.pop("extra")
    doc["backbone"] = {k: v for k, v in doc["backbone"].items() if k not in ("source", "weights_file")}
    return doc


def _short(value: Any, limit: int = 120) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------- extraction


def _extract_split(
    store: FeatureStore,
    prep: _Prepared,
    src: SplitSource,
    split: str,
    blocks: list[int],
    extractor: TokenExtractor,
    *,
    progress: bool,
) -> tuple[int, int, float]:
    """Extract the given write-blocks of one split; returns (samples, blocks, writer wait seconds)."""
    from epcache.extract._writer import BlockWriter

    cfg = prep.config
    order = store.read_order(split)
    batches: list[list[int]] = []
    slots: list[tuple[int, int, int, int]] = []  # (block, offset in block, n, block length)
    for b in blocks:
        start, stop = store.block_range(split, b)
        for off in range(0, stop - start, cfg.batch_size):
            n = min(cfg.batch_size, stop - start - off)
            batches.append(order[start + off : start + off + n].tolist())
            slots.append((b, off, n, stop - start))
    dataset = ViewDataset(
        [src.path(i) for i in range(len(src))],
        split=split,
        eval_transform=prep.eval_transform,
        input_size=prep.plan.input_size,
        views=cfg.views_for(split),
        augment=prep.augment,
        seed=cfg.seed,
    )
    loader = make_loader(dataset, batches, workers=cfg.workers, pin_memory=cfg.device.startswith("cuda"))
    total = sum(n for _, _, n, _ in slots)
    batch_iter = iter(loader)  # workers fork here, before the writer thread exists
    writer = BlockWriter(store, max_pending=cfg.max_pending_blocks)
    try:
        with _progress_bar(total, split, enabled=progress) as bar:
            _run_batches(prep, src, split, slots, batch_iter, extractor, writer, bar)
    except BaseException:
        with contextlib.suppress(Exception):
            writer.close()  # blocks already queued are complete and correct: let them land
        raise
    stats = writer.close()
    return total, stats.blocks, stats.wait_s


def _run_batches(
    prep: _Prepared,
    src: SplitSource,
    split: str,
    slots: list[tuple[int, int, int, int]],
    batch_iter: Iterator[Any],
    extractor: TokenExtractor,
    writer: Any,
    bar: Any,
) -> None:
    import torch

    cfg = prep.config
    g = prep.geometry
    V = cfg.views_for(split)
    torch_dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[cfg.dtype]
    np_dtype = _numpy_dtype(cfg.dtype)
    acc: dict[int, np.ndarray] | None = None
    for (block, off, n, length), batch in zip(slots, batch_iter, strict=True):
        if any(batch.errors):
            k = next(i for i, e in enumerate(batch.errors) if e)
            raise BadImageError(
                f"cannot decode {src.path(batch.indices[k])} (split {split!r}): {batch.errors[k]}. "
                "Fix or remove the file, or pass --on-bad-image skip to leave unreadable images out"
            )
        x = batch.images.to(cfg.device, non_blocking=True).flatten(0, 1)  # (B*V, 3, H, W)
        with torch.inference_mode(), _autocast(cfg):
            outs = extractor(x)
        pooled = None
        if isinstance(outs, tuple):  # --pooled: (layers, pooled output)
            outs, pooled = outs
        if acc is None:
            acc = {layer: np.empty((length, V, *g.layer_shape(layer)), np_dtype) for layer in g.layers}
            if pooled is not None:
                acc[POOLED_KEY] = np.empty((length, V, pooled.shape[-1]), np_dtype)
        if pooled is not None:
            acc[POOLED_KEY][off : off + n] = from_torch(pooled.to(torch_dtype).reshape(n, V, -1).cpu())
        for layer, t in zip(g.layers, outs, strict=True):
            t = t.to(torch_dtype)
            if not bool(torch.isfinite(t).all()):
                _raise_non_finite(cfg, src, split, layer, batch.indices)
            acc[layer][off : off + n] = from_torch(t.reshape(n, V, *g.layer_shape(layer)).cpu())
        if off + n == length:
            writer.submit(split, block, acc)
            acc = None
        bar.update(n)


def _numpy_dtype(dtype: str) -> np.dtype:
    if dtype == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return _NP_DTYPES[dtype]


def _autocast(cfg: ExtractConfig) -> contextlib.AbstractContextManager[Any]:
    if cfg.amp is None:
        return contextlib.nullcontext()
    import torch

    dtype = torch.bfloat16 if cfg.amp == "bf16" else torch.float16
    return torch.autocast(device_type=cfg.device.split(":")[0], dtype=dtype)


def _raise_non_finite(cfg: ExtractConfig, src: SplitSource, split: str, layer: int, indices: list[int]) -> None:
    hint = (
        "float16 overflows above 65504: re-run with --dtype bfloat16 or --dtype float32"
        if cfg.dtype == "float16"
        else "the backbone itself produced inf/nan: check the weights" + (", or drop --amp" if cfg.amp else "")
    )
    raise NonFiniteFeaturesError(
        f"layer {layer} produced non-finite tokens (inf/nan) in split {split!r} for a batch starting at "
        f"{src.ids[indices[0]]}; {hint}"
    )


@contextlib.contextmanager
def _progress_bar(total: int, split: str, *, enabled: bool) -> Iterator[Any]:
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=f"extract {split}", unit="img", disable=not enabled, dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()
