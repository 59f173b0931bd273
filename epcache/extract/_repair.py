"""``epcache verify --repair``: re-extract exactly the blocks ``verify`` found bad or missing.

The repair is extraction's own resume: the bad blocks are marked missing and ``extract`` runs
again with the configuration the store records (backbone, weights hash, preprocessing, layers,
views, seed, split sources), so the repaired blocks are the bytes a clean extraction writes.
Resume re-extracts whole write-blocks, all layers at once, so every layer of a repaired block that
was intact before is a witness: its new crc32c must equal the one recorded at extraction, and so
must the new crc32c of a block whose bytes were damaged (its record predates the damage). When a
witness disagrees, this environment does not reproduce the extraction (other images under the
same names, another device, batch size or library build): the intact layers are put back from a
backup, the damaged ones stay marked missing, and the repair fails loudly instead of mixing runs.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from os import PathLike
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from epcache.errors import ConfigError, CorruptStoreError, ProvenanceMismatchError, WeightsError
from epcache.extract._config import ExtractConfig, ExtractResult
from epcache.extract._pixels import default_workers
from epcache.extract._recorded import (
    is_location,
    recorded_data_root,
    recorded_source_options,
    records_data_root,
)
from epcache.extract._repair_backup import (
    back_up_witnesses,
    remove_dead_scratch,
    scratch_parent,
    scratch_prefix,
    settle_witnesses,
)
from epcache.extract._run import extract_store, plan_extract
from epcache.extract._weights import sha256_file
from epcache.store import VerifyReport, open_store, verify_store
from epcache.store.ops.lock import acquire_store_lock
from epcache.store.verify.blocks import mark_blocks_missing

__all__ = ["RepairResult", "extract_config_from_store", "recorded_data_root", "repair_store"]

_PURPOSE = "epcache verify --repair"
_DEFAULT_BATCH_SIZE = 64  # ExtractConfig's default; stores do not record the batch size (yet)


@dataclass(frozen=True)
class RepairResult:
    """What ``repair_store`` did: the reports before and after, and the blocks re-extracted."""

    before: VerifyReport
    after: VerifyReport
    blocks: tuple[tuple[str, int], ...]  # (split, block) re-extracted, every layer
    confirmed: int  # re-extracted layer-blocks whose new crc32c equals the one recorded at extraction
    extract: ExtractResult | None  # None when there was nothing to repair

    def to_json(self) -> dict[str, Any]:
        return {
            "before": self.before.to_json(),
            "after": self.after.to_json(),
            "blocks": [list(b) for b in self.blocks],
            "confirmed": self.confirmed,
            "ok": self.after.ok,
        }

    def format_text(self) -> str:
        """The report before, what was re-extracted, and the report after."""
        if not self.blocks:
            return self.before.format_text() + "\nnothing to repair"
        return "\n".join(
            [
                self.before.format_text(),
                f"repair: re-extracted {len(self.blocks)} block(s) from the images; {self.confirmed} layer-block(s) "
                "reproduced the crc32c recorded at extraction",
                self.after.format_text(),
            ]
        )


def extract_config_from_store(
    location: str | PathLike[str],
    *,
    data: str | PathLike[str] | None = None,
    weights: str | PathLike[str] | None = None,
    splits: Mapping[str, str] | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
) -> ExtractConfig:
    """The ``ExtractConfig`` that continues (resumes) the extraction recorded in a store's metadata.

    Args:
        location: the store.
        data: the data root the store was extracted from (its name is part of the provenance);
            default: the root the store recorded at extraction.
        weights: the checkpoint, for stores extracted from one; its sha256 must equal the record.
        splits: NAME=SOURCE for splits whose source the store does not record (and overrides).
        device: where to run the backbone; default: the device recorded at extraction.
        batch_size: forward batch; default 64 (extraction's default). It must match the original
            run where blocks are larger than the batch: CPU and GPU kernels are not batch-invariant.
        workers: DataLoader decoding processes (None: min(4, CPUs)).

    Raises:
        StoreNotFoundError, CorruptStoreError: no readable store at ``location``.
        WeightsError: a checkpoint store without ``weights``, or weights with another sha256.
        ConfigError: random-init store with ``weights``, a split without a known source, or a data
            root with another name than the one recorded.
        ProvenanceMismatchError: this environment has another timm version than the extraction.
    """
    import timm

    loc = str(location)
    with open_store(loc, "r") as store:
        meta = store.meta
        store_splits = list(store.splits)
        fmt = store.format
    if meta.tap is not None:  # its tokens come from a hook, its records from the parent's extraction
        raise ConfigError(
            f"{loc} is the tap {meta.tap.get('name')!r} of the store two directories up; a tap is not extracted "
            "alone: delete this directory and re-run the extraction of the parent store (it rebuilds the tap)"
        )
    bb = meta.backbone
    pre, extra = meta.preprocessing, meta.extra
    if meta.derived_from is not None:
        where = extra.get("derived_from") if isinstance(extra.get("derived_from"), dict) else {}
        raise ConfigError(
            f"{loc} was made by `epcache convert` from the store {where.get('location') or where.get('name')} "
            f"(provenance {meta.derived_from.get('provenance')}), not extracted from images; repair the source "
            "and convert it again"
        )
    if bb.timm_version != timm.__version__:
        raise ProvenanceMismatchError(
            f"{loc} was extracted with timm {bb.timm_version}, this environment has timm {timm.__version__}: "
            f"re-extracted blocks could differ from the rest. Install timm=={bb.timm_version} to repair it"
        )
    random_init = bb.source == "random-init"
    if random_init and weights is not None:
        raise ConfigError(f"{loc} was extracted with random init (seeded); drop --weights to repair it")
    if bb.source == "checkpoint" and weights is None:
        raise WeightsError(
            f"{loc} was extracted from the checkpoint {bb.weights_file!r} (sha256 {bb.weights_sha256}); "
            "pass the same file with --weights PATH to repair it"
        )
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsError(f"weights checkpoint {path} does not exist or is not a file")
        digest = sha256_file(path)
        if digest != bb.weights_sha256:
            raise WeightsError(
                f"--weights {path} has sha256 {digest}, but {loc} was extracted from {bb.weights_file!r} with "
                f"sha256 {bb.weights_sha256}; pass the checkpoint the store was extracted from"
            )
    if data is None:
        if not records_data_root(meta.extra):
            raise ConfigError(
                f"{loc} does not record where its images are (no host path is kept without --record-paths); "
                f"pass the root they came from: `epcache verify {loc} --repair --data ROOT`"
            )
        found = recorded_data_root(meta.extra, loc)
        if found is None:
            raise ConfigError(
                f"{loc} records no data root that exists here; pass the root its images came from: "
                f"`epcache verify {loc} --repair --data ROOT`"
            )
        data = found
    root: Path | str = data if is_location(str(data)) else Path(data).expanduser()
    recorded_name = meta.dataset.get("name")
    if isinstance(root, Path) and root.is_dir() and recorded_name is not None and root.resolve().name != recorded_name:
        raise ConfigError(
            f"--data {root} is a directory named {root.resolve().name!r}, but {loc} was extracted from a data root "
            f"named {recorded_name!r} (the name is part of the provenance); pass that root"
        )
    recorded = extra.get("split_sources") if isinstance(extra.get("split_sources"), dict) else {}
    given = dict(splits or {})  # the user's own word: trusted like `epcache extract --split`
    sources = {
        name: given[name] if name in given else _recorded_source(loc, name, recorded[name])
        for name in store_splits
        if name in given or name in recorded
    }
    unknown = [name for name in store_splits if name not in sources]
    if unknown:
        raise ConfigError(
            f"{loc} does not record where the images of split(s) {', '.join(unknown)} came from; pass "
            "--split NAME=SUBDIR (or NAME=FILE.csv) for each"
        )
    views = int(meta.views.get("augmented", 0))
    recorded_batch = extra.get("batch_size")
    return ExtractConfig(
        model=bb.name,
        data=root,
        out=loc,
        splits={name: sources[name] for name in store_splits},
        layers=",".join(str(i) for i in meta.layers),
        views=views,
        view_splits=tuple(meta.views.get("splits") or ()) if views else ("train",),
        dtype=meta.dtype,
        quantize=meta.quantization,
        format=fmt,  # type: ignore[arg-type]
        batch_size=batch_size or (int(recorded_batch) if isinstance(recorded_batch, int) else _DEFAULT_BATCH_SIZE),
        workers=default_workers() if workers is None else workers,
        weights=None if weights is None else Path(weights).expanduser(),
        random_init=random_init,
        final_norm=meta.final_norm,
        img_size=pre.get("img_size"),
        model_kwargs=dict(pre.get("model_kwargs") or {}),
        device=device or str(extra.get("device", "cpu")),
        amp=pre.get("amp"),
        seed=int(meta.views.get("seed", 0)),
        on_bad_image=extra.get("on_bad_image", "error"),
        pool_patches=meta.layout.pool_patches,
        keep=None if meta.layout.keep is None else ",".join(meta.layout.keep),
        taps=",".join(n + (":gap" if t.get("keep") else "") for n, t in meta.taps.items()) if meta.taps else None,
        resume=True,
        allow_outside_paths=extra.get("allow_outside_paths") is True,  # hf: path cells read as at extraction
        **recorded_source_options(meta.dataset, pre),
    )


def repair_store(
    location: str | PathLike[str],
    *,
    data: str | PathLike[str] | None = None,
    weights: str | PathLike[str] | None = None,
    splits: Mapping[str, str] | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    deep: bool = False,
    break_lock: bool = False,
    progress: bool = True,
) -> RepairResult:
    """Verify a store, re-extract its bad or missing blocks from the source images, verify again.

    The store ends byte-identical to a clean extraction of the same configuration. Nothing is
    touched before the configuration, the data root and the weights have been checked; a repair
    refused before any block was written leaves every record as it was.

    Args:
        location: the store.
        data: the data root the store was extracted from; default: the one it recorded.
        weights: the checkpoint, for stores extracted from one (checked by sha256).
        splits: NAME=SOURCE for splits whose source the store does not record.
        device: default: the device recorded at extraction.
        batch_size: default: 64, extraction's default (see ``extract_config_from_store``).
        workers: DataLoader decoding processes (None: min(4, CPUs)).
        deep: also scan values for inf/nan (and re-extract blocks that have any).
        break_lock: remove the writer lock a crashed extraction left behind (store/ops/lock.py).
        progress: progress bars on stderr.

    Raises:
        CorruptStoreError: the metadata, ids, labels or order are damaged (not repairable: re-extract).
        ProvenanceMismatchError: the images, weights or environment do not reproduce the extraction.
        StoreLockedError: an extraction is writing the store, or a crashed one left its lock.
        WeightsError, ConfigError, BadImageError: as ``extract``.
    """
    loc = str(location)
    before = verify_store(loc, deep=deep, progress=progress)
    if not before.readable or before.problems:
        raise CorruptStoreError(
            f"{loc} cannot be repaired block by block: {before.problems[0]}. Re-extract it with "
            "`epcache extract --overwrite`"
        )
    if not before.bad_blocks:
        return RepairResult(before, before, (), 0, None)
    config = extract_config_from_store(
        loc, data=data, weights=weights, splits=splits, device=device, batch_size=batch_size, workers=workers
    )
    plan_extract(config)  # data root, model and layers are checked before the store is touched
    bad = [b.key for b in before.bad_blocks]
    untrusted = {b.key for b in before.bad_blocks if b.problem == "bad-record"}
    # A checksum mismatch is damaged bytes or a damaged record: re-extraction must give one of the two
    on_disk = {b.key: b.stored_crc for b in before.bad_blocks if b.stored_crc is not None}
    targets = sorted({(split, block) for split, _, block in bad})
    parent = scratch_parent(loc)
    if parent is not None:
        remove_dead_scratch(loc)  # a killed repair's backups: its blocks stay marked missing, resumable
    with tempfile.TemporaryDirectory(prefix=scratch_prefix(loc, os.getpid()), dir=parent) as scratch:
        aside = Path(scratch) / "aside"
        aside.mkdir()
        with acquire_store_lock(loc, break_lock=break_lock, purpose=_PURPOSE), open_store(loc, "a") as store:
            witnesses = back_up_witnesses(store, targets, set(bad), untrusted, on_disk, Path(scratch))
            marked = mark_blocks_missing(store, bad, set_aside=aside)
        error: BaseException | None = None
        result: ExtractResult | None = None
        try:
            result = extract_store(config, progress=progress)
        except BaseException as e:  # checked below: never leave a half-repaired store mixing two runs
            error = e
        with acquire_store_lock(loc, purpose=_PURPOSE), open_store(loc, "a") as store:
            differ, confirmed = settle_witnesses(store, witnesses, marked, Path(scratch), failed=error is not None)
    if error is not None:
        raise error
    if differ:
        split, layer, block = differ[0]
        raise ProvenanceMismatchError(
            f"{loc}: re-extracted block {block} of split {split!r} layer {layer} does not reproduce the crc32c "
            f"recorded at extraction ({len(differ)} such layer-block(s)): the images, device, batch size or "
            "library build differ from the original run. The intact blocks were restored and the damaged "
            "ones left marked missing; repair with the original environment (see --device, --batch-size) "
            "or re-extract with `epcache extract --overwrite`"
        )
    after = verify_store(loc, deep=deep, progress=progress)
    return RepairResult(before, after, tuple(targets), confirmed, result)


def _recorded_source(loc: str, name: str, src: Any) -> str:
    """A split source read from metadata: only a relative path under the data root is followed."""
    text = str(src)
    p = PurePosixPath(text.replace("\\", "/"))
    if not text or p.is_absolute() or PureWindowsPath(text).drive or ".." in p.parts:
        raise ConfigError(
            f"{loc} records the source of split {name!r} as {text!r}, which is not a path under the data root; "
            f"a store's metadata never leads outside --data. Pass --split {name}=SOURCE to say where it is"
        )
    return text
