"""The extraction loop: decode in workers, forward all layers at once, hand whole blocks to the writer."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from epcache._fs.oserror import require_free_space
from epcache.errors import BadImageError, NonFiniteFeaturesError
from epcache.extract._config import ExtractConfig
from epcache.extract._forward import TokenExtractor
from epcache.extract._gpudecode import GpuDecoder
from epcache.extract._loader import ViewDataset, make_loader
from epcache.extract._mask_geometry import MaskBlocks
from epcache.extract._pixels import Normalizer, pil_steps
from epcache.extract._pooled_output import POOLED_KEY
from epcache.extract._prepare import Prepared
from epcache.extract._sources import SplitSource
from epcache.extract._writer import MASKS_KEY, BlockWriter
from epcache.store import FeatureStore, TokenLayout
from epcache.store.layout.light import light_tokens, parse_keep
from epcache.store.layout.poolgrid import pool_patch_tokens
from epcache.store.layout.tokens import from_torch

__all__ = ["extract_split"]

RESUME_HINT = "Blocks already written are kept: re-run the same command to continue"
_NP_DTYPES = {"float16": np.dtype("<f2"), "float32": np.dtype("<f4")}


def extract_split(
    store: FeatureStore,
    prep: Prepared,
    src: SplitSource,
    split: str,
    blocks: list[int],
    extractor: TokenExtractor,
    *,
    progress: bool,
    batch_source: Callable[[ViewDataset, list[list[int]]], Iterator[Any]] | None = None,
    taps: Mapping[str, FeatureStore] | None = None,
) -> tuple[int, int, float]:
    """Extract the given write-blocks of one split; returns (samples, blocks, writer wait seconds).

    ``batch_source`` replaces the DataLoader that decodes in local worker processes: it yields
    the decoded ``Batch`` of each list of dataset indices, in order (Ray decode tasks on other nodes).
    ``taps``: the nested store of each ``--taps`` tap; a block goes only to the stores that miss it.
    """
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
        src.images(),
        split=split,
        eval_transform=prep.eval_transform,
        input_size=prep.plan.input_size,
        views=cfg.views_for(split),
        augment=prep.augment,
        seed=cfg.seed,
        raw_jpeg=cfg.decode == "gpu",  # only for V=1 splits: augmented views are cut from the PIL image
    )
    total = sum(n for _, _, n, _ in slots)
    if batch_source is not None:
        batch_iter = batch_source(dataset, batches)
    else:
        loader = make_loader(dataset, batches, workers=cfg.workers, pin_memory=cfg.device.startswith("cuda"))
        batch_iter = iter(loader)  # workers fork here, before the writer thread exists
    taps = dict(taps or {})
    written = {(None, b) for b in set(blocks) - set(store.missing_blocks(split))}  # resume: kept as they are
    for name, tap in taps.items():
        written |= {(name, b) for b in set(blocks) - set(tap.missing_blocks(split))}
    writer = BlockWriter(store, max_pending=cfg.max_pending_blocks, taps=taps)
    masks = _mask_blocks(store, prep, src, split, order)
    try:
        with _progress_bar(total, split, enabled=progress) as bar:
            _run_batches(prep, src, split, slots, batch_iter, extractor, writer, bar, location=store.location,
                         written=written, masks=masks)
    except BaseException:
        with contextlib.suppress(Exception):
            writer.close()  # blocks already queued are complete and correct: let them land
        raise
    stats = writer.close()
    return total, stats.blocks, stats.wait_s


def _run_batches(
    prep: Prepared,
    src: SplitSource,
    split: str,
    slots: list[tuple[int, int, int, int]],
    batch_iter: Iterator[Any],
    extractor: TokenExtractor,
    writer: Any,
    bar: Any,
    *,
    location: str,
    written: set[tuple[str | None, int]] = frozenset(),  # type: ignore[assignment]
    masks: Callable[[int], Callable[[], np.ndarray]] | None = None,
) -> None:
    import torch

    cfg = prep.config
    g, stored = prep.geometry, prep.store_geometry  # as the model gives them, as the store holds them
    V = cfg.views_for(split)
    torch_dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[cfg.dtype]
    normalize = Normalizer(prep.data_config["mean"], prep.data_config["std"])
    gpu = None
    if cfg.decode == "gpu" and V == 1:
        gpu = GpuDecoder(pil_steps(prep.eval_transform), cfg.device)
    np_dtype = _numpy_dtype(cfg.dtype)
    keep = parse_keep(cfg.keep)
    acc: dict[Any, np.ndarray] | None = None  # layer -> tokens; (tap, layer) -> a tap's tokens
    blocks_left = len({b for b, *_ in slots})  # this block and the ones after it, counted down
    for (block, off, n, length), batch in zip(slots, batch_iter, strict=True):
        x = batch.images.to(cfg.device, non_blocking=True)  # (B, V, 3, H, W) uint8
        errors = gpu.fill(x, batch) if gpu is not None else batch.errors
        if any(errors):
            k = next(i for i, e in enumerate(errors) if e)
            raise BadImageError(
                f"cannot decode {src.where(batch.indices[k])} (split {split!r}): {errors[k]}. "
                "Fix or remove the file, or pass --on-bad-image skip to leave unreadable images out"
            )
        x = normalize(x.flatten(0, 1))  # (B*V, 3, H, W) float32, as ToTensor + Normalize
        with torch.inference_mode(), _autocast(cfg):
            outs = extractor(x)
        pooled = None
        if isinstance(outs, tuple):  # --pooled: (layers, the model's pooled output)
            outs, pooled = outs
        if acc is None:
            acc = {layer: np.empty((length, V, *stored.layer_shape(layer)), np_dtype) for layer in g.layers}
            if pooled is not None:
                acc[POOLED_KEY] = np.empty((length, V, pooled.shape[-1]), np_dtype)
            for spec in prep.taps:
                tg = prep.tap_stored[spec.name]
                acc.update({(spec.name, ly): np.empty((length, V, *tg.layer_shape(ly)), np_dtype) for ly in g.layers})
        if pooled is not None:
            acc[POOLED_KEY][off : off + n] = from_torch(pooled.to(torch_dtype).reshape(n, V, -1).cpu())
        bad = functools.partial(_raise_non_finite, cfg, src, split, indices=batch.indices)
        for layer, t in zip(g.layers, outs, strict=True):
            acc[layer][off : off + n] = _stored_tokens(cfg, t, g, layer, (n, V), keep, cfg.pool_patches, bad)
        captured = getattr(extractor, "captured", {})  # --taps (extract/_taps.py), from this same forward
        for spec in prep.taps:
            raw = prep.tap_raw[spec.name]
            for layer, t in zip(g.layers, captured[spec.name], strict=True):
                acc[(spec.name, layer)][off : off + n] = _stored_tokens(
                    cfg, t, raw, layer, (n, V), spec.keep or keep, 1 if spec.keep else cfg.pool_patches,
                    functools.partial(bad, tap=spec.name))
        if off + n == length:
            nbytes = 0 if cfg.compressor not in (None, "none") else sum(a.nbytes for a in acc.values())
            require_free_space(  # before the write: a failed HDF5 write cannot be closed cleanly
                location,
                nbytes * min(blocks_left, cfg.max_pending_blocks + 1),
                action=f"writing block {block} of split {split!r} to {location}",
                resume_hint=RESUME_HINT,
            )
            if masks is not None and (None, block) not in written:  # computed on the writer's thread, written
                acc[MASKS_KEY] = masks(block)  # type: ignore[assignment]  # before the block's records
            writer.submit(split, block, {k: a for k, a in acc.items() if (_owner(k), block) not in written})
            blocks_left -= 1
            acc = None
        bar.update(n)


def _stored_tokens(
    cfg: ExtractConfig, t: Any, g: Any, layer: int, nv: tuple[int, int], keep: tuple[str, ...] | None, k: int,
    non_finite: Callable[[int], None],
) -> np.ndarray:
    """One layer's ``[B*V, T, D]`` tensor as the store holds it: in the store dtype, then pooled or made light."""
    import torch

    t = t.to({"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[cfg.dtype])
    if not bool(torch.isfinite(t).all()):
        non_finite(layer)
    tokens = from_torch(t.reshape(*nv, *g.layer_shape(layer)).cpu())
    if k > 1:  # pooled from the values as stored, so convert reproduces these bytes
        tokens = pool_patch_tokens(tokens, _layer_layout(g, layer), k, cfg.dtype)
    elif keep is not None:  # the same for a light store (cache_layout.md §2.6)
        tokens = light_tokens(tokens, _layer_layout(g, layer), keep, cfg.dtype)
    return tokens


def _owner(key: Any) -> str | None:
    """The store an ``acc`` entry goes to: a tap's name, or None for the main store (layers, pooled output)."""
    return key[0] if isinstance(key, tuple) else None


def _mask_blocks(
    store: FeatureStore, prep: Prepared, src: SplitSource, split: str, order: np.ndarray
) -> Callable[[int], Callable[[], np.ndarray]] | None:
    """block -> the thunk that computes its masks (cache_layout.md §3.6); None for a split without masks."""
    if src.masks is None or prep.dense is None or not store.has_masks(split):
        return None
    job = MaskBlocks(
        files=src.mask_reader if src.mask_reader is not None else [src.root / m for m, _ in src.masks],
        split=split,
        eval_steps=pil_steps(prep.eval_transform),
        size=prep.dense.size,
        views=prep.config.views_for(split),
        seed=prep.config.seed,
        dtype=prep.dense.dtype,
    )

    def for_block(block: int) -> Callable[[], np.ndarray]:
        start, stop = store.block_range(split, block)
        rows = order[start:stop].tolist()
        return lambda: job.rows(rows)

    return for_block


def _layer_layout(g: Any, layer: int) -> TokenLayout:
    """The model's token layout of one layer (its own grid where the layers differ)."""
    (h, w), _ = g.layer_shapes.get(layer, (g.layout.grid, g.dim))
    return dataclasses.replace(g.layout, grid=(h, w))


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


def _raise_non_finite(
    cfg: ExtractConfig, src: SplitSource, split: str, layer: int, indices: list[int], *, tap: str | None = None
) -> None:
    hint = (
        "float16 overflows above 65504: re-run with --dtype bfloat16 or --dtype float32"
        if cfg.dtype == "float16"
        else "the backbone itself produced inf/nan: check the weights" + (", or drop --amp" if cfg.amp else "")
    )
    raise NonFiniteFeaturesError(
        f"layer {layer}{f' (tap {tap})' if tap else ''} produced non-finite tokens (inf/nan) in split {split!r} "
        "for a batch starting at "
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
