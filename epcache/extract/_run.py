"""``extract_store()``: plan, check everything a user can get wrong, then run the backbone once per image.

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
import os
import pickle
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from epcache._fs.oserror import SpaceReserve, os_errors
from epcache.errors import ConfigError, EpcacheError
from epcache.extract._backbone import load_backbone
from epcache.extract._blocks import RESUME_HINT, extract_split
from epcache.extract._config import ExtractConfig, ExtractPlan, ExtractResult
from epcache.extract._dist import DistContext, distributed_context, exit_on_sigterm, torchrun_world_size
from epcache.extract._estimate import estimate_forward
from epcache.extract._forward import TokenExtractor
from epcache.extract._gpudecode import gpu_decode_unavailable
from epcache.extract._pixels import pil_steps
from epcache.extract._pooled_output import PooledTokenExtractor, ensure_pooled
from epcache.extract._prepare import Prepared, prepare, store_meta
from epcache.extract._taps import TapExtractor, open_tap_stores
from epcache.extract._target import _split_spec, open_or_create
from epcache.store import FeatureStore, StoreMeta, open_store
from epcache.store.ops.lock import StoreLock, acquire_store_lock
from epcache.store.ops.swap import discard_staging, swap_in

__all__ = ["extract_prepared", "extract_store", "plan_extract"]


def plan_extract(config: ExtractConfig) -> ExtractPlan:
    """Resolve model, weights source, layers, token layout, splits and sizes; load and write nothing.

    Raises:
        ModelError: unknown model.
        WeightsError: no weights found (and no explicit random init).
        UnknownLayerError: a layer outside the model.
        ConfigError: missing data root, empty split, malformed CSV, incompatible convnet stages.
    """
    return prepare(config).plan


def extract_store(config: ExtractConfig, *, progress: bool = True) -> ExtractResult:
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
        DiskFullError, FileSystemError: no space, no permission, a read-only file system or a
            path through a regular file; blocks already written stay and a re-run continues.
    """
    with os_errors(action=f"epcache extract into {config.out}", resume_hint=RESUME_HINT):
        return _extract_checked(config, progress=progress)


def extract_prepared(prep: Prepared, *, progress: bool = True) -> ExtractResult:
    """:func:`extract_store` of a plan already made: a checkpoint series plans its data once for every store."""
    with os_errors(action=f"epcache extract into {prep.config.out}", resume_hint=RESUME_HINT):
        return _extract_planned(prep, progress=progress)


def _extract_checked(config: ExtractConfig, *, progress: bool) -> ExtractResult:
    return _extract_planned(prepare(config), progress=progress)


def _extract_planned(prep: Prepared, *, progress: bool) -> ExtractResult:
    config = prep.config
    if config.amp is not None and config.device == "cpu":  # honoured, but rarely meant: say it once
        print(f"epcache: --amp {config.amp} on the CPU: the forward runs under CPU autocast in "
              f"{'bfloat16' if config.amp == 'bf16' else 'float16'} (slow without hardware support; the tokens "
              "differ from float32 and the store records amp); drop --amp for float32", file=sys.stderr)
    if config.dry_run:  # with a measured forward time: the one cost the shapes cannot give
        est = estimate_forward(prep)
        plan = dataclasses.replace(prep.plan, estimate=est if isinstance(est, str) else est.text())
        return ExtractResult(status="dry-run", store=str(config.out), plan=plan)
    import torch

    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {config.device!r} requested but torch sees no CUDA device; use --device cpu")
    if config.decode == "gpu":
        _check_gpu_decode(prep)
    world = torchrun_world_size()
    if world > 1 and prep.plan.format == "h5":  # checked before joining: every rank fails at once, none waits
        raise ConfigError(
            f"{config.out}: an HDF5 store takes one writer at a time, so it cannot be extracted by "
            f"{world} torchrun processes; write a zarr store instead (--out NAME.zarr or --format zarr), "
            "whose ranks write disjoint shards concurrently, or run a single process"
        )
    with exit_on_sigterm(), distributed_context() as ctx:
        return _extract(prep, ctx, progress=progress)


def _check_gpu_decode(prep: Prepared) -> None:
    """``--decode gpu`` where it cannot run: say so once and decode on the CPU (recorded as such)."""
    reason = gpu_decode_unavailable(prep.config.device, pil_steps(prep.eval_transform))
    if reason is not None:
        print(f"epcache: --decode gpu is unavailable ({reason}); decoding JPEGs on the CPU instead", file=sys.stderr)
        prep.config = dataclasses.replace(prep.config, decode="cpu")


def _extract(prep: Prepared, ctx: DistContext, *, progress: bool) -> ExtractResult:
    """``extract`` after planning, on one rank of ``ctx`` (the only one outside torchrun)."""
    config = prep.config
    model, report = load_backbone(
        prep.source,
        model_kwargs=config.model_kwargs,
        img_size=config.effective_img_size,
        final_norm=config.final_norm,
        seed=config.seed,
    )
    meta = store_meta(prep, report)  # records the device as asked (so every rank writes the same bytes)
    if ctx.distributed and config.device == "cuda":  # one GPU per process on each node
        prep.config = dataclasses.replace(config, device=f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    model.to(prep.config.device)
    show = progress and ctx.is_main  # one progress bar (rank 0's share), not one per rank
    setup = _setup_store(prep, meta, ctx, progress=show)
    swapped = False
    try:
        with _closing(setup.store, setup.reserve, setup.taps) as store:
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
            extractor: Any = (PooledTokenExtractor if prep.pooled_dim else TokenExtractor)(  # --pooled: + pooled output
                model, prep.geometry, final_norm=config.final_norm
            )
            if prep.taps:  # --taps: hooks capture inside the blocks during that same forward
                extractor = TapExtractor(extractor, model, prep.geometry.layers, prep.taps, name=prep.source.timm_name)
            t0 = time.perf_counter()
            mine = _RankOutcome()
            try:
                for name, missing in work.items():
                    blocks = ctx.assign(missing)
                    if not blocks:
                        continue
                    n, b, w = extract_split(
                        store, prep, prep.sources_in_store[name], name, blocks, extractor, progress=show,
                        taps=setup.taps,
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
            result = ExtractResult(
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
        swap_error: BaseException | None = None
        if setup.staging is not None and ctx.is_main:  # --overwrite: every rank's blocks are recorded
            try:
                swap_in(setup.staging, str(config.out))
                swapped = True
            except Exception as e:
                swap_error = e
        else:
            swapped = True
        if ctx.distributed:  # no rank returns before the new store is in place (or all fail alike)
            shared = ctx.share(_portable(swap_error) if swap_error is not None else None)
            swap_error = swap_error or shared
        if swap_error is not None:
            raise swap_error
        return result
    finally:
        if setup.reserve is not None:
            setup.reserve.release()
        if setup.staging is not None and ctx.is_main and not swapped:
            discard_staging(setup.staging)  # the old store at config.out was never touched
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
    staging: str | None = None  # --overwrite: where the new store is built until it is swapped in
    reserve: SpaceReserve | None = None  # local HDF5: ballast freed before closing after a failed write
    taps: dict[str, FeatureStore] = dataclasses.field(default_factory=dict)  # --taps: the nested store of each


@dataclass
class _SetupState:
    """What rank 0 broadcasts once the store exists (or why it could not make it)."""

    resumed: bool = False
    skipped: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    work: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    staging: str | None = None
    error: BaseException | None = None


@dataclass
class _RankOutcome:
    """What one rank did, gathered by every rank at the end."""

    samples: dict[str, int] = dataclasses.field(default_factory=dict)
    blocks: int = 0
    wait_s: float = 0.0
    error: BaseException | None = None


def _setup_store(prep: Prepared, meta: StoreMeta, ctx: DistContext, *, progress: bool) -> _StoreSetup:
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
        staging: str | None = None
        try:
            purpose = f"epcache extract, rank 0 of {ctx.world_size}" if ctx.distributed else "epcache extract"
            lock = acquire_store_lock(config.out, break_lock=config.break_lock, purpose=purpose)
            target = open_or_create(config, prep, meta, progress=progress)
            store, staging = target.store, target.staging
            ensure_pooled(store, prep.sources_in_store, prep.pooled_dim, resumed=target.resumed)  # --pooled
            h5 = store.format == "h5"  # never under torchrun
            reserve = SpaceReserve(store.location, resume_hint=RESUME_HINT) if h5 else None
            taps = open_tap_stores(store, prep.taps, prep.tap_stored,
                                   lambda n: _split_spec(prep, n, prep.sources_in_store[n]), create=True)
            work = {name: _missing(store, taps, name)
                    for name in prep.sources}
            state = _SetupState(target.resumed, target.skipped, work, target.staging)
        except Exception as e:
            if store is not None:
                store.close()
            if staging is not None:
                discard_staging(staging)
            if lock is not None:
                lock.release()
            if ctx.distributed:
                ctx.share(_SetupState(error=_portable(e)))
            raise
        ctx.share(state)
        return _StoreSetup(store, lock, state.resumed, state.skipped, state.work, state.staging, reserve, taps)
    shared: _SetupState = ctx.share(None)
    if shared.error is not None:
        raise shared.error
    for name, drop in shared.skipped.items():  # the rows rank 0 left out of the store
        prep.sources_in_store[name] = prep.sources[name].without(set(drop))
    store = open_store(shared.staging or str(config.out), "a")
    taps = open_tap_stores(store, prep.taps, prep.tap_stored, lambda n: _split_spec(prep, n, prep.sources[n]),
                           create=False)
    return _StoreSetup(store, None, shared.resumed, shared.skipped, shared.work, shared.staging, taps=taps)


@contextlib.contextmanager
def _closing(
    store: FeatureStore, reserve: SpaceReserve | None, taps: dict[str, FeatureStore]
) -> Iterator[FeatureStore]:
    """``with store`` (and its tap stores), but a failure first frees the HDF5 ballast so the close can flush."""
    try:
        yield store
    except BaseException:
        if reserve is not None:
            reserve.release()
        raise
    finally:
        for tap in taps.values():
            tap.close()
        store.close()


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


def _missing(store: FeatureStore, taps: dict[str, FeatureStore], split: str) -> list[int]:
    """Blocks any of the stores lacks: the one forward that fills them writes each store what it misses."""
    return sorted(set(store.missing_blocks(split)).union(*(t.missing_blocks(split) for t in taps.values())))
