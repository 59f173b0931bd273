"""Open the store an extraction continues, or create a new one: provenance checks, duplicates, skips.

Rank 0 runs this under the writer lock (``_run.py``); nothing here forwards an image.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from epcache._fs.oserror import require_free_space
from epcache.errors import ConfigError, EpcacheError, ProvenanceMismatchError, StoreExistsError, StoreNotFoundError
from epcache.extract._config import ExtractConfig
from epcache.extract._loader import find_unreadable
from epcache.extract._prepare import Prepared
from epcache.extract._sources import SplitSource
from epcache.store import FeatureStore, SplitSpec, StoreMeta, create_store, find_stores, open_store
from epcache.store.describe.diff import describe_differences
from epcache.store.layout.dense import masks_fingerprint, store_level
from epcache.store.layout.provenance import compute_provenance, split_fingerprint
from epcache.store.ops.leftovers import remove_partial_files
from epcache.store.ops.lock import LOCK_NAME
from epcache.store.ops.swap import (
    check_replaceable,
    discard_staging,
    recover_interrupted_swap,
    remove_new_store,
    staging_location,
)

__all__ = ["Target", "open_or_create"]


def _split_spec(prep: Prepared, name: str, src: SplitSource) -> SplitSpec:
    return SplitSpec(
        name=name,
        labels=src.labels,
        ids=list(src.ids),
        classes=list(src.classes),
        views=prep.config.views_for(name),
        permutation_seed=prep.config.seed,
        masks_sha256=None if src.masks is None else masks_fingerprint(digest for _, digest in src.masks),
    )


def _skip_unreadable(prep: Prepared, names: list[str], *, progress: bool) -> dict[str, tuple[str, ...]]:
    """With on_bad_image="skip": decode every image of ``names`` once; leave failures out."""
    skipped: dict[str, tuple[str, ...]] = {}
    for name in names:
        src = prep.sources[name]
        bad = find_unreadable(src.images(), workers=prep.config.workers, progress=progress, desc=f"check {name}")
        ids = tuple(src.ids[i] for i in sorted(bad))
        if len(ids) == len(src):
            raise ConfigError(f"split {name!r}: none of its {len(src)} images can be decoded (e.g. {bad[0]})")
        prep.sources_in_store[name] = src.without(set(ids))
        skipped[name] = ids
    return skipped


@dataclass
class Target:
    """The store an extraction writes, and where it ends up."""

    store: FeatureStore
    resumed: bool
    skipped: dict[str, tuple[str, ...]]
    staging: str | None = None  # --overwrite: the new store is built here, swapped to config.out when complete


def open_or_create(config: ExtractConfig, prep: Prepared, meta: StoreMeta, *, progress: bool) -> Target:
    """Continue the store at ``config.out`` if it has the same provenance, else create it.

    With ``overwrite`` and a store already at ``config.out`` the new store is created at a
    hidden sibling (``store/ops/swap.py``) and the old one stays untouched until the caller swaps.
    """
    loc = str(config.out)
    existing: FeatureStore | None = None
    local = not _is_url(loc)
    if local:
        recover_interrupted_swap(loc)
    if not config.overwrite:
        try:
            existing = open_store(loc, "a")
        except StoreNotFoundError:
            if config.resume:
                raise StoreNotFoundError(
                    f"--resume: there is no store at {loc} to resume; drop --resume to start a new extraction"
                ) from None
    if existing is not None:
        try:
            skipped = _check_same_provenance(existing, prep, meta, progress=progress)
            remove_partial_files(existing)  # a writer killed inside zarr's atomic write left these
        except BaseException:
            existing.close()
            raise
        return Target(existing, True, skipped)
    if not (config.overwrite or config.allow_duplicate):
        _refuse_duplicate(config, prep, meta)
    fmt = prep.plan.format
    staging: str | None = None
    if local and config.overwrite and check_replaceable(loc, fmt):
        staging = staging_location(loc)
        discard_staging(staging)  # a killed replacement's leftover: we hold the lock on loc
    target = staging or loc
    skipped = _skip_unreadable(prep, list(prep.sources), progress=progress) if config.on_bad_image == "skip" else {}
    meta = dataclasses.replace(meta, extra={**meta.extra, "skipped": {k: list(v) for k, v in skipped.items() if v}})
    require_free_space(target, 0, action=f"creating the store {target}")
    existed = not local or _occupied(Path(target))
    store: FeatureStore | None = None
    try:
        store = create_store(
            target, meta, format=fmt, overwrite=config.overwrite and staging is None, compressor=config.compressor
        )
        for name, src in prep.sources_in_store.items():
            store.add_split(
                _split_spec(prep, name, src),
                chunk_samples=config.chunk_samples,
                shard_samples=config.shard_samples,
            )
    except BaseException:
        if store is not None:
            store.close()
        if staging is not None:
            discard_staging(staging)
        elif local and (store is not None or not existed):
            remove_new_store(loc)  # it did not exist before this call: leave nothing that looks like a store
        raise
    return Target(store, False, skipped, staging)


def _is_url(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def _occupied(path: Path) -> bool:
    """Something other than our own writer lock is at ``path`` (never to be removed on failure)."""
    if not path.exists():
        return False
    return not path.is_dir() or any(p.name != LOCK_NAME for p in path.iterdir())


def _refuse_duplicate(config: ExtractConfig, prep: Prepared, meta: StoreMeta) -> None:
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
    ours = compute_provenance(_store_level(meta), {})
    for loc in candidates:
        if _same_location(loc, out):
            continue
        try:
            with open_store(loc) as other:
                if compute_provenance(_store_level(other.meta), {}) != ours or not _holds_splits(other, prep):
                    continue
                key = other.provenance  # the stored key, as `epcache info` and `ls` show it
        except (EpcacheError, OSError):
            continue  # unreadable neighbours are `epcache ls`'s business, not a reason to stop here
        raise StoreExistsError(
            f"{loc} already holds these tokens (provenance {key}, as `epcache info {loc}` shows; same backbone, "
            "weights, preprocessing and images, complete): use it "
            f"instead of extracting again into {out}. Pass --allow-duplicate (allow_duplicate=True) to "
            "extract anyway"
        )


def _holds_splits(store: FeatureStore, prep: Prepared) -> bool:
    recorded = store.meta.extra.get("skipped", {})
    recorded = recorded if isinstance(recorded, dict) else {}
    for name, src in prep.sources.items():
        if name not in store.splits or store.missing_blocks(name):
            return False
        kept = src.without(set(recorded.get(name, ())))
        ids_sha, labels_sha = split_fingerprint(_split_spec(prep, name, kept))
        have = store.splits[name]
        stored = (have.ids_sha256, have.labels_sha256, have.views, have.permutation_seed)
        if (*stored, _stored_masks_sha256(store, name)) != (
            ids_sha,
            labels_sha,
            prep.config.views_for(name),
            prep.config.seed,
            _split_spec(prep, name, kept).masks_sha256,
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
    store: FeatureStore, prep: Prepared, meta: StoreMeta, *, progress: bool
) -> dict[str, tuple[str, ...]]:
    """Refuse a store made by another configuration; add the splits it does not have yet."""
    loc = store.location
    if compute_provenance(_store_level(meta), {}) != compute_provenance(_store_level(store.meta), {}):

        detail = describe_differences(_provenance_doc(store.meta), _provenance_doc(meta))
        raise ProvenanceMismatchError(
            f"{loc} was extracted with a different configuration (the store's vs this run's: {detail}). "
            "Pass --overwrite to replace it, or choose another --out"
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
            "masks": spec.masks_sha256,  # an edited mask file must not resume into the old store (§3.6)
            "num_samples": len(src),
            "views": spec.views,
            "classes": tuple(spec.classes),
            "permutation_seed": spec.permutation_seed,
            "ids_sha256": ids_sha,
            "labels_sha256": labels_sha,
        }
        theirs = {k: getattr(have, k) for k in ours if k != "masks"}
        theirs["masks"] = _stored_masks_sha256(store, name)
        if ours != theirs:
            diff = [k for k in ours if ours[k] != theirs[k]]
            raise ProvenanceMismatchError(
                f"{loc}: split {name!r} was extracted from different data or settings (differs in "
                f"{', '.join(diff)}: the images, masks, labels, views or seed changed). Pass --overwrite to "
                "re-extract, or choose another --out"
            )
    if new_splits:
        require_free_space(loc, 0, action=f"adding splits {new_splits} to {loc}")
        if prep.config.on_bad_image == "skip":
            skipped.update(_skip_unreadable(prep, new_splits, progress=progress))
        for name in new_splits:
            store.add_split(
                _split_spec(prep, name, prep.sources_in_store[name]),
                chunk_samples=prep.config.chunk_samples,
                shard_samples=prep.config.shard_samples,
            )
    return skipped


def _store_level(meta: StoreMeta) -> StoreMeta:
    """``meta`` without the per-split mask fingerprints, which are compared split by split (splits may be added)."""
    return meta if meta.dense is None else dataclasses.replace(meta, dense=store_level(meta.dense))


def _stored_masks_sha256(store: FeatureStore, split: str) -> str | None:
    dense = store.meta.dense
    return None if dense is None else dict(dense.get("masks_sha256", {})).get(split)


def _provenance_doc(meta: StoreMeta) -> dict[str, Any]:
    doc = _store_level(meta).to_json()
    doc.pop("extra")
    doc["backbone"] = {k: v for k, v in doc["backbone"].items() if k not in ("source", "weights_file")}
    return doc
